"""Recording usage: one function per business action, each owning its transaction.

`record_usage_batch` is the one path that stores: it checks every event, resolves the meters the
batch names in one query and each distinct account once, stores the good events set-based in one
transaction and one commit, and answers each event on its own (stored, replay, or its error).
`record_usage` is one event through the same path; with a coalescer (billing_svc.usage.coalescer)
concurrent single events share a batch, and so a commit.

There is no request_id runner here: the event id is the idempotency key, kept per account in
usage_event_ids for EVENT_ID_RETENTION (35 days), with the fingerprint of the event's content.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from billing_svc.catalog.domain import Meter
from billing_svc.usage import rules
from billing_svc.usage.domain import (
    RECORD_PREFIX,
    EarlierUsage,
    NewUsage,
    Outcome,
    RecordResult,
    UsageInput,
    UsageRecord,
)
from billing_svc.usage.rules import CheckedEvent, Window
from billing_svc.usage.tables import EVENT_ID_RETENTION
from billing_svc.usage.unit_of_work import UsageUnitOfWork
from core import ids
from core.clock import Clock
from core.errors import Aborted, AlreadyExists, InvalidArgument, NotFound, TallyError
from core.principal import Caller
from core.text import excerpt

MAX_BATCH = 1000

# Stands in for the coalescer of record_usage: takes one event, answers it once committed.
RecordOne = Callable[[Caller, UsageInput], Awaitable[RecordResult]]


class OutcomeCounts:
    """Where the outcomes of recorded events are counted: nowhere until the composition root
    hands it the app's metrics (`report_to`), which are made after the modules."""

    def __init__(self) -> None:
        self._sink: Callable[[str, int], None] | None = None

    def report_to(self, sink: Callable[[str, int], None]) -> None:
        self._sink = sink

    def count(self, results: Sequence[RecordResult]) -> None:
        if self._sink is None:
            return
        for outcome, found in Counter(result.outcome for result in results).items():
            self._sink(outcome.value, found)


@dataclass(frozen=True)
class UsageDeps:
    new_uow: Callable[[], UsageUnitOfWork]
    clock: Clock  # the wall clock: the time of receipt, which the event window is measured from
    window: Window
    # When set, record_usage hands its event to it (a Coalescer) instead of storing it alone.
    coalesce: RecordOne | None = field(default=None, compare=False)
    outcomes: OutcomeCounts = field(default_factory=OutcomeCounts, compare=False)


def account_not_found(account_id: str) -> NotFound:
    return NotFound(
        f"account {excerpt(account_id)!r} not found",
        reason="ACCOUNT_NOT_FOUND",
        metadata={"id": excerpt(account_id), "field": "account_id"},
    )


def event_id_reused(event_id: str, record_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"event id {excerpt(event_id)!r} was used for a different event, stored as {record_id}; "
        "an event sent again must have the same content",
        reason="USAGE_EVENT_ID_REUSED",
        metadata={"event_id": excerpt(event_id), "record_id": record_id, "field": "usage_record.event_id"},
    )


def _record(event: CheckedEvent, record_id: str, now: datetime) -> UsageRecord:
    return UsageRecord(
        id=record_id,
        account_id=event.account_id,
        meter_id=event.meter.id,
        service=event.meter.code,
        units=event.units,
        price_per_unit=event.price_per_unit,
        event_time=event.event_time,
        properties=event.properties,
        event_id=event.event_id,
        create_time=now,
    )


def _against(event: CheckedEvent, earlier: EarlierUsage) -> RecordResult:
    """The result of an event whose id held `earlier` already."""
    assigned = event.event_id_assigned
    if earlier.fingerprint == event.fingerprint:
        return RecordResult(Outcome.REPLAY, record=earlier.record, event_id_assigned=assigned)
    if earlier.record is None and not earlier.fingerprint:
        # The id's row went (purged) between the two statements of insert_new: try again.
        error: TallyError = Aborted("the event id changed hands while recording; retry", reason="RETRY")
    else:
        record_id = earlier.record.id if earlier.record is not None else "an archived record"
        error = event_id_reused(event.event_id, record_id)
    return RecordResult(Outcome.FAILED, error=error, event_id_assigned=assigned)


async def _checked(
    uow: UsageUnitOfWork, caller: Caller, items: Sequence[UsageInput], now: datetime, window: Window
) -> list[CheckedEvent | TallyError]:
    """Each item checked against the meters and accounts: the event, or the error refusing it."""
    meters = await uow.meters.by_codes({item.service for item in items if item.service})
    unknown = any(item.service and not _active(meters.get(item.service)) for item in items)
    active = await uow.meters.active_codes(rules.MAX_LISTED_SERVICES + 1) if unknown else []
    # An event's time (its default, and the window it must fall in) is its account's billing time:
    # a test clock's frozen time for an account on one, so a rehearsal's usage lands in its periods.
    account_now: dict[str, datetime] = {}
    for account_id in sorted(
        {item.account_id for item in items if 0 < len(item.account_id) <= ids.MAX_LENGTH}
    ):
        account_now[account_id] = (await uow.clocks.time_for(account_id)).now
    checked: list[CheckedEvent | TallyError] = []
    for item in items:
        try:
            checked.append(
                rules.check_event(item, meters, active, account_now.get(item.account_id, now), window)
            )
        except TallyError as exc:
            checked.append(exc)
    # Each distinct account once, in a fixed order, share-locked against a concurrent delete.
    live: dict[str, bool] = {}
    invoiced: dict[str, datetime | None] = {}
    for account_id in sorted({event.account_id for event in checked if isinstance(event, CheckedEvent)}):
        confined = caller.customer_account
        if len(account_id) > ids.MAX_LENGTH or (confined is not None and confined != account_id):
            live[account_id] = False
            continue
        terms = await uow.accounts.terms(account_id, lock=True)
        live[account_id] = terms is not None and terms.live
        if live[account_id]:
            invoiced[account_id] = await uow.usage.invoiced_until(account_id)
    return [
        account_not_found(event.account_id)
        if isinstance(event, CheckedEvent) and not live[event.account_id]
        else _not_invoiced(event, invoiced)
        for event in checked
    ]


def _not_invoiced(
    event: CheckedEvent | TallyError, invoiced: Mapping[str, datetime | None]
) -> CheckedEvent | TallyError:
    """Usage timed in a period whose invoice is finalized is refused: a finalized invoice never
    changes, and nothing would bill it (the next invoice bills its own period). Late usage for a
    period whose invoice is still a draft, in its grace period, is accepted and lands on it."""
    if not isinstance(event, CheckedEvent):
        return event
    until = invoiced.get(event.account_id)
    if until is None or event.event_time >= until:
        return event
    return InvalidArgument.field(
        "usage_record.event_time",
        f"is in a billing period already invoiced: events from {until.isoformat()} on are accepted",
    )


def _active(meter: Meter | None) -> bool:
    return meter is not None and not meter.is_archived


async def record_usage_batch(
    deps: UsageDeps, caller: Caller, items: Sequence[UsageInput]
) -> list[RecordResult]:
    """Record 1 to 1000 events; one result per event, in order. Never raises for a bad event
    (its result carries the error); a batch of the wrong size is INVALID_ARGUMENT on `requests`.

    Two events of the batch with one (account, event id): the first is recorded, the second is a
    replay of it when their contents agree, else ALREADY_EXISTS."""
    rules.batch_size(len(items), MAX_BATCH)
    now = deps.clock.now()
    async with deps.new_uow() as uow:
        checked = await _checked(uow, caller, items, now, deps.window)
        first: dict[tuple[str, str], int] = {}  # key -> position among `new`
        unique: list[CheckedEvent] = []
        for event in checked:
            if isinstance(event, CheckedEvent):
                key = event.key
                if key not in first:
                    first[key] = len(unique)
                    unique.append(event)
        record_ids = ids.new_ordered_ids(RECORD_PREFIX, now, len(unique))
        new = [
            NewUsage(_record(event, record_id, now), event.fingerprint)
            for event, record_id in zip(unique, record_ids, strict=True)
        ]
        earlier = await uow.usage.insert_new(new)
        if new:
            await uow.commit()
    results: list[RecordResult] = []
    claimed: set[tuple[str, str]] = set()
    for event in checked:
        if not isinstance(event, CheckedEvent):
            results.append(RecordResult(Outcome.FAILED, error=event))
            continue
        key = event.key
        position = first[key]
        held = earlier[position]
        if key in claimed or held is not None:
            # A later event of this batch with the key, or a key held before this batch.
            results.append(
                _against(event, held or EarlierUsage(new[position].fingerprint, new[position].record))
            )
        else:
            results.append(
                RecordResult(
                    Outcome.STORED, record=new[position].record, event_id_assigned=event.event_id_assigned
                )
            )
        claimed.add(key)
    deps.outcomes.count(results)
    return results


async def record_usage(deps: UsageDeps, caller: Caller, item: UsageInput) -> RecordResult:
    """Record one event: STORED or REPLAY; raises the error that refused it."""
    if deps.coalesce is not None:
        result = await deps.coalesce(caller, item)
    else:
        (result,) = await record_usage_batch(deps, caller, [item])
    if result.error is not None:
        raise result.error
    return result


async def purge_event_ids(
    new_uow: Callable[[], UsageUnitOfWork], now: datetime, *, batch_size: int = 1000
) -> int:
    """Delete the event ids stored more than EVENT_ID_RETENTION before `now`, `batch_size` per
    transaction; how many went. After that an event sent again is a new event."""
    before = now - EVENT_ID_RETENTION
    total = 0
    while True:
        async with new_uow() as uow:
            deleted = await uow.usage.purge_event_ids(before, limit=batch_size)
            await uow.commit()
        total += deleted
        if deleted < batch_size:
            return total


def window_from(late_hours: float, future_skew_seconds: float) -> Window:
    return Window(late=timedelta(hours=late_hours), future_skew=timedelta(seconds=future_skew_seconds))
