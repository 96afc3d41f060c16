"""Spotting payment card numbers (PANs) in free text, so that requests carrying one can be refused.

A candidate is 13 to 19 digits, in groups separated by one space or dash, passing the Luhn check.
Digits glued to a letter or an underscore are part of a word (`acct_...`, `pm_...`), not a number
someone typed, so they never count.
"""

from __future__ import annotations

import re

MIN_DIGITS = 13
MAX_DIGITS = 19

# Runs of digit groups not touching a word character; a card may be one group of a longer run
# ("order 12 4111 1111 1111 1111 exp 12 27"), so every span of whole groups is tried.
_RUN = re.compile(r"(?<!\w)\d+(?:[ -]\d+)*(?!\w)")
_SEPARATORS = re.compile(r"[ -]")


def contains_card_number(text: str) -> bool:
    return any(_run_has_card(match.group()) for match in _RUN.finditer(text))


def _run_has_card(run: str) -> bool:
    groups = _SEPARATORS.split(run)
    for start in range(len(groups)):
        digits = ""
        for group in groups[start:]:
            digits += group
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
