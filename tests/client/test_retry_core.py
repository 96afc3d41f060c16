"""The client's pure core: which failures retry, how long it waits, ids kept across attempts, errors decoded.

No server: failures are scripted (tests/client/fakes.py) and the clients' sleep is replaced by
one that records the waits, so nothing here waits for real.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from types import SimpleNamespace

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tally.account.v1 import account_pb2, auth_pb2
from tally.billing.v1 import usage_pb2
from tally_client import (
    AlreadyExists,
    AsyncClient,
    Client,
    Config,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RetryPolicy,
    TallyError,
    Unavailable,
    UsageEvent,
    error_from_rpc,
    error_from_status,
    is_retryable,
    shared_channel_count,
)
from tally_client._core import CachedToken, ServiceAccountTokens, decimal_string, usage_request
from tally_client._retry import RetryState, backoff
from tests.client.fakes import AsyncScriptedRpc, FakeRpcError, ScriptedRpc, rate_limited
from tests.support import FakeMonotonic

STORED = usage_pb2.UsageRecordResult.OUTCOME_STORED
FAILED = usage_pb2.UsageRecordResult.OUTCOME_FAILED
TARGET = "127.0.0.1:9"  # never dialled: every call below goes to a scripted stub
NEVER_RETRIED = [
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.INTERNAL,
]


def stub(client: object, name: str, **methods: object) -> None:
    """Put scripted methods in place of one of the client's stubs."""
    setattr(client, name, SimpleNamespace(**methods))


def error(code: grpc.StatusCode, retry_delay: float | None = None) -> TallyError:
    return TallyError(code, "scripted", retry_delay=retry_delay)


# --- which codes retry --------------------------------------------------------------------------------


@pytest.mark.parametrize("idempotent", [True, False])
def test_unavailable_retries_with_and_without_an_id(idempotent):
    assert is_retryable(error(grpc.StatusCode.UNAVAILABLE), idempotent=idempotent)


@pytest.mark.parametrize("code", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED])
def test_deadline_and_aborted_retry_only_with_an_id(code):
    assert is_retryable(error(code), idempotent=True)
    assert not is_retryable(error(code), idempotent=False)


@pytest.mark.parametrize("code", NEVER_RETRIED)
@pytest.mark.parametrize("idempotent", [True, False])
def test_never_retried_codes(code, idempotent):
    assert not is_retryable(error(code), idempotent=idempotent)


def test_resource_exhausted_retries_only_with_retry_info():
    assert is_retryable(error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=0.5), idempotent=False)
    assert not is_retryable(error(grpc.StatusCode.RESOURCE_EXHAUSTED), idempotent=True)


# --- how long it waits ----------------------------------------------------------------------------------


def test_backoff_grows_by_the_multiplier_up_to_the_cap_without_jitter():
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.5, multiplier=2.0, jitter=0.0)
    assert [backoff(policy, n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_jitter_takes_at_most_its_fraction_off():
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=1.0, jitter=0.5)
    assert backoff(policy, 1, rand=lambda: 0.0) == pytest.approx(1.0)
    assert backoff(policy, 1, rand=lambda: 1.0) == pytest.approx(0.5)


def test_retry_info_delay_is_waited_instead_of_the_backoff():
    state = RetryState(RetryPolicy(initial_backoff=0.01), idempotent=False, started=0.0, attempts=1)
    assert state.next_delay(error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=2.5), now=0.0) == 2.5


def test_max_attempts_ends_the_retries():
    state = RetryState(RetryPolicy(max_attempts=3, jitter=0.0), idempotent=True, started=0.0)
    unavailable = error(grpc.StatusCode.UNAVAILABLE)
    delays = []
    for _ in range(5):
        state.attempts += 1
        delays.append(state.next_delay(unavailable, now=0.0))
    assert delays == [pytest.approx(0.1), pytest.approx(0.2), None, None, None]


def test_the_budget_refuses_a_wait_that_would_overrun_it():
    state = RetryState(RetryPolicy(total_budget=3.0), idempotent=False, started=100.0, attempts=1)
    assert state.next_delay(error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=2.0), now=100.5) == 2.0
    assert state.next_delay(error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=2.0), now=101.5) is None


def test_an_attempt_deadline_is_cut_to_what_is_left_of_the_budget():
    state = RetryState(RetryPolicy(total_budget=10.0), idempotent=True, started=0.0)
    assert state.attempt_timeout(5.0, now=0.0) == 5.0
    assert state.attempt_timeout(5.0, now=8.0) == pytest.approx(2.0)
    assert state.attempt_timeout(None, now=4.0) == pytest.approx(6.0)


@pytest.mark.parametrize(
    "policy",
    [
        {"max_attempts": 0},
        {"initial_backoff": 2.0, "max_backoff": 1.0},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"total_budget": 0},
    ],
)
def test_a_nonsensical_policy_is_refused(policy):
    with pytest.raises(ValueError):  # noqa: PT011 (each says its own field)
        RetryPolicy(**policy)


# --- errors ---------------------------------------------------------------------------------------------


def test_a_status_decodes_into_its_typed_error_with_every_detail():
    status = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="bad account")
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason="INVALID_EMAIL", domain="tally", metadata={"field": "email"})
    )
    status.details.add().Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="account.email", description="not an email")
            ]
        )
    )
    failure = error_from_rpc(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad account", status))
    assert isinstance(failure, InvalidArgument)
    assert (failure.code, failure.message, failure.reason, failure.domain) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad account",
        "INVALID_EMAIL",
        "tally",
    )
    assert failure.metadata == {"field": "email"}
    assert [(v.field, v.description) for v in failure.field_violations] == [("account.email", "not an email")]
    assert failure.retry_delay is None


def test_retry_info_becomes_retry_delay():
    failure = error_from_rpc(rate_limited(1.25))
    assert isinstance(failure, ResourceExhausted)
    assert failure.retry_delay == pytest.approx(1.25)


def test_a_failure_without_the_trailer_keeps_its_code_and_message():
    failure = error_from_rpc(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert isinstance(failure, Unavailable)
    assert (failure.message, failure.reason, failure.field_violations) == ("connection refused", "", ())


def test_a_code_without_a_class_of_its_own_is_a_plain_tally_error():
    failure = error_from_status(status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message="boom"))
    assert type(failure) is TallyError
    assert failure.code == grpc.StatusCode.INTERNAL


# --- units ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "text"), [(3, "3"), ("0.25", "0.25"), (Decimal("1E+3"), "1000"), (-2, "-2")]
)
def test_units_are_sent_as_exact_decimal_strings(units, text):
    assert decimal_string(units, "units") == text


@pytest.mark.parametrize("units", [0.5, 1.0, True, None, [1]])
def test_units_other_than_int_str_or_decimal_are_a_type_error(units):
    with pytest.raises(TypeError, match="units must be an int, a str or a Decimal"):
        decimal_string(units, "units")


@pytest.mark.parametrize("units", ["three", "NaN", "Infinity", ""])
def test_units_that_are_not_a_finite_number_are_refused_before_sending(units):
    with pytest.raises(ValueError, match="units"):
        decimal_string(units, "units")


def test_a_float_price_is_refused_by_record_usage_before_any_call():
    rpc = ScriptedRpc([], reply=lambda request: usage_pb2.CreateUsageRecordResponse())
    client = Client(TARGET)
    stub(client, "_usage", CreateUsageRecord=rpc)
    with pytest.raises(TypeError, match="price_per_unit"):
        client.record_usage("acct_1", "api_calls", 1, price_per_unit=0.1)  # type: ignore[arg-type]
    client.close()
    assert rpc.requests == []


# --- the clients' retry loop -------------------------------------------------------------------------------


@pytest.fixture
def waits():
    return []


@pytest.fixture
def sync_client(waits):
    client = Client(TARGET, retry=RetryPolicy(max_attempts=4, jitter=0.0), default_timeout=2.0)
    client.sleep = waits.append
    yield client
    client.close()


def echo_account(request):
    name = request.account.display_name if "account" in request.DESCRIPTOR.fields_by_name else ""
    return account_pb2.Account(id="acct_1", display_name=name)


def test_create_account_retries_carry_the_request_id_made_once(sync_client, waits):
    rpc = ScriptedRpc(
        [FakeRpcError(grpc.StatusCode.UNAVAILABLE), FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)],
        reply=echo_account,
    )
    stub(sync_client, "_accounts", CreateAccount=rpc)
    account = sync_client.create_account(display_name="Acme", email="a@example.com", currency_code="USD")
    assert account.display_name == "Acme"
    assert len(rpc.requests) == 3
    ids = {request.request_id for request in rpc.requests}
    assert len(ids) == 1
    assert next(iter(ids)).startswith("req_")
    assert waits == [pytest.approx(0.1), pytest.approx(0.2)]
    assert rpc.timeouts == [pytest.approx(2.0, abs=0.5)] * 3


def test_a_given_request_id_is_sent_as_given(sync_client):
    rpc = ScriptedRpc([FakeRpcError(grpc.StatusCode.ABORTED)], reply=echo_account)
    stub(sync_client, "_accounts", CreateAccount=rpc)
    sync_client.create_account(display_name="Acme", request_id="my-key-1")
    assert [request.request_id for request in rpc.requests] == ["my-key-1", "my-key-1"]


def test_a_read_past_its_deadline_is_not_retried(sync_client, waits):
    rpc = ScriptedRpc([FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)], reply=echo_account)
    stub(sync_client, "_accounts", GetAccount=rpc)
    with pytest.raises(DeadlineExceeded):
        sync_client.get_account("acct_1")
    assert (len(rpc.requests), waits) == (1, [])


def test_without_generated_ids_a_create_past_its_deadline_surfaces():
    client = Client(TARGET, generate_ids=False)
    rpc = ScriptedRpc([FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)], reply=echo_account)
    stub(client, "_accounts", CreateAccount=rpc)
    with pytest.raises(DeadlineExceeded):
        client.create_account(display_name="Acme")
    client.close()
    assert [request.request_id for request in rpc.requests] == [""]


@pytest.mark.parametrize("code", NEVER_RETRIED)
def test_the_client_raises_never_retried_codes_at_once(sync_client, waits, code):
    rpc = ScriptedRpc([FakeRpcError(code)], reply=echo_account)
    stub(sync_client, "_accounts", CreateAccount=rpc)
    with pytest.raises(TallyError) as raised:
        sync_client.create_account(display_name="Acme")
    assert raised.value.code == code
    assert (len(rpc.requests), waits) == (1, [])


def test_the_client_raises_the_last_error_once_the_attempts_are_spent(sync_client, waits):
    rpc = ScriptedRpc([FakeRpcError(grpc.StatusCode.UNAVAILABLE)] * 10, reply=echo_account)
    stub(sync_client, "_accounts", GetAccount=rpc)
    with pytest.raises(Unavailable):
        sync_client.get_account("acct_1")
    assert len(rpc.requests) == 4
    assert len(waits) == 3


def test_rate_limited_calls_wait_the_servers_delay_and_log_each_retry(sync_client, waits, caplog):
    rpc = ScriptedRpc([rate_limited(0.75)], reply=echo_account)
    stub(sync_client, "_accounts", GetAccount=rpc)
    with caplog.at_level(logging.WARNING, logger="tally_client"):
        sync_client.get_account("acct_1")
    assert waits == [0.75]
    (record,) = caplog.records
    assert (record.tally_method, record.tally_code, record.tally_attempt) == (
        "GetAccount",
        "RESOURCE_EXHAUSTED",
        1,
    )


def test_record_usage_retries_carry_the_event_id_made_once(sync_client):
    def reply(request):
        return usage_pb2.CreateUsageRecordResponse(usage_record=request.usage_record)

    rpc = ScriptedRpc([FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)] * 2, reply=reply)
    stub(sync_client, "_usage", CreateUsageRecord=rpc)
    result = sync_client.record_usage("acct_1", "api_calls", "2.5", properties={"region": "eu"})
    event_ids = {request.usage_record.event_id for request in rpc.requests}
    assert len(rpc.requests) == 3
    assert event_ids == {result.record.event_id}
    assert result.record.units_consumed.value == "2.5"
    assert (result.replay, result.event_id_assigned) == (False, False)


def test_a_batch_reports_each_events_outcome_without_raising(sync_client):
    refused = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="unknown service")
    refused.details.add().Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="usage_record.service", description="unknown"
                )
            ]
        )
    )

    def reply(request):
        first, _ = request.requests
        return usage_pb2.BatchCreateUsageRecordsResponse(
            results=[
                usage_pb2.UsageRecordResult(
                    outcome=usage_pb2.UsageRecordResult.OUTCOME_STORED,
                    usage_record=first.usage_record,
                    index=0,
                ),
                usage_pb2.UsageRecordResult(
                    outcome=usage_pb2.UsageRecordResult.OUTCOME_FAILED, error=refused, index=1
                ),
            ],
            stored_count=1,
            failed_count=1,
        )

    rpc = ScriptedRpc([FakeRpcError(grpc.StatusCode.UNAVAILABLE)], reply=reply)
    stub(sync_client, "_usage", BatchCreateUsageRecords=rpc)
    result = sync_client.record_usage_batch(
        [UsageEvent("acct_1", "api_calls", 1), UsageEvent("acct_1", "nope", 2, event_id="mine")]
    )
    first, second = rpc.requests
    assert [r.usage_record.event_id for r in first.requests] == [
        r.usage_record.event_id for r in second.requests
    ]
    assert first.requests[1].usage_record.event_id == "mine"
    assert (result.stored_count, result.failed_count) == (1, 1)
    (failure,) = result.failures
    assert failure.index == 1
    assert isinstance(failure.error, InvalidArgument)
    assert failure.error.field_violations[0].field == "usage_record.service"
    with pytest.raises(InvalidArgument):
        result.raise_for_failures()


async def test_the_async_client_follows_the_same_rules():
    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    client = AsyncClient(TARGET, retry=RetryPolicy(jitter=0.0))
    client.sleep = record
    create = AsyncScriptedRpc([FakeRpcError(grpc.StatusCode.ABORTED), rate_limited(0.5)], reply=echo_account)
    get = AsyncScriptedRpc([FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)], reply=echo_account)
    conflict = AsyncScriptedRpc([FakeRpcError(grpc.StatusCode.ALREADY_EXISTS)], reply=echo_account)
    stub(client, "_accounts", CreateAccount=create, GetAccount=get)
    try:
        await client.create_account(display_name="Acme")
        assert len({request.request_id for request in create.requests}) == 1
        assert waits == [pytest.approx(0.1), 0.5]
        with pytest.raises(DeadlineExceeded):
            await client.get_account("acct_1")
        stub(client, "_accounts", CreateAccount=conflict)
        with pytest.raises(AlreadyExists):
            await client.create_account(display_name="Acme")
        assert len(get.requests) == len(conflict.requests) == 1
    finally:
        await client.close()


# --- tokens -------------------------------------------------------------------------------------------


def test_a_service_account_token_is_renewed_before_it_expires():
    clock = FakeMonotonic()
    issued: list[str] = []

    def issue():
        issued.append(f"token-{len(issued) + 1}")
        return auth_pb2.TokenResponse(access_token=issued[-1], expires_in=600)

    tokens = ServiceAccountTokens(issue=issue, clock=clock)
    assert tokens() == "token-1"
    clock.advance(470)  # 80% of 600 s is 480
    assert tokens() == "token-1"
    clock.advance(20)
    assert tokens() == "token-2"
    tokens.invalidate()
    assert tokens() == "token-3"


def test_a_short_lived_token_is_renewed_well_before_its_end():
    token = CachedToken.issued(auth_pb2.TokenResponse(access_token="t", expires_in=100), now=0.0)
    assert token.renew_at == pytest.approx(40.0)


def test_the_service_account_client_sends_the_issued_token_and_renews_it_when_refused():
    client = Client(TARGET, service_account=("svc_1", "secret"), retry=RetryPolicy(jitter=0.0))
    issued = ScriptedRpc(
        [], reply=lambda request: auth_pb2.TokenResponse(access_token="tok", expires_in=3600)
    )
    seen: list[object] = []

    def get(request, *, timeout=None, metadata=()):
        seen.append(metadata)
        if len(seen) == 1:
            raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED)
        return account_pb2.Account(id=request.id)

    stub(client, "_auth", IssueServiceToken=issued)
    stub(client, "_accounts", GetAccount=get)
    client.get_account("acct_1")
    client.close()
    assert [(r.client_id, r.client_secret) for r in issued.requests] == [("svc_1", "secret")] * 2
    assert seen == [(("authorization", "Bearer tok"),)] * 2


def test_at_most_one_way_to_authenticate():
    with pytest.raises(ValueError, match="at most one"):
        Config(target=TARGET, token="t", service_account=("svc", "secret"))


# --- channels -----------------------------------------------------------------------------------------


def test_clients_of_one_target_share_a_channel_and_the_last_close_closes_it():
    before = shared_channel_count()[0]
    first, second = Client(TARGET), Client(TARGET, token="other-token")
    other_target = Client("127.0.0.1:10")
    own = Client(TARGET, share_channel=False)
    assert first._lease.channel is second._lease.channel
    assert other_target._lease.channel is not first._lease.channel
    assert own._lease.channel is not first._lease.channel
    assert shared_channel_count()[0] == before + 2
    first.close()
    first.close()  # twice is once
    assert shared_channel_count()[0] == before + 2
    second.close()
    other_target.close()
    own.close()
    assert shared_channel_count()[0] == before


async def test_async_clients_share_a_channel_within_a_loop():
    first, second = AsyncClient(TARGET), AsyncClient(TARGET)
    assert first._lease.channel is second._lease.channel
    await first.close()
    await second.close()
    assert shared_channel_count()[1] == 0


def test_a_stream_event_without_an_id_leaves_the_id_to_the_server():
    request = usage_request(UsageEvent("acct_1", "api_calls", 1), generate_id=False)
    assert request.usage_record.event_id == ""


def test_not_found_is_a_tally_error():
    assert issubclass(NotFound, TallyError)
    assert asyncio.iscoroutinefunction(AsyncClient.get_account)
