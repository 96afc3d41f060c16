"""Opaque, prefixed, unguessable identifiers such as `acct_3f9kq0c2m8w1x7tz5v4b6n2h0d`."""

from __future__ import annotations

import secrets

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
BODY_LENGTH = 26  # 130 bits of randomness
# The width of every id column: a prefix of up to 13 characters, "_", the body. A longer id
# cannot exist, so a look-up for one is answered without a query.
MAX_LENGTH = 40


def new_id(prefix: str) -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    return f"{prefix}_{body}"
