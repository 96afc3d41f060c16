"""AIP-158 pagination: opaque, signed cursor tokens and keyset pages.

A token carries the sort key of the last row returned and a digest of the
request's other parameters (filter, show_deleted, ...), signed with HMAC. A
token that was altered, truncated, made by another deployment, or sent with
different parameters is rejected as INVALID_ARGUMENT instead of silently
returning the wrong page.

Listings page by keyset on (time, id): a use case opens a `KeysetPage` from the
request (`PageTokens.keyset_page`), its repository orders and filters the query with
`keyset_after` and fetches `fetch_limit` rows, and `KeysetPage.slice` cuts the page
and makes the next token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from core.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_SIGNATURE_BYTES = 16

T = TypeVar("T")
S = TypeVar("S", bound=Select[Any])
Position = tuple[datetime, str]


def page_size(requested: int) -> int:
    """AIP-158: 0 means the default, negatives are an error, too large is lowered to the maximum."""
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PageTokens:
    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ValueError("page token secret must be at least 16 bytes")
        self._secret = secret

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]

    @staticmethod
    def _query_digest(query: Mapping[str, Any]) -> str:
        canonical = json.dumps(query, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def encode(self, position: Mapping[str, Any], query: Mapping[str, Any]) -> str:
        body = {"p": position, "q": self._query_digest(query)}
        payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return _b64encode(payload + self._sign(payload))

    def decode(self, token: str, query: Mapping[str, Any]) -> dict[str, Any]:
        """The position stored in `token`; INVALID_ARGUMENT on any tampering or mismatch."""
        try:
            raw = _b64decode(token)
        except (binascii.Error, ValueError):
            raise InvalidArgument.field("page_token", "is not a page token from this API") from None
        payload, signature = raw[:-_SIGNATURE_BYTES], raw[-_SIGNATURE_BYTES:]
        if len(raw) <= _SIGNATURE_BYTES or not hmac.compare_digest(signature, self._sign(payload)):
            raise InvalidArgument.field("page_token", "is not a page token from this API")
        body = json.loads(payload)
        if body.get("q") != self._query_digest(query):
            raise InvalidArgument.field(
                "page_token", "was issued for a request with different parameters (filter, show_deleted)"
            )
        position = body.get("p")
        if not isinstance(position, dict):
            raise InvalidArgument.field("page_token", "is not a page token from this API")
        return position

    def encode_key(self, time: datetime, last_id: str, query: Mapping[str, Any]) -> str:
        """A token for keyset pagination ordered by (time, id): the last row returned."""
        return self.encode({"t": time.isoformat(), "i": last_id}, query)

    def decode_key(self, token: str, query: Mapping[str, Any]) -> tuple[datetime, str] | None:
        """The (time, id) a token from `encode_key` carries; None for no token."""
        if not token:
            return None
        position = self.decode(token, query)
        try:
            return datetime.fromisoformat(str(position["t"])), str(position["i"])
        except (KeyError, ValueError):
            raise InvalidArgument.field("page_token", "is not a page token from this API") from None

    def keyset_page(self, size: int, token: str, query: Mapping[str, Any]) -> KeysetPage:
        """The page a request asks for: its size (AIP-158 rules) and the position its token holds."""
        return KeysetPage(page_size(size), self.decode_key(token, query), query, self)


@dataclass(frozen=True)
class KeysetPage:
    """One page of a listing ordered by (time, id), as the request asked for it."""

    limit: int
    after: Position | None  # the last row of the previous page; None for the first page
    query: Mapping[str, Any]
    tokens: PageTokens

    @property
    def fetch_limit(self) -> int:
        """Rows to fetch: one more than the page shows tells whether another page follows."""
        return self.limit + 1

    def slice(self, rows: Sequence[T], key: Callable[[T], Position]) -> tuple[list[T], str]:
        """The rows this page shows, and the token of the next page ("" on the last page)."""
        if len(rows) <= self.limit:
            return list(rows), ""
        shown = list(rows[: self.limit])
        time, last_id = key(shown[-1])
        return shown, self.tokens.encode_key(time, last_id, self.query)


def keyset_after(
    statement: S,
    time_column: InstrumentedAttribute[datetime],
    id_column: InstrumentedAttribute[str],
    after: Position | None,
    *,
    descending: bool = False,
) -> S:
    """`statement` ordered by (time, id), ascending or descending, and limited to the rows that
    follow `after` in that order. Ties on time are broken by id, so no row is skipped or repeated."""
    if descending:
        statement = statement.order_by(time_column.desc(), id_column.desc())
    else:
        statement = statement.order_by(time_column, id_column)
    if after is None:
        return statement
    time, last_id = after
    if descending:
        return statement.where(or_(time_column < time, and_(time_column == time, id_column < last_id)))
    return statement.where(or_(time_column > time, and_(time_column == time, id_column > last_id)))
