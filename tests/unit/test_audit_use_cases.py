"""Listing the audit log against an in-memory log: page sizes, tokens, filters."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import pytest

from account_svc.audit.use_cases import AuditDeps, list_audit_events
from core.audit import AuditEvent
from core.errors import InvalidArgument
from core.pagination import PageTokens
from core.principal import Caller

START = datetime(2027, 1, 1, tzinfo=UTC)


def event(number: int, *, actor: str = "usr_a", resource_id: str = "acct_1") -> AuditEvent:
    return AuditEvent(
        id=f"evt_{number:03d}",
        time=START + timedelta(minutes=number // 2),  # pairs share a time: the id breaks the tie
        actor=actor,
        actor_role="admin",
        method="/m",
        request_id="",
        resource_type="account",
        resource_id=resource_id,
        action="update",
        changes={},
        trace_id="",
        correlation_id="",
    )


class MemoryAuditLog:
    """Newest first by (time, id), as the SQL log orders them."""

    def __init__(self, events: list[AuditEvent]):
        self.events = events
        self.limits: list[int] = []

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
        raise AssertionError("listing records nothing")

    async def list(
        self, *, resource_id: str = "", actor: str = "", before: tuple[datetime, str] | None, limit: int
    ) -> list[AuditEvent]:
        self.limits.append(limit)
        found = sorted(self.events, key=lambda e: (e.time, e.id), reverse=True)
        return [
            e
            for e in found
            if (not resource_id or e.resource_id == resource_id)
            and (not actor or e.actor == actor)
            and (before is None or (e.time, e.id) < before)
        ][:limit]


class MemoryReader:
    def __init__(self, log: MemoryAuditLog):
        self.audit = log

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


@pytest.fixture
def log() -> MemoryAuditLog:
    return MemoryAuditLog([event(n) for n in range(1, 6)] + [event(9, actor="usr_b", resource_id="acct_2")])


@pytest.fixture
def deps(log: MemoryAuditLog) -> AuditDeps:
    return AuditDeps(new_reader=lambda: MemoryReader(log), page_tokens=PageTokens(b"0123456789abcdef"))


async def test_pages_walk_the_log_newest_first_without_gaps_or_repeats(deps: AuditDeps) -> None:
    pages, token = [], ""
    while True:
        page = await list_audit_events(deps, size=2, page_token=token, actor="usr_a")
        pages.append([e.id for e in page.events])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["evt_005", "evt_004"], ["evt_003", "evt_002"], ["evt_001"]]


async def test_default_and_largest_page_sizes(deps: AuditDeps, log: MemoryAuditLog) -> None:
    await list_audit_events(deps)
    await list_audit_events(deps, size=5000)
    assert log.limits == [51, 1001]  # one more than the page, to know whether another follows
    page = await list_audit_events(deps, size=6)
    assert len(page.events) == 6 and page.next_page_token == ""


async def test_filters_narrow_the_listing(deps: AuditDeps) -> None:
    page = await list_audit_events(deps, resource_id="acct_2")
    assert [e.id for e in page.events] == ["evt_009"]
    assert (await list_audit_events(deps, actor="nobody")).events == []


async def test_bad_page_size_and_tokens_name_the_field(deps: AuditDeps) -> None:
    with pytest.raises(InvalidArgument) as negative:
        await list_audit_events(deps, size=-1)
    assert [v.field for v in negative.value.violations] == ["page_size"]
    first = await list_audit_events(deps, size=1, actor="usr_a")
    for token, filters in (
        (first.next_page_token, {"actor": "usr_b"}),  # a token pins the filters it was made for
        ("not-a-token", {}),
    ):
        with pytest.raises(InvalidArgument) as bad:
            await list_audit_events(deps, size=1, page_token=token, **filters)
        assert [v.field for v in bad.value.violations] == ["page_token"]
