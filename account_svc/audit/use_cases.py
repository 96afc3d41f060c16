"""Listing the audit log, newest first, one page at a time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from core.audit import AuditEvent, AuditLog
from core.pagination import PageTokens


class AuditReader(Protocol):
    """A read-only unit of work that reaches the audit log."""

    @property
    def audit(self) -> AuditLog: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@dataclass(frozen=True)
class AuditDeps:
    new_reader: Callable[[], AuditReader]
    page_tokens: PageTokens


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    next_page_token: str


async def list_audit_events(
    deps: AuditDeps, *, size: int = 0, page_token: str = "", resource_id: str = "", actor: str = ""
) -> AuditPage:
    """Events matching the filters (empty means any), newest first; the token pins the filters."""
    query = {"resource_id": resource_id, "actor": actor}
    page = deps.page_tokens.keyset_page(size, page_token, query)
    async with deps.new_reader() as reader:
        rows = await reader.audit.list(
            resource_id=resource_id, actor=actor, before=page.after, limit=page.fetch_limit
        )
    events, token = page.slice(rows, key=lambda event: (event.time, event.id))
    return AuditPage(events, token)
