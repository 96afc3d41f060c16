"""One function per business action on test clocks. Each owns its transactions through the unit of work.

Every write but the advance is one transaction run by an IdempotentRunner. An advance is a series
of transactions (billing_svc/clocks/advance.py says why and how); its request id is honoured around
them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from billing_svc.clocks import domain
from billing_svc.clocks.domain import Advanced, Deleted, TestClock
from billing_svc.clocks.ports import Collections, FinalizeDraft, RunDueWork
from billing_svc.clocks.unit_of_work import TestClocksUnitOfWork
from core import ids
from core.audit import changes_between
from core.clock import Clock
from core.errors import InvalidArgument
from core.idempotency import Codec, IdempotentRunner
from core.pagination import PageTokens
from core.principal import Caller

# Pieces of work one AdvanceTestClock call runs at most (one transaction each); see advance.py.
MAX_WORK_PER_ADVANCE = 10_000
CLOCK_CODEC = Codec(TestClock.to_dict, TestClock.from_dict)
DELETED_CODEC = Codec(Deleted.to_dict, Deleted.from_dict)
ADVANCED_CODEC = Codec(Advanced.to_dict, Advanced.from_dict)
_AUDITED = ("display_name", "frozen_time", "account_ids")


@dataclass(frozen=True)
class TestClockDeps:
    __test__ = False  # not a pytest class, despite the name

    new_uow: Callable[[], TestClocksUnitOfWork]
    new_reader: Callable[[], TestClocksUnitOfWork]  # one snapshot: a clock and its accounts agree
    clock: Clock  # wall time: create_time, update_time, request id retention; never frozen_time
    page_tokens: PageTokens
    # The subscriptions module's work (billing_svc.subscriptions.work.run_due_work); tests pass fakes.
    run_due_work: RunDueWork[TestClocksUnitOfWork]
    # The drafts of the clock's accounts finalized when their grace period ends; None: no drafts.
    finalize_draft: FinalizeDraft[TestClocksUnitOfWork] | None = None
    max_work_per_advance: int = MAX_WORK_PER_ADVANCE
    # The automatic collection of the clock's invoices (billing_svc.collection); None: not collected.
    collections: Collections | None = None
    # One runner per kind of response each stores and replays.
    clock_runner: IdempotentRunner[TestClocksUnitOfWork, TestClock] = field(init=False, repr=False)
    delete_runner: IdempotentRunner[TestClocksUnitOfWork, Deleted] = field(init=False, repr=False)
    advance_runner: IdempotentRunner[TestClocksUnitOfWork, Advanced] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_work_per_advance <= 0:
            raise ValueError("max_work_per_advance must be positive")
        for name, codec in (
            ("clock_runner", CLOCK_CODEC),
            ("delete_runner", DELETED_CODEC),
            ("advance_runner", ADVANCED_CODEC),
        ):
            object.__setattr__(self, name, IdempotentRunner(self.new_uow, self.clock, codec=codec))


# The commands: each is a request's content, and so its fingerprint under a request_id (AIP-155).
# The class name is the operation, which scopes request ids: renaming one orphans its stored keys.


@dataclass(frozen=True)
class CreateTestClock:
    __test__ = False

    display_name: str
    frozen_time: datetime


@dataclass(frozen=True)
class AttachAccount:
    id: str
    account_id: str


@dataclass(frozen=True)
class DeleteTestClock:
    __test__ = False

    id: str


@dataclass(frozen=True)
class TestClockPage:
    __test__ = False

    clocks: list[TestClock]
    next_page_token: str


def require_id(value: str, field: str = "id") -> None:
    if not value:
        raise InvalidArgument.field(field, "is required")


async def load(uow: TestClocksUnitOfWork, clock_id: str) -> TestClock:
    """The clock, its row locked to the end of the transaction; NOT_FOUND if there is none."""
    clock = await uow.test_clocks.get(clock_id, for_update=True)
    if clock is None:
        raise domain.clock_not_found(clock_id)
    return clock


def _view(clock: TestClock | None) -> dict[str, object] | None:
    if clock is None:
        return None
    data = clock.to_dict()
    return {name: data[name] for name in _AUDITED}


async def audit(
    uow: TestClocksUnitOfWork, caller: Caller, action: str, before: TestClock | None, after: TestClock | None
) -> None:
    """One audit event, at the subject's update_time: the wall time of the change (a delete passes the
    clock stamped with the time of the delete)."""
    subject = after or before
    assert subject is not None
    await uow.audit.record(
        caller,
        time=subject.update_time,
        resource_type=domain.RESOURCE_TYPE,
        resource_id=subject.id,
        action=action,
        changes=changes_between(_view(before), _view(after)),
    )


async def create_test_clock(
    deps: TestClockDeps, caller: Caller, display_name: str, frozen_time: datetime | None
) -> TestClock:
    domain.check_new_clock(display_name, frozen_time)
    assert frozen_time is not None
    command = CreateTestClock(display_name, frozen_time)

    async def action(uow: TestClocksUnitOfWork) -> TestClock:
        now = deps.clock.now()
        clock = TestClock(
            id=ids.new_id(domain.ID_PREFIX),
            display_name=command.display_name,
            frozen_time=command.frozen_time,
            account_ids=(),
            create_time=now,
            update_time=now,
            revision=1,
        )
        await uow.test_clocks.add(clock)
        await audit(uow, caller, "create", None, clock)
        uow.emit(
            "test_clock.created",
            (domain.RESOURCE_TYPE, clock.id),
            {
                "id": clock.id,
                "display_name": clock.display_name,
                "frozen_time": clock.frozen_time.isoformat(),
            },
        )
        return clock

    return (await deps.clock_runner.run(caller, command, action)).value


async def get_test_clock(deps: TestClockDeps, caller: Caller, clock_id: str) -> TestClock:
    require_id(clock_id)
    async with deps.new_reader() as uow:
        clock = await uow.test_clocks.get(clock_id)
    if clock is None:
        raise domain.clock_not_found(clock_id)
    return clock


async def list_test_clocks(
    deps: TestClockDeps, caller: Caller, *, size: int = 0, page_token: str = ""
) -> TestClockPage:
    page = deps.page_tokens.keyset_page(size, page_token, {"list": "test_clocks"})
    async with deps.new_reader() as uow:
        rows = await uow.test_clocks.list(after=page.after, limit=page.fetch_limit)
    clocks, next_token = page.slice(rows, key=lambda clock: (clock.create_time, clock.id))
    return TestClockPage(clocks, next_token)


async def attach_account(deps: TestClockDeps, caller: Caller, clock_id: str, account_id: str) -> TestClock:
    require_id(clock_id)
    require_id(account_id, "account_id")
    command = AttachAccount(clock_id, account_id)

    async def action(uow: TestClocksUnitOfWork) -> TestClock:
        clock = await load(uow, command.id)
        # The account row locked for update: a subscription being created for the account holds a
        # share lock on it, so this waits for that to commit and then finds the subscription; one
        # created after this commits finds the account on the clock.
        terms = await uow.accounts.terms(command.account_id, lock=True, exclusive=True)
        if terms is None:
            raise domain.account_not_found(command.account_id)
        if not terms.live:
            raise domain.account_deleted(command.account_id)
        on_clock = await uow.test_clocks.clock_of(command.account_id)
        if on_clock is not None:
            raise domain.account_on_test_clock(command.account_id, on_clock)
        if await uow.test_clocks.has_billing(command.account_id):
            raise domain.account_has_billing(command.account_id)
        if len(clock.account_ids) >= domain.MAX_ACCOUNTS:
            raise domain.clock_full(clock)
        now = deps.clock.now()
        await uow.test_clocks.attach(clock.id, command.account_id, now)
        attached = replace(
            clock,
            account_ids=tuple(sorted((*clock.account_ids, command.account_id))),
            update_time=now,
            revision=clock.revision + 1,
        )
        await uow.test_clocks.save(attached)
        await audit(uow, caller, "attach_account", clock, attached)
        uow.emit(
            "test_clock.account_attached",
            (domain.RESOURCE_TYPE, clock.id),
            {"id": clock.id, "account_id": command.account_id, "frozen_time": clock.frozen_time.isoformat()},
        )
        return attached

    return (await deps.clock_runner.run(caller, command, action)).value


async def delete_test_clock(deps: TestClockDeps, caller: Caller, clock_id: str) -> Deleted:
    """Deletes the clock, its attachments, and every subscription, phase and pending invoice item of
    its accounts, in one transaction; the accounts are back on the wall clock."""
    require_id(clock_id)
    command = DeleteTestClock(clock_id)

    async def action(uow: TestClocksUnitOfWork) -> Deleted:
        clock = await load(uow, command.id)
        # Each account locked for update, in id order (no deadlock between two such writers): a
        # subscription being created for one commits first and is deleted here, or waits and then
        # finds the account on the wall clock.
        for account_id in sorted(clock.account_ids):
            await uow.accounts.terms(account_id, lock=True, exclusive=True)
        await uow.test_clocks.delete_billing(clock.account_ids)
        await uow.test_clocks.delete(clock.id)
        await audit(uow, caller, "delete", replace(clock, update_time=deps.clock.now()), None)
        uow.emit(
            "test_clock.deleted",
            (domain.RESOURCE_TYPE, clock.id),
            {"id": clock.id, "account_ids": list(clock.account_ids)},
        )
        return Deleted(clock.id, clock.account_ids)

    return (await deps.delete_runner.run(caller, command, action)).value
