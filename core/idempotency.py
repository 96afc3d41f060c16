"""Exactly-once execution of mutating requests keyed by `request_id` (AIP-155).

A use case states its request as a command: a frozen dataclass holding everything
that makes two requests "the same". The digest of its canonical JSON is the
request's fingerprint, and its class name, with the caller's identity, is the scope
its request ids live in. An `IdempotentRunner`, bound once per resource with the
codec that stores and restores that resource, runs the command's action.

The key is claimed by one upsert in the same transaction as the change, before the
change is made. A concurrent duplicate's upsert waits on that row until the first
transaction ends, then finds the key taken, reads the stored response and replays
it; if the first transaction rolled back, the duplicate's upsert inserts and it
executes instead. So exactly one of any number of concurrent duplicates executes,
and a key is never left claimed without its change, or the change without its key.

Keys are kept for RETENTION (24 hours). After that a claim takes the expired row over,
and `ExpiredKeyPurger`, run by `tally serve` on the wall clock, deletes expired rows in
bounded batches so the table does not grow forever.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar

from sqlalchemy import String, Text, delete, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from core.clock import Clock
from core.db import Base, UnitOfWork, UtcDateTime
from core.errors import Aborted, FailedPrecondition, InvalidArgument
from core.periodic import PeriodicPasses
from core.principal import Caller
from core.text import excerpt

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

RETENTION = timedelta(hours=24)
MAX_REQUEST_ID_LENGTH = 128
# Printable ASCII: what an HTTP header (Idempotency-Key) carries as written, in any client.
REQUEST_ID_PATTERN = "^[ -~]*$"
PURGE_BATCH = 1000
_CLAIM_ATTEMPTS = 3

log = logging.getLogger("tally.idempotency")


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


class IdempotencyRepository(Protocol):
    async def claim(self, scope: str, key: str, fingerprint: str, now: datetime) -> bool:
        """Take the key (new, or expired at `now`); False when it is live, claimed by someone else."""
        ...

    async def find(self, scope: str, key: str, now: datetime) -> StoredKey | None: ...

    async def complete(self, scope: str, key: str, response: Mapping[str, Any]) -> None: ...


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


class SqlIdempotencyRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def claim(self, scope: str, key: str, fingerprint: str, now: datetime) -> bool:
        # Both dialects spell the upsert the same way; only the construct's home differs.
        dialect = self._session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        row = insert(IdempotencyKeyRow).values(
            scope=scope,
            key=key,
            fingerprint=fingerprint,
            response=None,
            create_time=now,
            expire_time=now + RETENTION,
        )
        # An expired key is taken over in place; a live one is left alone and returns no row.
        # On PostgreSQL a key another transaction has inserted but not committed makes this wait
        # for that transaction, then conflict (it committed) or insert (it rolled back).
        upsert = row.on_conflict_do_update(
            index_elements=[IdempotencyKeyRow.scope, IdempotencyKeyRow.key],
            set_={
                "fingerprint": row.excluded.fingerprint,
                "response": None,
                "create_time": row.excluded.create_time,
                "expire_time": row.excluded.expire_time,
            },
            where=IdempotencyKeyRow.expire_time <= now,
        )
        claimed = await self._session.execute(upsert.returning(IdempotencyKeyRow.scope))
        return claimed.first() is not None

    async def find(self, scope: str, key: str, now: datetime) -> StoredKey | None:
        statement = select(IdempotencyKeyRow.fingerprint, IdempotencyKeyRow.response).where(
            IdempotencyKeyRow.scope == scope,
            IdempotencyKeyRow.key == key,
            IdempotencyKeyRow.expire_time > now,
        )
        row = (await self._session.execute(statement)).first()
        if row is None:
            return None
        return StoredKey(row.fingerprint, json.loads(row.response) if row.response else None)

    async def complete(self, scope: str, key: str, response: Mapping[str, Any]) -> None:
        result = await self._session.execute(
            update(IdempotencyKeyRow)
            .where(IdempotencyKeyRow.scope == scope, IdempotencyKeyRow.key == key)
            .values(response=_dumps(response))
            .execution_options(synchronize_session=False)
        )
        if int(getattr(result, "rowcount", 0)) != 1:
            raise RuntimeError("complete() without claim()")

    async def purge_expired(self, now: datetime, *, limit: int = PURGE_BATCH) -> int:
        """Delete up to `limit` keys expired at `now`; how many went."""
        expired = IdempotencyKeyRow.expire_time <= now
        batch = (
            select(IdempotencyKeyRow.scope, IdempotencyKeyRow.key)
            .where(expired)
            .limit(limit)
            .scalar_subquery()
        )
        # The outer condition repeats `expired`: on PostgreSQL, a key that a claim takes over while
        # this statement waits on its row is re-checked against its new expiry and kept.
        result = await self._session.execute(
            delete(IdempotencyKeyRow)
            .where(expired, tuple_(IdempotencyKeyRow.scope, IdempotencyKeyRow.key).in_(batch))
            .execution_options(synchronize_session=False)
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


def fingerprint(command: DataclassInstance) -> str:
    """A stable digest of a command's content (the request_id is not part of a command)."""
    return hashlib.sha256(_dumps(dataclasses.asdict(command)).encode()).hexdigest()


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument.field("request_id", f"must be at most {MAX_REQUEST_ID_LENGTH} characters")
    if request_id and not re.fullmatch(REQUEST_ID_PATTERN, request_id):
        raise InvalidArgument.field("request_id", "must be printable ASCII characters (space to ~)")


U = TypeVar("U", bound=IdempotentUnitOfWork)
T = TypeVar("T")


@dataclass(frozen=True)
class StoredUnder:
    """Where a response is kept: its scope and request id (a codec that seals binds to them)."""

    scope: str
    key: str


class ResponseCodec(Protocol[T]):
    """How a response is stored under a request id, and restored on replay. `decode` may raise a
    core.errors exception when the stored response can no longer be given back."""

    def encode(self, value: T, where: StoredUnder) -> Mapping[str, Any]: ...

    def decode(self, data: Mapping[str, Any], where: StoredUnder) -> T: ...


@dataclass(frozen=True)
class Codec(Generic[T]):
    """A ResponseCodec from two functions, for responses that are stored as they are."""

    dump: Callable[[T], Mapping[str, Any]]
    load: Callable[[Mapping[str, Any]], T]

    def encode(self, value: T, where: StoredUnder) -> Mapping[str, Any]:
        return self.dump(value)

    def decode(self, data: Mapping[str, Any], where: StoredUnder) -> T:
        return self.load(data)


@dataclass(frozen=True)
class Outcome(Generic[T]):
    value: T
    replayed: bool  # the stored response of an earlier execution: nothing ran this time


class IdempotentRunner(Generic[U, T]):
    """Runs commands on one resource, each in its own transaction, at most once per request id."""

    def __init__(self, new_uow: Callable[[], U], clock: Clock, *, codec: ResponseCodec[T]):
        self._new_uow = new_uow
        self._clock = clock
        self._codec = codec

    async def run(
        self, caller: Caller, command: DataclassInstance, action: Callable[[U], Awaitable[T]]
    ) -> Outcome[T]:
        """Run `action` in one transaction and commit it, at most once per (caller, request_id).

        Without a request_id the action simply runs. With one, a replay of the same command
        returns the stored response and a different command under the same key fails with
        FAILED_PRECONDITION, changing nothing.
        """
        request_id = caller.request_id
        check_request_id(request_id)
        if not request_id:
            async with self._new_uow() as uow:
                result = await action(uow)
                await uow.commit()
                return Outcome(result, replayed=False)

        scope = caller.idempotency_scope(type(command).__name__)
        where = StoredUnder(scope, request_id)
        digest = fingerprint(command)
        for _ in range(_CLAIM_ATTEMPTS):
            async with self._new_uow() as uow:
                now = self._clock.now()
                if await uow.idempotency.claim(scope, request_id, digest, now):
                    result = await action(uow)
                    await uow.idempotency.complete(scope, request_id, self._codec.encode(result, where))
                    await uow.commit()
                    return Outcome(result, replayed=False)
                stored = await uow.idempotency.find(scope, request_id, now)
            if stored is None:
                continue  # expired (or purged) since the claim was refused: claim anew
            if stored.fingerprint != digest:
                raise _reused(request_id)
            if stored.response is not None:
                return Outcome(self._codec.decode(stored.response, where), replayed=True)
        raise Aborted(
            "a concurrent request with the same request_id has not finished; retry",
            reason="REQUEST_ID_IN_USE",
            metadata={"request_id": excerpt(request_id)},
        )

    async def replay(self, caller: Caller, command: DataclassInstance) -> Outcome[T] | None:
        """The stored response of an earlier run of `command` under the caller's request_id, or None
        when there is none yet (no request_id, a new key, or a run still in flight); a different
        command under the key fails with FAILED_PRECONDITION.

        For operations of several transactions, which cannot claim their key in the transaction of
        their change: they look here first, so a completed request is not run again and a reused
        key changes nothing, then run, then store the response with `run`.
        """
        request_id = caller.request_id
        check_request_id(request_id)
        if not request_id:
            return None
        scope = caller.idempotency_scope(type(command).__name__)
        async with self._new_uow() as uow:
            stored = await uow.idempotency.find(scope, request_id, self._clock.now())
        if stored is None:
            return None
        if stored.fingerprint != fingerprint(command):
            raise _reused(request_id)
        if stored.response is None:
            return None
        return Outcome(self._codec.decode(stored.response, StoredUnder(scope, request_id)), replayed=True)


def _reused(request_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        "request_id was already used for a different request",
        reason="REQUEST_ID_REUSED",
        metadata={"request_id": excerpt(request_id)},
    )


async def purge_expired_keys(
    sessions: async_sessionmaker[AsyncSession], now: datetime, *, batch_size: int = PURGE_BATCH
) -> int:
    """Delete every key expired at `now`, `batch_size` rows per transaction so that no one
    statement holds many locks or runs long; how many went."""
    total = 0
    while True:
        async with UnitOfWork(sessions) as uow:
            deleted = await SqlIdempotencyRepository(uow.session).purge_expired(now, limit=batch_size)
            await uow.commit()
        total += deleted
        if deleted < batch_size:
            return total


class ExpiredKeyPurger(PeriodicPasses):
    """The background job of `tally serve` that deletes expired keys: one pass at start, then one
    every `interval_seconds`. Every replica may run it; passes that overlap delete each row once."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: Clock, interval_seconds: float):
        super().__init__(interval_seconds, what="purging expired request ids", log=log)
        self._sessions = sessions
        self._clock = clock

    async def run_pass(self) -> None:
        purged = await purge_expired_keys(self._sessions, self._clock.now())
        if purged:
            log.info("purged %d expired request ids", purged, extra={"purged": purged})
