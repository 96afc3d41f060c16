"""StreamUsageRecords through a real in-process server, on each backend, over gRPC and over REST
(an NDJSON body in, NDJSON acknowledgements out). The stream's batching and bounds are unit-tested
in tests/unit/test_usage_stream.py; a server killed mid-stream in tests/e2e/test_usage_stream_crash.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest

from app.server import App
from core.principal import Role
from tally.billing.v1 import usage_pb2, usage_pb2_grpc
from tests.billing_support import new_account
from tests.integration.test_gateway import Gateway, bearer
from tests.integration.test_usage_ingest import event, meter, rows
from tests.support import channel_as, failing, mint


@pytest.fixture
async def account(channel: grpc.aio.Channel) -> str:
    await meter(channel, "api_calls")
    return (await new_account(channel, 1)).id


def requests(
    account: str, count: int, *, producer_id: str = "", first: int = 1, per_message: int = 1
) -> list[usage_pb2.StreamUsageRecordsRequest]:
    """`count` events from sequence `first` on, `per_message` to a message; the first names the producer."""
    return [
        usage_pb2.StreamUsageRecordsRequest(
            producer_id=producer_id if start == first else "",
            records=[
                usage_pb2.SequencedUsageRecord(
                    sequence=sequence, request=event(account, str(sequence % 5 + 1))
                )
                for sequence in range(start, min(start + per_message, first + count))
            ],
        )
        for start in range(first, first + count, per_message)
    ]


async def sent(
    messages: Sequence[usage_pb2.StreamUsageRecordsRequest],
) -> AsyncIterator[usage_pb2.StreamUsageRecordsRequest]:
    for message in messages:
        yield message


async def test_a_stream_stores_every_event_and_a_resend_is_all_replays(app: App, account: str) -> None:
    async with channel_as(app, mint(app)) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        acks = [
            ack
            async for ack in stub.StreamUsageRecords(
                sent(requests(account, 1200, producer_id="p-1", per_message=300))
            )
        ]
        assert acks[-1].acknowledged_sequence == 1200
        assert sum(ack.stored_count for ack in acks) == 1200
        assert not any(ack.failures for ack in acks)
        # The producer "lost" the stream after 1000: it sends 1001.. again, plus 50 new ones.
        resent = requests(account, 250, producer_id="p-1", first=1001, per_message=7)
        again = [ack async for ack in stub.StreamUsageRecords(sent(resent))]
    assert again[-1].acknowledged_sequence == 1250
    assert sum(ack.replay_count for ack in again) == 200
    assert sum(ack.stored_count for ack in again) == 50
    stored = await rows(app)
    assert len(stored) == 1250
    assert {row.event_id for row in stored} == {f"p-1:{n}" for n in range(1, 1251)}


async def test_a_bad_event_is_refused_alone_and_a_bad_sequence_ends_the_stream(
    app: App, account: str
) -> None:
    async with channel_as(app, mint(app)) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        messages = requests(account, 3, producer_id="p-2")
        messages[1].records[0].request.usage_record.service = "no_such_meter"
        messages.append(requests(account, 1, first=2)[0])  # sequence 2 again
        call = stub.StreamUsageRecords(sent(messages))
        acks: list[usage_pb2.StreamUsageRecordsResponse] = []
        error = await failing(_drain(call, acks))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sequence" in (error.details() or "")
    failures = [failure for ack in acks for failure in ack.failures]
    assert [failure.index for failure in failures] == [2]
    assert failures[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert acks[-1].acknowledged_sequence == 3
    assert {row.event_id for row in await rows(app)} == {"p-2:1", "p-2:3"}


async def _drain(call: grpc.aio.StreamStreamCall, acks: list[usage_pb2.StreamUsageRecordsResponse]) -> None:
    async for ack in call:
        acks.append(ack)


async def test_a_customer_cannot_stream_usage(app: App, account: str) -> None:
    async with channel_as(app, mint(app, role=Role.CUSTOMER, account_id=account)) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        # The refusal comes before the server reads anything; a client still writing then races
        # the close (grpc.aio reports that as INTERNAL), so this stream sends nothing.
        error = await failing(_drain(stub.StreamUsageRecords(sent([])), []))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await rows(app) == []


async def test_over_rest_an_ndjson_body_is_a_stream_and_the_answers_are_ndjson(
    app: App, account: str
) -> None:
    lines = [
        json.dumps(
            {
                **({"producerId": "rest-producer"} if start == 1 else {}),
                "records": [
                    {
                        "sequence": n,
                        "request": {
                            "accountId": account,
                            "usageRecord": {"service": "api_calls", "unitsConsumed": {"value": "2"}},
                        },
                    }
                    for n in range(start, start + 5)
                ],
            }
        )
        for start in range(1, 21, 5)
    ]
    async with (
        Gateway(app) as http,
        http.post(
            "/v1/usageRecords:stream",
            data="\n".join(lines) + "\n",
            headers={**bearer(mint(app)), "Content-Type": "application/x-ndjson"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        answers = [json.loads(line) for line in (await response.text()).splitlines() if line.strip()]
    assert all("result" in answer for answer in answers), answers
    assert answers[-1]["result"]["acknowledgedSequence"] == "20"
    assert sum(answer["result"].get("storedCount", 0) for answer in answers) == 20
    assert {row.event_id for row in await rows(app)} == {f"rest-producer:{n}" for n in range(1, 21)}


@pytest.mark.parametrize("producer_id", ["", "p"])
async def test_without_ids_or_producer_every_event_is_refused_by_name(
    app: App, account: str, producer_id: str
) -> None:
    async with channel_as(app, mint(app)) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        acks = [
            ack async for ack in stub.StreamUsageRecords(sent(requests(account, 3, producer_id=producer_id)))
        ]
    failures = [failure for ack in acks for failure in ack.failures]
    if producer_id:
        assert failures == [] and len(await rows(app)) == 3
    else:
        assert [failure.index for failure in failures] == [1, 2, 3]
        assert await rows(app) == []


async def test_an_event_breaking_the_text_policy_is_refused_alone_by_name(app: App, account: str) -> None:
    """The text policy the unary methods get from the interceptor holds for streamed events too:
    a NUL (which PostgreSQL cannot store) or a control character is the event's refusal, naming
    the field, and the events around it are stored."""
    messages = requests(account, 4, producer_id="p-text", per_message=4)
    records = messages[0].records
    records[1].request.usage_record.properties["region"] = "eu\x00west"
    records[2].request.usage_record.event_id = ""
    records[2].request.usage_record.properties["note"] = "line\x1bbreak"
    async with channel_as(app, mint(app)) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        acks = [ack async for ack in stub.StreamUsageRecords(sent(messages))]
    failures = {failure.index: failure for ack in acks for failure in ack.failures}
    assert sorted(failures) == [2, 3]
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert all(failure.error.code == invalid for failure in failures.values())
    assert failures[2].error.message.startswith("usage_record.properties['region']: must not contain control")
    assert failures[3].error.message.startswith("usage_record.properties['note']: must not contain control")
    assert acks[-1].acknowledged_sequence == 4
    assert {row.event_id for row in await rows(app)} == {"p-text:1", "p-text:4"}
