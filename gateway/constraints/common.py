"""Patterns and helpers the rules of every service share (see gateway/constraints/__init__.py)."""

from __future__ import annotations

import sys
import unicodedata

from core import ids
from gateway import schemas
from gateway.schemas import CONTROL, JSON

# What str.strip() removes and Python's `\s` matches (the server strips and matches with them).
WHITESPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
CONTROL_CHARS = CONTROL  # refused in every string of a request (interceptors/validation.py)
NO_CONTROL = schemas.NO_CONTROL  # a string without them


def _escaped(chars: str) -> str:
    """A character-class body for `chars`, runs of consecutive code points as ranges."""
    codes = sorted(map(ord, chars))
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(_code(low) if low == high else f"{_code(low)}-{_code(high)}" for low, high in runs)


def _code(point: int) -> str:
    """One code point in a character class. `\\uXXXX` takes exactly four hex digits (in Python's
    `re` and in ECMA-262 alike), so a code point above U+FFFF is written as itself: `\\u110bd`
    would be U+110B followed by the letter `d`."""
    return f"\\u{point:04x}" if point <= 0xFFFF else chr(point)


WS = _escaped(WHITESPACE)
# Whitespace the text policy lets through (spaces, not tabs or newlines: those are control characters).
SPACE = _escaped("".join(c for c in WHITESPACE if not (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F)))
# Some character that is neither whitespace nor a control character: text that strip() leaves.
NOT_BLANK = f"^[^{CONTROL_CHARS}]*[^{CONTROL_CHARS}{WS}][^{CONTROL_CHARS}]*$"
# accounts.check_email after the servicer's strip(): `[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+`.
# Invisible and direction-changing characters, refused in emails and names (core.text.invisible_problem).
INVISIBLE = _escaped(
    "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in ("Cf", "Zl", "Zp"))
    + "\u034f\u115f\u1160\u180e\u2800\u3164\uffa0"
)
BAD = f"{CONTROL_CHARS}{INVISIBLE}"
# A name people compare by eye: no control or invisible characters, something strip() leaves.
NAME = f"^[^{BAD}]*[^{BAD}{WS}][^{BAD}]*$"
_LOCAL = f"[^@{WS}{BAD}]"
_DOMAIN = f"[^@{WS}{BAD}.]"
EMAIL_PATTERN = f"^[{SPACE}]*{_LOCAL}{{1,64}}@{_DOMAIN}+(\\.{_DOMAIN}+)+[{SPACE}]*$"
_ID_BODY = f"[{ids.ALPHABET}]{{{ids.BODY_LENGTH}}}"


def id_pattern(prefix: str) -> str:
    """The ids core.ids.new_id makes with `prefix`."""
    return f"^{prefix}_{_ID_BODY}$"


def enum_values(names: tuple[str, ...], numbers: tuple[int, ...]) -> list[object]:
    return [*names, *numbers, *(str(n) for n in numbers)]


def both(name: str, schema: JSON) -> JSON:
    """`properties` for a field under its JSON and proto names (field rules cannot ask which)."""
    parts = name.split("_")
    return {name: schema, parts[0] + "".join(part.title() for part in parts[1:]): schema}


def digits_up_to(limit: int) -> str:
    """A pattern for the decimal strings of 0 to `limit` (leading zeros allowed), as json_format
    reads an int64: for 2^63 - 1, no more digits than it has, and at its length no larger."""
    digits = str(limit)
    shorter = f"[0-9]{{1,{len(digits) - 1}}}" if len(digits) > 1 else ""
    branches = [shorter] if shorter else []
    for position, digit in enumerate(digits):
        if digit != "0":
            rest = len(digits) - position - 1
            below = "0" if digit == "1" else f"[0-{int(digit) - 1}]"
            branches.append(digits[:position] + below + (f"[0-9]{{{rest}}}" if rest else ""))
    branches.append(digits)
    return f"^0*({'|'.join(branches)})$"


# Minor units, limits and counts that must not be negative: 0 to the largest int64.
UNSIGNED_INT64: JSON = {"type": "string", "pattern": digits_up_to(2**63 - 1)}
