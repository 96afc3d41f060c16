"""The dunning schedule as pure functions (billing_svc/collection.py `decide`)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta

import pytest

from billing_svc.collection import (
    Collected,
    DunningPolicy,
    EndState,
    collect_once,
    collected,
    decide,
    parse_retry_days,
)
from core.errors import FailedPrecondition
from core.settings import Settings

FINALIZED = datetime(2027, 6, 1, tzinfo=UTC)
POLICY = DunningPolicy((3, 5, 7), EndState.CANCELED, timedelta(hours=1))


def test_each_decline_schedules_the_next_retry_from_finalization_then_ends() -> None:
    attempts, seen = 0, []
    now = FINALIZED
    while True:
        decision = decide(POLICY, Collected.DECLINED, attempts=attempts, finalize_time=FINALIZED, now=now)
        seen.append((decision.attempts, decision.next_time, decision.past_due, decision.exhausted))
        if decision.next_time is None:
            break
        attempts, now = decision.attempts, decision.next_time
    day = timedelta(days=1)
    assert seen == [
        (1, FINALIZED + 3 * day, True, False),
        (2, FINALIZED + 5 * day, False, False),
        (3, FINALIZED + 7 * day, False, False),
        (4, None, False, True),
    ]


def test_a_late_retry_is_due_at_once_not_in_the_past() -> None:
    late = FINALIZED + timedelta(days=4)
    decision = decide(POLICY, Collected.DECLINED, attempts=0, finalize_time=FINALIZED, now=late)
    assert decision.next_time == late


def test_without_retries_the_first_decline_is_the_last() -> None:
    policy = DunningPolicy((), EndState.UNPAID)
    decision = decide(policy, Collected.DECLINED, attempts=0, finalize_time=FINALIZED, now=FINALIZED)
    assert (decision.attempts, decision.next_time, decision.past_due, decision.exhausted) == (
        1,
        None,
        True,
        True,
    )


@pytest.mark.parametrize("outcome", [Collected.PENDING, Collected.GATEWAY_UNAVAILABLE])
def test_transient_outcomes_retry_after_the_delay_and_count_no_attempt(outcome: Collected) -> None:
    now = FINALIZED + timedelta(days=3)
    decision = decide(POLICY, outcome, attempts=1, finalize_time=FINALIZED, now=now)
    assert (decision.attempts, decision.next_time, decision.past_due, decision.exhausted) == (
        1,
        now + timedelta(hours=1),
        False,
        False,
    )


@pytest.mark.parametrize("outcome", [Collected.PAID, Collected.NOTHING_DUE, Collected.NO_PAYMENT_METHOD])
def test_final_outcomes_clear_the_schedule(outcome: Collected) -> None:
    decision = decide(POLICY, outcome, attempts=2, finalize_time=FINALIZED, now=FINALIZED)
    assert (decision.attempts, decision.next_time, decision.exhausted) == (2, None, False)


def test_retry_days_parse_and_must_increase() -> None:
    assert parse_retry_days("3,5,7") == (3, 5, 7)
    assert parse_retry_days("") == ()
    with pytest.raises(ValueError, match="increasing"):
        parse_retry_days("5,3")
    with pytest.raises(ValueError, match="must increase"):
        Settings(dunning_retry_days="3,3")
    with pytest.raises(ValueError, match="dunning_retry_days"):
        Settings(dunning_retry_days="3, x")
    with pytest.raises(ValueError, match="dunning_end_state"):
        Settings(dunning_end_state="deleted")


def test_outcomes_of_another_enum_are_read_by_name() -> None:
    class CollectionOutcome(enum.Enum):  # the payments module's, whatever its values
        PAID = 1
        NO_PAYMENT_METHOD = 2

    assert collected(CollectionOutcome.PAID) is Collected.PAID
    assert collected(CollectionOutcome.NO_PAYMENT_METHOD) is Collected.NO_PAYMENT_METHOD
    assert collected("declined") is Collected.DECLINED
    with pytest.raises(ValueError, match="refunded"):
        collected("refunded")


async def test_refusals_and_failures_of_the_collector_are_outcomes() -> None:
    seen: list[str] = []

    async def refuse(reason: str) -> Collected:
        raise FailedPrecondition("no", reason=reason)

    async def crash(invoice_id: str) -> Collected:
        raise RuntimeError("bug")

    async def no_method(invoice_id: str) -> Collected:
        return await refuse("PAYMENT_METHOD_REQUIRED")

    async def not_configured(invoice_id: str) -> Collected:
        return await refuse("PAYMENT_GATEWAY_NOT_CONFIGURED")

    assert await collect_once(no_method, "inv_1", seen.append) is Collected.NO_PAYMENT_METHOD
    assert await collect_once(not_configured, "inv_1", seen.append) is Collected.GATEWAY_UNAVAILABLE
    assert await collect_once(crash, "inv_1", seen.append) is Collected.GATEWAY_UNAVAILABLE
    assert seen == ["no_payment_method", "gateway_unavailable", "gateway_unavailable"]
