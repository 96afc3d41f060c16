"""Opaque, prefixed, unguessable identifiers such as `acct_3f9kq0c2m8w1x7tz5v4b6n2h0d`."""

from __future__ import annotations

import base64
import itertools
import secrets
from datetime import datetime

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
BODY_LENGTH = 26  # 130 bits of randomness
# The width of every id column: a prefix of up to 13 characters, "_", the body. A longer id
# cannot exist, so a look-up for one is answered without a query.
MAX_LENGTH = 40


def new_id(prefix: str) -> str:
    # 130 random bits drawn at once, each 5 of them a character: uniform over the alphabet.
    return f"{prefix}_{_base32(secrets.randbits(5 * BODY_LENGTH), BODY_LENGTH)}"


_ORDER_MS_CHARS = 9  # milliseconds since 1970 in base32: good until the year 3084
_ORDER_COUNTER_CHARS = 5  # 2**25 ids per millisecond and process before the order can repeat
_RANDOM_CHARS = BODY_LENGTH - _ORDER_MS_CHARS - _ORDER_COUNTER_CHARS  # 12: 60 random bits
_ordinal = itertools.count()


# base64's base-32 alphabet (RFC 4648) to ours, letter for letter: the same 5 bits each.
_FROM_RFC4648 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", ALPHABET)
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]  # 10 bits -> two characters


def _base32(value: int, width: int) -> str:
    """The low 5 x `width` bits of `value` in base 32, most significant first (two digits a step)."""
    pairs = []
    for _ in range(width // 2):
        pairs.append(_PAIRS[value & 1023])
        value >>= 10
    head = ALPHABET[value & 31] if width % 2 else ""
    return head + "".join(reversed(pairs))


def new_ordered_id(prefix: str, now: datetime) -> str:
    """An id of the same shape as `new_id` whose text sorts in the order the ids were made.

    For rows listed by (time, id) that share a time and must keep the order they were written in
    (the lines of one proration). The body is `now` in milliseconds, a per-process counter, then
    60 random bits: unguessable enough for rows that are never a capability (access to them is
    checked). Ids made by one process sort in the order it made them, whatever `now` says twice.
    """
    return new_ordered_ids(prefix, now, 1)[0]


def new_ordered_ids(prefix: str, now: datetime, count: int) -> list[str]:
    """`count` ids as `new_ordered_id` makes them, in order (a batch of usage events needs an id
    per event): the milliseconds are written once, and the random characters of all of them come
    from one draw of random bytes written in base 32 at C speed."""
    millis = int(now.timestamp() * 1000) % 32**_ORDER_MS_CHARS
    head = f"{prefix}_{_base32(millis, _ORDER_MS_CHARS)}"
    # Base 32 puts 5 bits in a character, so whole groups of 5 bytes make 8 characters, unpadded.
    random_bytes = -(-_RANDOM_CHARS * count // 8) * 5
    randomness = base64.b32encode(secrets.token_bytes(random_bytes)).decode().translate(_FROM_RFC4648)
    made = []
    for start in range(0, _RANDOM_CHARS * count, _RANDOM_CHARS):
        counter = _base32(next(_ordinal), _ORDER_COUNTER_CHARS)
        made.append(f"{head}{counter}{randomness[start : start + _RANDOM_CHARS]}")
    return made
