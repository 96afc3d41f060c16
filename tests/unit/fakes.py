"""In-memory stand-ins for the repositories and unit of work, for use-case tests.

The fake unit of work works on a copy of the store and publishes it only on
commit, so a test can see that a failed use case left nothing behind; emitted
events and after-commit callbacks follow the same rule.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from account_svc.domain import Account, AccountFilter, email_key, email_taken
from core.clock import Clock, SystemClock
from core.db import AfterCommit, run_after_commit
from core.idempotency import RETENTION, StoredKey
from core.outbox import PendingEvent, pending_event
from core.principal import Caller


@dataclass
class Store:
    accounts: dict[str, Account] = field(default_factory=dict)
    keys: dict[tuple[str, str], tuple[str, Mapping[str, Any] | None, datetime]] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)
    events: list[PendingEvent] = field(default_factory=list)
    # login session id -> (account id of its user, the reason it ended, "" while live)
    sessions: dict[str, tuple[str, str]] = field(default_factory=dict)
    commits: int = 0


class FakeAccounts:
    def __init__(self, store: Store):
        self._store = store

    async def get(self, account_id: str, *, for_update: bool = False) -> Account | None:
        return self._store.accounts.get(account_id)

    async def email_in_use(self, email: str, *, excluding: str | None = None) -> bool:
        return any(
            a.email_key == email_key(email) and not a.is_deleted and a.id != excluding
            for a in self._store.accounts.values()
        )

    async def add(self, account: Account) -> None:
        if await self.email_in_use(account.email):
            raise email_taken()
        self._store.accounts[account.id] = account

    async def save(self, account: Account) -> None:
        self._store.accounts[account.id] = account

    async def list(
        self, query: AccountFilter, *, show_deleted: bool, after: tuple[datetime, str] | None, limit: int
    ) -> list[Account]:
        rows = sorted(self._store.accounts.values(), key=lambda a: (a.create_time, a.id))
        rows = [
            a
            for a in rows
            if (show_deleted or not a.is_deleted)
            and (query.only_id is None or a.id == query.only_id)
            and (query.email is None or a.email_key == email_key(query.email))
            and (query.status is None or a.status == query.status)
            and (after is None or (a.create_time, a.id) > after)
        ]
        return rows[:limit]


class FakeSessions:
    def __init__(self, store: Store):
        self._store = store

    async def revoke_account_sessions(self, account_id: str, now: datetime, reason: str) -> list[str]:
        ended = [sid for sid, (owner, end) in self._store.sessions.items() if owner == account_id and not end]
        for session_id in ended:
            self._store.sessions[session_id] = (account_id, reason)
        return ended


class FakeIdempotency:
    def __init__(self, store: Store):
        self._store = store

    async def find(self, scope: str, key: str, now: datetime) -> StoredKey | None:
        entry = self._store.keys.get((scope, key))
        if entry is None or entry[2] <= now:
            return None
        return StoredKey(entry[0], entry[1])

    async def claim(self, scope: str, key: str, fingerprint: str, now: datetime) -> bool:
        entry = self._store.keys.get((scope, key))
        if entry is not None and entry[2] > now:
            return False
        self._store.keys[(scope, key)] = (fingerprint, None, now + RETENTION)
        return True

    async def complete(self, scope: str, key: str, response: Mapping[str, Any]) -> None:
        fingerprint, _, expires = self._store.keys[(scope, key)]
        self._store.keys[(scope, key)] = (fingerprint, copy.deepcopy(dict(response)), expires)


class FakeAuditLog:
    def __init__(self, store: Store):
        self._store = store

    async def record(self, caller: Caller, **event: Any) -> None:
        self._store.audit.append({"actor": caller.actor, "method": caller.method, **event})

    async def list(self, **query: Any) -> list[Any]:
        raise NotImplementedError("audit listing is tested against real databases")


class FakeUnitOfWork:
    def __init__(self, store: Store, clock: Clock | None = None):
        self.store = store
        self._clock = clock or SystemClock()

    async def __aenter__(self) -> Self:
        self._working = copy.deepcopy(self.store)
        self._after_commit: list[AfterCommit] = []
        self.accounts = FakeAccounts(self._working)
        self.sessions = FakeSessions(self._working)
        self.idempotency = FakeIdempotency(self._working)
        self.audit = FakeAuditLog(self._working)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        del self._working

    def after_commit(self, callback: AfterCommit) -> None:
        self._after_commit.append(callback)

    def invalidate_after_commit(self, *generations: str) -> None:
        return None  # the use-case tests run without a read cache

    def emit(self, event_type: str, resource: tuple[str, str], payload: Mapping[str, Any]) -> None:
        # The real checks, so a use-case test catches an event the outbox would refuse.
        self._working.events.append(pending_event(event_type, resource, payload, self._clock.now()))

    async def commit(self) -> None:
        self.store.accounts = self._working.accounts
        self.store.keys = self._working.keys
        self.store.audit = self._working.audit
        self.store.events = self._working.events
        self.store.sessions = self._working.sessions
        self.store.commits += 1
        callbacks, self._after_commit = self._after_commit, []
        await run_after_commit(callbacks)
