"""Test clocks as billing sees them: the clock, the work an advance ran, and the rules. No I/O.

A test clock's `frozen_time` is simulated time, the "now" of every account attached to it; its
`create_time` and `update_time` are wall time, like every record's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.errors import FailedPrecondition, InvalidArgument, NotFound, Violations
from core.text import excerpt, invisible_problem, text_problem

ID_PREFIX = "clk"
RESOURCE_TYPE = "test_clock"
MAX_DISPLAY_NAME = 200
# One advance moves a clock at most this far (the contract's two years, a leap day included).
MAX_ADVANCE = timedelta(days=731)
# Simulated time stays inside years billing can compute periods in: two years of advance and a
# yearly period past the last allowed time still fit in a datetime (year 9999).
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)
# A clock rehearses a few customers; every response lists its accounts, so their number is bounded.
MAX_ACCOUNTS = 100
# Kinds of billing work, as the subscriptions module names them (billing_svc/subscriptions/work.py).
WORK_KINDS = ("trial_end", "renewal", "scheduled_change", "cancellation")


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


@dataclass(frozen=True)
class TestClock:
    __test__ = False  # not a pytest class, despite the name

    id: str
    display_name: str
    frozen_time: datetime  # simulated
    account_ids: tuple[str, ...]  # sorted
    create_time: datetime  # wall
    update_time: datetime  # wall
    revision: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "display_name": self.display_name,
            "frozen_time": self.frozen_time.isoformat(),
            "account_ids": list(self.account_ids),
            "create_time": self.create_time.isoformat(),
            "update_time": self.update_time.isoformat(),
            "revision": self.revision,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TestClock:
        return cls(
            id=data["id"],
            display_name=data["display_name"],
            frozen_time=_time(data["frozen_time"]),
            account_ids=tuple(data["account_ids"]),
            create_time=_time(data["create_time"]),
            update_time=_time(data["update_time"]),
            revision=int(data["revision"]),
        )


@dataclass(frozen=True)
class BillingWork:
    """One piece of billing work an advance ran, as reported to the caller."""

    kind: str  # one of WORK_KINDS
    due_time: datetime  # simulated: when it was due, and when it ran
    account_id: str
    subscription_id: str
    item_ids: tuple[str, ...]  # the pending invoice items it recorded

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "due_time": self.due_time.isoformat(),
            "account_id": self.account_id,
            "subscription_id": self.subscription_id,
            "item_ids": list(self.item_ids),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BillingWork:
        return cls(
            kind=data["kind"],
            due_time=_time(data["due_time"]),
            account_id=data["account_id"],
            subscription_id=data["subscription_id"],
            item_ids=tuple(data["item_ids"]),
        )


@dataclass(frozen=True)
class Advanced:
    """What an advance answers: the clock after it, and the work this call ran, in time order."""

    clock: TestClock
    work: tuple[BillingWork, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"clock": self.clock.to_dict(), "work": [item.to_dict() for item in self.work]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Advanced:
        return cls(TestClock.from_dict(data["clock"]), tuple(BillingWork.from_dict(w) for w in data["work"]))


@dataclass(frozen=True)
class Deleted:
    """What a delete answers: the accounts whose billing data went with the clock."""

    clock_id: str
    account_ids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"clock_id": self.clock_id, "account_ids": list(self.account_ids)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Deleted:
        return cls(data["clock_id"], tuple(data["account_ids"]))


@dataclass(frozen=True)
class DueSubscription:
    """The subscription whose work falls due first on a clock."""

    id: str
    account_id: str
    due_time: datetime


def _check_time(violations: Violations, path: str, value: datetime | None) -> None:
    if value is None:
        violations.add(path, "is required")
    elif not MIN_TIME <= value < MAX_TIME:
        violations.add(path, f"must be from {MIN_TIME.year} up to (not including) the year {MAX_TIME.year}")


def check_new_clock(display_name: str, frozen_time: datetime | None) -> None:
    """A clock that may be created; one InvalidArgument naming every bad field."""
    violations = Violations()
    path = "test_clock.display_name"
    if len(display_name) > MAX_DISPLAY_NAME:
        violations.add(path, f"must be at most {MAX_DISPLAY_NAME} characters, got {len(display_name)}")
    elif problem := text_problem(display_name) or invisible_problem(display_name):
        violations.add(path, problem)
    _check_time(violations, "test_clock.frozen_time", frozen_time)
    violations.raise_if_any()


def check_target(target: datetime | None) -> datetime:
    """The time an advance was asked to move to, before any clock is read."""
    violations = Violations()
    _check_time(violations, "frozen_time", target)
    violations.raise_if_any()
    assert target is not None
    return target


def check_advance(clock: TestClock, target: datetime) -> None:
    """May `clock` move to `target` in one advance: not backwards, and at most MAX_ADVANCE ahead."""
    current = clock.frozen_time.isoformat()
    if target < clock.frozen_time:
        raise FailedPrecondition(
            f"the clock shows {current}; it cannot go back to {target.isoformat()}",
            reason="CLOCK_BACKWARDS",
            metadata={"id": clock.id, "frozen_time": current, "target": target.isoformat()},
        )
    if target - clock.frozen_time > MAX_ADVANCE:
        raise InvalidArgument.field(
            "frozen_time",
            f"must be at most {MAX_ADVANCE.days} days after the clock's time {current}"
            f" (at most {(clock.frozen_time + MAX_ADVANCE).isoformat()})",
        )


def clock_not_found(clock_id: str) -> NotFound:
    return NotFound(
        f"test clock {excerpt(clock_id)!r} not found",
        reason="TEST_CLOCK_NOT_FOUND",
        metadata={"id": excerpt(clock_id)},
    )


def account_not_found(account_id: str) -> NotFound:
    return NotFound(
        f"account {excerpt(account_id)!r} not found",
        reason="ACCOUNT_NOT_FOUND",
        metadata={"account_id": excerpt(account_id)},
    )


def account_deleted(account_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"account {account_id!r} is deleted", reason="ACCOUNT_DELETED", metadata={"account_id": account_id}
    )


def account_on_test_clock(account_id: str, clock_id: str | None) -> FailedPrecondition:
    where = f" {clock_id!r}" if clock_id else ""
    metadata = {"account_id": account_id, **({"test_clock_id": clock_id} if clock_id else {})}
    return FailedPrecondition(
        f"account {account_id!r} is attached to test clock{where} already",
        reason="ACCOUNT_ON_TEST_CLOCK",
        metadata=metadata,
    )


def account_has_billing(account_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"account {account_id!r} has subscriptions; only an account without billing can be attached",
        reason="ACCOUNT_HAS_BILLING",
        metadata={"account_id": account_id},
    )


def clock_full(clock: TestClock) -> FailedPrecondition:
    return FailedPrecondition(
        f"test clock {clock.id!r} has {MAX_ACCOUNTS} accounts, the most one clock takes",
        reason="TEST_CLOCK_FULL",
        metadata={"id": clock.id, "max_accounts": str(MAX_ACCOUNTS)},
    )


def work_limit_reached(clock: TestClock, target: datetime, limit: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"the advance ran {limit} pieces of work, the most one call runs, and stopped at"
        f" {clock.frozen_time.isoformat()}; call again with the same frozen_time to go on",
        reason="ADVANCE_WORK_LIMIT",
        metadata={
            "id": clock.id,
            "frozen_time": clock.frozen_time.isoformat(),
            "target": target.isoformat(),
            "limit": str(limit),
        },
    )
