"""Spotting payment card numbers (PANs) in free text, so that requests carrying one can be refused.

A candidate is 13 to 19 digits, in groups separated by one space or dash, passing the Luhn check.
Digits glued to a letter or an underscore are part of a word (`acct_...`, `pm_...`), not a number
someone typed, so they never count.
"""

from __future__ import annotations

import re

MIN_DIGITS = 13
MAX_DIGITS = 19

# Runs of digit groups not preceded by a word character; a card may be one group of a longer run
# ("order 12 4111 1111 1111 1111 exp 12 27"), so every span of whole groups is tried. No
# lookahead: a run's last group glued to a word is dropped in code, which keeps matching linear.
_RUN = re.compile(r"(?<!\w)[0-9]+(?:[ -][0-9]+)*")
_SEPARATORS = re.compile(r"[ -]")


def contains_card_number(text: str) -> bool:
    for match in _RUN.finditer(text):
        groups = _SEPARATORS.split(match.group())
        glued = match.end() < len(text) and (text[match.end()].isalnum() or text[match.end()] == "_")
        if _has_card(groups[:-1] if glued else groups):
            return True
    return False


def _has_card(groups: list[str]) -> bool:
    for start in range(len(groups)):
        digits = ""
        # Indexes, not a slice of the rest: a run can be as long as the text.
        for end in range(start, len(groups)):
            digits += groups[end]
            if len(digits) > MAX_DIGITS:
                break
            if len(digits) >= MIN_DIGITS and luhn_valid(digits):
                return True
    return False


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check: double every second digit from the right."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0
