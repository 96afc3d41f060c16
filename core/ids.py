"""Opaque, prefixed, unguessable identifiers such as `acct_3f9kq0c2m8w1x7tz5v4b6n2h0d`."""

from __future__ import annotations

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
    """`count` ids as `new_ordered_id` makes them, in order, with one draw of random bytes for all
    (a batch of usage events needs an id per event)."""
    millis = int(now.timestamp() * 1000) % 32**_ORDER_MS_CHARS
    randomness = secrets.token_bytes(8 * count)
    made = []
    for index in range(count):
        ordinal = next(_ordinal) % 32**_ORDER_COUNTER_CHARS
        tail = int.from_bytes(randomness[8 * index : 8 * index + 8]) >> (64 - 5 * _RANDOM_CHARS)
        # One number, written once in base 32: millis, then the counter, then the random bits.
        body = ((millis << 5 * _ORDER_COUNTER_CHARS | ordinal) << 5 * _RANDOM_CHARS) | tail
        made.append(f"{prefix}_{_base32(body, BODY_LENGTH)}")
    return made
