"""The idempotent runner against the in-memory fakes: replays, fingerprints and scopes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from core.clock import FrozenClock
from core.errors import Aborted, FailedPrecondition
from core.idempotency import RETENTION, Codec, IdempotentRunner, Outcome, fingerprint
from core.principal import Caller, Principal, Role
from tests.unit.fakes import FakeUnitOfWork, Store

START = datetime(2026, 1, 1, tzinfo=UTC)
ALICE = Principal("usr_alice", Role.ADMIN, frozenset({"*"}))
BOB = Principal("usr_bob", Role.ADMIN, frozenset({"*"}))


@dataclass(frozen=True)
class Nested:
    lines: tuple[str, ...]


@dataclass(frozen=True)
class AddNumber:
    value: int
    nested: Nested = Nested(("a",))


@dataclass(frozen=True)
class RemoveNumber:
    value: int


class Counter:
    """The action: counts its runs and returns the run number."""

    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self, uow: FakeUnitOfWork) -> int:
        self.runs += 1
        return self.runs


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def runner(store: Store) -> IdempotentRunner[FakeUnitOfWork, int]:
    codec = Codec(dump=lambda n: {"n": n}, load=lambda data: int(data["n"]))
    return IdempotentRunner(lambda: FakeUnitOfWork(store), FrozenClock(START), codec=codec)


def as_caller(principal: Principal, request_id: str) -> Caller:
    return Caller(principal, "/test/Method", request_id)


async def test_first_run_executes_and_a_retry_is_a_replay(
    runner: IdempotentRunner[FakeUnitOfWork, int], store: Store
) -> None:
    action = Counter()
    first = await runner.run(as_caller(ALICE, "k1"), AddNumber(1), action)
    again = await runner.run(as_caller(ALICE, "k1"), AddNumber(1), action)

    assert first == Outcome(1, replayed=False)
    assert again == Outcome(1, replayed=True)
    assert action.runs == 1
    assert store.commits == 1


async def test_without_request_id_every_call_runs(runner: IdempotentRunner[FakeUnitOfWork, int]) -> None:
    action = Counter()
    outcomes = [await runner.run(as_caller(ALICE, ""), AddNumber(1), action) for _ in range(2)]

    assert outcomes == [Outcome(1, replayed=False), Outcome(2, replayed=False)]


async def test_a_different_command_under_the_key_changes_nothing(
    runner: IdempotentRunner[FakeUnitOfWork, int], store: Store
) -> None:
    action = Counter()
    await runner.run(as_caller(ALICE, "k1"), AddNumber(1), action)

    for changed in (AddNumber(2), AddNumber(1, Nested(("b",)))):
        with pytest.raises(FailedPrecondition) as caught:
            await runner.run(as_caller(ALICE, "k1"), changed, action)
        assert caught.value.reason == "REQUEST_ID_REUSED"
    assert action.runs == 1
    assert store.commits == 1


async def test_keys_are_scoped_by_operation_and_caller(runner: IdempotentRunner[FakeUnitOfWork, int]) -> None:
    action = Counter()
    await runner.run(as_caller(ALICE, "k1"), AddNumber(1), action)
    other_operation = await runner.run(as_caller(ALICE, "k1"), RemoveNumber(1), action)
    other_caller = await runner.run(as_caller(BOB, "k1"), AddNumber(1), action)

    assert not other_operation.replayed and not other_caller.replayed
    assert action.runs == 3


async def test_a_claimed_key_without_response_is_in_use(
    runner: IdempotentRunner[FakeUnitOfWork, int], store: Store
) -> None:
    # A live key without its response: a claim not yet committed. Databases never show one to
    # another transaction, but were one seen, the runner must retry and never run the action.
    scope = as_caller(ALICE, "k1").idempotency_scope("AddNumber")
    store.keys[(scope, "k1")] = (fingerprint(AddNumber(1)), None, START + RETENTION)
    action = Counter()

    with pytest.raises(Aborted) as caught:
        await runner.run(as_caller(ALICE, "k1"), AddNumber(1), action)
    assert caught.value.reason == "REQUEST_ID_IN_USE"
    assert action.runs == 0


def test_fingerprint_is_the_commands_content() -> None:
    assert fingerprint(AddNumber(1)) == fingerprint(AddNumber(1, Nested(("a",))))
    assert fingerprint(AddNumber(1)) != fingerprint(AddNumber(1, Nested(("a", "b"))))
    assert len(fingerprint(AddNumber(1))) == 64


async def test_replay_looks_without_running_or_claiming(
    runner: IdempotentRunner[FakeUnitOfWork, int], store: Store
) -> None:
    """For operations of several transactions: look first, run, then store with run()."""
    alice = as_caller(ALICE, "multi")
    assert await runner.replay(as_caller(ALICE, ""), AddNumber(1)) is None  # no request id
    assert await runner.replay(alice, AddNumber(1)) is None  # a new key: nothing claimed by looking
    assert store.commits == 0

    await runner.run(alice, AddNumber(1), Counter())
    assert await runner.replay(alice, AddNumber(1)) == Outcome(1, replayed=True)
    assert await runner.replay(as_caller(BOB, "multi"), AddNumber(1)) is None  # another caller's scope
    with pytest.raises(FailedPrecondition) as caught:
        await runner.replay(alice, AddNumber(2))
    assert caught.value.reason == "REQUEST_ID_REUSED"
