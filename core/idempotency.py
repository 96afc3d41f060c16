"""Exactly-once execution of mutating requests keyed by `request_id` (AIP-155).

The key is claimed by inserting a row in the same transaction as the change,
before the change is made. A concurrent duplicate blocks on that row's primary
key until the first transaction ends, then sees the stored response and
replays it; if the first transaction rolled back, the duplicate executes
instead. So exactly one of any number of concurrent duplicates executes, and
a key is never left claimed without its change, or the change without its key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from sqlalchemy import String, Text, delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core.clock import Clock
from core.db import Base, UtcDateTime
from core.errors import Aborted, FailedPrecondition, InvalidArgument

RETENTION = timedelta(hours=24)
MAX_REQUEST_ID_LENGTH = 128
_CLAIM_ATTEMPTS = 3


class IdempotencyKeyRow(Base):
    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_REQUEST_ID_LENGTH), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    response: Mapped[str | None] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


@dataclass(frozen=True)
class StoredKey:
    fingerprint: str
    response: Mapping[str, Any] | None


class KeyClaimed(Exception):
    """Another transaction inserted the same key first."""


class IdempotencyRepository(Protocol):
    async def find(self, scope: str, key: str, now: datetime) -> StoredKey | None: ...

    async def claim(self, scope: str, key: str, fingerprint: str, now: datetime) -> None: ...

    async def complete(self, scope: str, key: str, response: Mapping[str, Any]) -> None: ...


class SqlIdempotencyRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def find(self, scope: str, key: str, now: datetime) -> StoredKey | None:
        row = await self._session.get(IdempotencyKeyRow, (scope, key))
        if row is None or row.expire_time <= now:
            return None
        return StoredKey(row.fingerprint, json.loads(row.response) if row.response else None)

    async def claim(self, scope: str, key: str, fingerprint: str, now: datetime) -> None:
        # An expired key may be reused: clear it first, in this same transaction.
        await self._session.execute(
            delete(IdempotencyKeyRow).where(
                IdempotencyKeyRow.scope == scope,
                IdempotencyKeyRow.key == key,
                IdempotencyKeyRow.expire_time <= now,
            )
        )
        self._session.add(
            IdempotencyKeyRow(
                scope=scope,
                key=key,
                fingerprint=fingerprint,
                response=None,
                create_time=now,
                expire_time=now + RETENTION,
            )
        )
        try:
            await self._session.flush()
        except IntegrityError as exc:
            raise KeyClaimed(key) from exc

    async def complete(self, scope: str, key: str, response: Mapping[str, Any]) -> None:
        row = await self._session.get(IdempotencyKeyRow, (scope, key))
        if row is None:
            raise RuntimeError("complete() without claim()")
        row.response = json.dumps(response, separators=(",", ":"), sort_keys=True)
        await self._session.flush()

    async def purge_expired(self, now: datetime) -> int:
        result = await self._session.execute(
            delete(IdempotencyKeyRow).where(IdempotencyKeyRow.expire_time <= now)
        )
        return int(getattr(result, "rowcount", 0))


class IdempotentUnitOfWork(Protocol):
    @property
    def idempotency(self) -> IdempotencyRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def commit(self) -> None: ...


def fingerprint(payload: Mapping[str, Any]) -> str:
    """A stable digest of a request's content (the request_id itself excluded by the caller)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument.field("request_id", f"must be at most {MAX_REQUEST_ID_LENGTH} characters")
    if request_id and not request_id.isprintable():
        raise InvalidArgument.field("request_id", "must contain printable characters only")


U = TypeVar("U", bound=IdempotentUnitOfWork)
T = TypeVar("T")


async def run_once(
    new_uow: Callable[[], U],
    clock: Clock,
    *,
    scope: str,
    request_id: str,
    request: Mapping[str, Any],
    action: Callable[[U], Awaitable[T]],
    dump: Callable[[T], Mapping[str, Any]],
    load: Callable[[Mapping[str, Any]], T],
) -> T:
    """Run `action` in one transaction and commit it, at most once per (scope, request_id).

    Without a request_id the action simply runs. With one, a replay of the same
    request returns the stored response and a different request under the same
    key fails with FAILED_PRECONDITION, changing nothing.
    """
    check_request_id(request_id)
    if not request_id:
        async with new_uow() as uow:
            result = await action(uow)
            await uow.commit()
            return result

    digest = fingerprint(request)
    for _ in range(_CLAIM_ATTEMPTS):
        async with new_uow() as uow:
            now = clock.now()
            stored = await uow.idempotency.find(scope, request_id, now)
            if stored is not None:
                if stored.fingerprint != digest:
                    raise FailedPrecondition(
                        "request_id was already used for a different request",
                        reason="REQUEST_ID_REUSED",
                        metadata={"request_id": request_id},
                    )
                if stored.response is not None:
                    return load(stored.response)
            try:
                await uow.idempotency.claim(scope, request_id, digest, now)
            except KeyClaimed:
                continue  # a concurrent duplicate committed first: read its response anew
            result = await action(uow)
            await uow.idempotency.complete(scope, request_id, dump(result))
            await uow.commit()
            return result
    raise Aborted(
        "a concurrent request with the same request_id has not finished; retry",
        reason="REQUEST_ID_IN_USE",
        metadata={"request_id": request_id},
    )
