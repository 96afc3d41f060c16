"""The audit log: who changed what, when, through which request, and how.

Use cases record an event through their unit of work, in the same transaction
as the change, so an event never exists without its change or the reverse.
Secrets never reach it: callers pass only the fields that may be shown.

Each event also carries the trace id of the current span and the call's
x-request-id (bound by the observability interceptor), read here rather than
passed by every use case, so an event joins to its trace and access log line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import JSON, Index, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from core import ids
from core.db import Base, UtcDateTime, defer_row
from core.pagination import keyset_after
from core.principal import Caller
from core.request_context import current_trace_id, request_info


class AuditEventRow(Base):
    __tablename__ = "audit_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(String(64))
    actor_role: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(200))
    request_id: Mapped[str] = mapped_column(String(128))
    resource_type: Mapped[str] = mapped_column(String(40))
    resource_id: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(40))
    changes: Mapped[dict[str, Any]] = mapped_column(JSON)
    trace_id: Mapped[str] = mapped_column(String(32), server_default="")  # 32 hex digits, or ""
    correlation_id: Mapped[str] = mapped_column(String(128), server_default="")  # the x-request-id

    __table_args__ = (
        Index("ix_audit_events_time_id", "time", "id"),
        Index("ix_audit_events_resource_id", "resource_id"),
        Index("ix_audit_events_actor", "actor"),
    )


@dataclass(frozen=True)
class AuditEvent:
    id: str
    time: datetime
    actor: str
    actor_role: str
    method: str
    request_id: str
    resource_type: str
    resource_id: str
    action: str
    changes: Mapping[str, Any]
    trace_id: str
    correlation_id: str


def _current_correlation_id() -> str:
    info = request_info()
    return info.request_id if info is not None else ""


def _plain(value: Any) -> Any:
    """JSON-safe form of a value (dataclasses, enums, datetimes, tuples)."""
    return json.loads(json.dumps(value, default=lambda v: getattr(v, "__dict__", None) or str(v)))


def changes_between(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, *, omit: Iterable[str] = ()
) -> dict[str, Any]:
    """{field: {"before": old, "after": new}} for every field that differs, minus `omit`."""
    skipped = set(omit)
    old, new = _plain(dict(before or {})), _plain(dict(after or {}))
    return {
        name: {"before": old.get(name), "after": new.get(name)}
        for name in sorted(set(old) | set(new))
        if name not in skipped and old.get(name) != new.get(name)
    }


class AuditLog(Protocol):
    async def record(
        self,
        caller: Caller,
        *,
        time: datetime,
        resource_type: str,
        resource_id: str,
        action: str,
        changes: Mapping[str, Any],
    ) -> None: ...

    async def list(
        self, *, resource_id: str = "", actor: str = "", before: tuple[datetime, str] | None, limit: int
    ) -> list[AuditEvent]: ...


class SqlAuditLog:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def record(
        self,
        caller: Caller,
        *,
        time: datetime,
        resource_type: str,
        resource_id: str,
        action: str,
        changes: Mapping[str, Any],
    ) -> None:
        principal = caller.principal
        # Written at commit with the transaction's other audit rows, in one statement (a renewal
        # writes three): core.db.defer_row. Nothing in a transaction reads its own audit rows.
        defer_row(
            self._session,
            AuditEventRow,
            {
                "id": ids.new_id("evt"),
                "time": time,
                "actor": caller.actor,
                "actor_role": principal.role.value if principal else "",
                "method": caller.method,
                "request_id": caller.request_id,
                "resource_type": resource_type,
                "resource_id": resource_id,
                "action": action,
                "changes": dict(changes),
                "trace_id": current_trace_id(),
                "correlation_id": _current_correlation_id(),
            },
        )

    async def list(
        self, *, resource_id: str = "", actor: str = "", before: tuple[datetime, str] | None, limit: int
    ) -> list[AuditEvent]:
        statement = keyset_after(
            select(AuditEventRow), AuditEventRow.time, AuditEventRow.id, before, descending=True
        ).limit(limit)
        if resource_id:
            statement = statement.where(AuditEventRow.resource_id == resource_id)
        if actor:
            statement = statement.where(AuditEventRow.actor == actor)
        rows = (await self._session.execute(statement)).scalars().all()
        return [
            AuditEvent(
                id=r.id,
                time=r.time,
                actor=r.actor,
                actor_role=r.actor_role,
                method=r.method,
                request_id=r.request_id,
                resource_type=r.resource_type,
                resource_id=r.resource_id,
                action=r.action,
                changes=r.changes,
                trace_id=r.trace_id,
                correlation_id=r.correlation_id,
            )
            for r in rows
        ]
