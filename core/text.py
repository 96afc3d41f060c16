"""The text policy: which characters a caller's string may hold, and how much of one we quote back.

Every string field of every request passes `text_problem` at the gRPC boundary
(interceptors/validation.py), so a NUL byte or a terminal escape never reaches a use case,
a database (PostgreSQL refuses NUL in text; SQLite would store it, and the two backends
would disagree) or a log line. Fields that people read as names (emails, display names)
are also held to `invisible_problem` in their domain rules: a zero-width space or a
direction override makes a second, visually identical value.

Errors, metadata and logs quote a caller's value only through `excerpt`, so a 7,000
character id cannot swell an error trailer past the transport's limit.
"""

from __future__ import annotations

import unicodedata

# Unicode general categories: Cc holds C0 (U+0000..U+001F), DEL and C1 (U+0080..U+009F);
# Cs lone surrogates, which cannot be encoded as UTF-8 and so cannot be stored.
_CONTROL = frozenset({"Cc"})
_UNENCODABLE = frozenset({"Cs"})
# Format characters (zero-width space/joiners U+200B..U+200D, word joiner U+2060, BOM
# U+FEFF, soft hyphen, bidi embeddings and overrides U+202A..U+202E and isolates
# U+2066..U+2069, tag characters), and line/paragraph separators: invisible in a name.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Zl", "Zp"})
# Letters and marks that render as nothing: Hangul fillers, the combining grapheme joiner,
# the Mongolian vowel separator, the braille blank.
_INVISIBLE_EXTRA = frozenset("\u034f\u115f\u1160\u180e\u2800\u3164\uffa0")

EXCERPT_LIMIT = 64


def _codepoint(char: str) -> str:
    return f"U+{ord(char):04X}"


def text_problem(value: str, *, allow_control: bool = False) -> str | None:
    """What is wrong with `value` under the text policy, or None when it passes.

    Refused: control characters (C0, DEL, C1) unless `allow_control`, and always NUL (no
    database stores it in text) and lone surrogates (not encodable as UTF-8). The answer
    names the character by code point and its position, never quoting the value.
    """
    if value.isprintable():  # no Cc or Cs in it: the common case, checked at C speed
        return None
    for position, char in enumerate(value):
        category = unicodedata.category(char)
        if char == "\0" or (category in _CONTROL and not allow_control):
            return f"must not contain control characters ({_codepoint(char)} at position {position})"
        if category in _UNENCODABLE:
            return f"must be valid Unicode text (a lone surrogate {_codepoint(char)} at position {position})"
    return None


def invisible_problem(value: str) -> str | None:
    """For names people compare by eye: refuses invisible and direction-changing characters."""
    for position, char in enumerate(value):
        if unicodedata.category(char) in _INVISIBLE_CATEGORIES or char in _INVISIBLE_EXTRA:
            return (
                "must not contain invisible or direction-changing characters"
                f" ({_codepoint(char)} at position {position})"
            )
    return None


def excerpt(value: str, limit: int = EXCERPT_LIMIT) -> str:
    """`value` as an error may quote it: at most `limit` characters, then an ellipsis and the length.

    Control characters are not removed here; quote with `!r` (as errors do) to escape them.
    """
    if len(value) <= limit:
        return value
    return f"{value[:limit]}… ({len(value)} characters)"
