"""The REST gateway's streaming paths, over real HTTP and a real in-process gRPC server.

No Tally RPC streams yet, so tests/protos/tally_test/streaming/v1/streaming.proto is compiled
here (grpc_tools.protoc into tmp) and served by a plain servicer without interceptors.

What the gateway answers for a server-streaming method (gateway/app.py `Gateway._stream`):

* NDJSON (`Content-Type: application/x-ndjson`): one `{"result": <message JSON>}` per line;
* with `Accept: text/event-stream`, SSE: one `data: {"result": ...}` event per message;
* an error after the first message: status 200 already sent, so a last line
  `{"error": <google.rpc.Status JSON>}` (SSE: `event: error` + `data: {"error": ...}`);
* an error before the first message: a plain JSON error answer with the mapped HTTP status.

What it answers for a client-streaming method (`Sum`, `POST /v1/sum`): the body is NDJSON, one
request message per line (blank lines ignored), streamed to the call; the one reply is plain JSON,
errors (the gateway's, naming the line, or the server's) plain JSON errors. A bidirectional method
(`RunningSum`) takes the same body and answers like a server-streaming one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway.app import gateway_routes
from tests.protoc import Generated, compiled

PROTO_FILE = "tally_test/streaming/v1/streaming.proto"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    """streaming.proto compiled with grpc_tools.protoc and imported; sys.path and sys.modules restored."""
    with compiled(PROTO_FILE, tmp_path_factory.mktemp("streaming_proto")) as modules:
        yield modules


def _not_found_status(after: int) -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="COUNT_EXHAUSTED", domain="tally.test"))
    return status_pb2.Status(
        code=grpc.StatusCode.NOT_FOUND.value[0], message=f"gone after {after}", details=[info]
    )


def _negative_status(position: int) -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="NEGATIVE_VALUE", domain="tally.test"))
    return status_pb2.Status(
        code=grpc.StatusCode.OUT_OF_RANGE.value[0],
        message=f"value {position} is negative",
        details=[info],
    )


def make_servicer(pb2: ModuleType, pb2_grpc: ModuleType, ended: asyncio.Queue[str]) -> Any:
    """Count puts how each call ended on `ended`: 'done', 'aborted' or 'cancelled'."""

    class Servicer(pb2_grpc.StreamingTestServiceServicer):  # type: ignore[name-defined]
        async def Count(
            self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            outcome = "aborted"
            try:
                async for reply in self._count(request, context):
                    yield reply
                outcome = "done"
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                ended.put_nowait(outcome)

        async def _count(
            self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if request.upto < 0:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "upto must not be negative")
            for value in range(1, request.upto + 1):
                await asyncio.sleep(request.delay_ms / 1000)
                if request.fail_after > 0 and value > request.fail_after:
                    status = _not_found_status(request.fail_after)
                    await context.abort(
                        grpc.StatusCode.NOT_FOUND,
                        status.message,
                        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
                    )
                yield pb2.CountReply(value=value, label=f"#{value}")

        async def Sum(self, request_iterator: AsyncIterator[Any], context: Any) -> Any:
            reply = pb2.SumReply()
            async for running in self._running_sum(request_iterator, context):
                reply = running
            return reply

        async def RunningSum(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for reply in self._running_sum(request_iterator, context):
                yield reply

        async def _running_sum(
            self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            total = count = 0
            async for item in request_iterator:
                if item.value < 0:
                    status = _negative_status(count + 1)
                    await context.abort(
                        grpc.StatusCode.OUT_OF_RANGE,
                        status.message,
                        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
                    )
                total += item.value
                count += 1
                yield pb2.SumReply(total=total, count=count)

    return Servicer()


@dataclass
class Stack:
    http: aiohttp.ClientSession
    grpc_stub: Any
    pb2: ModuleType
    ended: asyncio.Queue[str]
    channel: grpc.aio.Channel
    service: Any


async def serve(routes: list[web.RouteDef]) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def stack(generated: Generated) -> AsyncIterator[Stack]:
    """A gRPC server with the test servicer, the gateway in front of it, and an HTTP client."""
    pb2, pb2_grpc = generated.pb2, generated.pb2_grpc
    ended: asyncio.Queue[str] = asyncio.Queue()
    server = grpc.aio.server()
    pb2_grpc.add_StreamingTestServiceServicer_to_server(make_servicer(pb2, pb2_grpc, ended), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    service = pb2.DESCRIPTOR.services_by_name["StreamingTestService"]
    runner, port = await serve(gateway_routes([service], channel))
    session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}")
    try:
        yield Stack(session, pb2_grpc.StreamingTestServiceStub(channel), pb2, ended, channel, service)
    finally:
        await session.close()
        await runner.cleanup()
        await channel.close()
        await server.stop(None)


def results(values: range) -> list[dict[str, Any]]:
    return [{"result": {"value": v, "label": f"#{v}"}} for v in values]


async def get(stack: Stack, path: str, *, sse: bool = False) -> tuple[int, str, str]:
    headers = {"Accept": SSE} if sse else {}
    async with stack.http.get(path, headers=headers) as response:
        return response.status, response.content_type, await response.text()


def ndjson_lines(text: str) -> list[Any]:
    assert text.endswith("\n"), text
    return [json.loads(line) for line in text.splitlines()]


def sse_events(text: str) -> list[tuple[str, Any]]:
    """(event name, JSON data) per SSE event; the name is 'message' when the event has none."""
    events: list[tuple[str, Any]] = []
    assert text.endswith("\n\n"), text
    for block in text.split("\n\n")[:-1]:
        name, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            else:
                assert field == "data", line
                data.append(value)
        events.append((name, json.loads("\n".join(data))))
    return events


def assert_not_found_error(error: dict[str, Any]) -> None:
    """The google.rpc.Status JSON of the servicer's abort, details decoded."""
    assert error == {
        "code": 5,
        "message": "gone after 2",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "COUNT_EXHAUSTED",
                "domain": "tally.test",
            }
        ],
    }


async def test_the_servicer_streams_over_grpc(stack: Stack) -> None:
    """The fixture itself: the same RPC straight over gRPC."""
    replies = [r.value async for r in stack.grpc_stub.Count(stack.pb2.CountRequest(upto=3))]
    assert replies == [1, 2, 3]


async def test_ndjson_stream(stack: Stack) -> None:
    status, content_type, text = await get(stack, "/v1/count/3")
    assert (status, content_type) == (200, NDJSON), text
    assert ndjson_lines(text) == results(range(1, 4))


async def test_sse_stream(stack: Stack) -> None:
    status, content_type, text = await get(stack, "/v1/count/3", sse=True)
    assert (status, content_type) == (200, SSE), text
    assert sse_events(text) == [("message", r) for r in results(range(1, 4))]


async def test_empty_stream(stack: Stack) -> None:
    status, content_type, text = await get(stack, "/v1/count/0")
    assert (status, content_type, text) == (200, NDJSON, "")
    status, content_type, text = await get(stack, "/v1/count/0", sse=True)
    assert (status, content_type, text) == (200, SSE, "")


async def test_query_parameters_reach_a_streaming_request(stack: Stack) -> None:
    """fail_after from the query string by JSON name and by proto name; both stop the stream."""
    for query in ("failAfter=2", "fail_after=2"):
        status, _, text = await get(stack, f"/v1/count/5?{query}")
        assert status == 200, text
        assert len(ndjson_lines(text)) == 3


async def test_ndjson_error_mid_stream(stack: Stack) -> None:
    status, content_type, text = await get(stack, "/v1/count/5?failAfter=2")
    assert (status, content_type) == (200, NDJSON), text
    *items, last = ndjson_lines(text)
    assert items == results(range(1, 3))
    assert list(last) == ["error"]
    assert_not_found_error(last["error"])


async def test_sse_error_mid_stream(stack: Stack) -> None:
    status, content_type, text = await get(stack, "/v1/count/5?failAfter=2", sse=True)
    assert (status, content_type) == (200, SSE), text
    *items, (name, last) = sse_events(text)
    assert items == [("message", r) for r in results(range(1, 3))]
    assert name == "error"
    assert list(last) == ["error"]
    assert_not_found_error(last["error"])


@pytest.mark.parametrize("sse", [False, True], ids=["ndjson", "sse"])
async def test_error_before_the_first_message_is_a_plain_error(stack: Stack, sse: bool) -> None:
    async with stack.http.get("/v1/count/-1", headers={"Accept": SSE} if sse else {}) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        assert response.headers.get("X-Request-Id")
        body = await response.json()
    # The server's abort carries no details: the gateway adds the ErrorInfo every error has.
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "INVALID_ARGUMENT",
        "domain": "tally",
    }
    assert body == {"code": 3, "message": "upto must not be negative", "details": [info]}


async def test_a_bad_request_is_refused_before_the_call(stack: Stack) -> None:
    async with stack.http.get("/v1/count/3?nope=1") as response:
        assert response.status == 400
        body = await response.json()
    assert body["code"] == 3 and "nope" in body["message"]


async def test_a_deadline_mid_stream_is_a_last_error(stack: Stack) -> None:
    """Grpc-Timeout is the whole stream's deadline: replies until then, then DEADLINE_EXCEEDED (4)."""
    headers = {"Grpc-Timeout": "500m"}
    async with stack.http.get("/v1/count/100?delayMs=50", headers=headers) as response:
        assert response.status == 200
        text = await response.text()
    *items, last = ndjson_lines(text)
    assert 1 <= len(items) < 100
    assert items == results(range(1, len(items) + 1))
    assert last["error"]["code"] == 4


async def test_a_client_that_goes_away_cancels_the_call(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing the HTTP connection mid-stream cancels the gRPC call instead of leaving it running.

    (Before: the next write raised ClientConnectionResetError out of the handler, logged as an
    aiohttp.server ERROR, and the call ran on until garbage collection.)
    """
    async with stack.http.get("/v1/count/1000?delayMs=20") as response:
        assert response.status == 200
        first = json.loads(await response.content.readline())
        assert first == results(range(1, 2))[0]
        response.close()  # drops the connection
    assert await asyncio.wait_for(stack.ended.get(), timeout=5) == "cancelled"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def ndjson(*items: Any) -> str:
    return "".join(json.dumps(item) + "\n" for item in items)


async def post(
    stack: Stack, path: str, body: str | bytes, *, content_type: str = NDJSON
) -> tuple[int, str, Any]:
    """Status, content type and the parsed body (JSON, or the text of a stream)."""
    async with stack.http.post(path, data=body, headers={"Content-Type": content_type}) as response:
        assert response.headers.get("X-Request-Id")
        if response.content_type == "application/json":
            return response.status, response.content_type, await response.json()
        return response.status, response.content_type, await response.text()


def assert_bad_request(error: dict[str, Any], *, reason: str, field: str) -> None:
    assert error["code"] == 3, error
    info, *rest = error["details"]
    assert info["reason"] == reason, error
    if rest:
        assert rest[0]["fieldViolations"][0]["field"] == field, error


async def test_client_streaming_over_grpc(stack: Stack) -> None:
    """The fixture itself: Sum straight over gRPC."""
    reply = await stack.grpc_stub.Sum(iter([stack.pb2.SumRequest(value=v) for v in (1, 2, 3)]))
    assert (reply.total, reply.count) == (6, 3)


async def test_client_streaming_sums_ndjson_lines(stack: Stack) -> None:
    """int64 is a JSON string in the proto3 JSON mapping, so the total is "6"."""
    status, content_type, reply = await post(
        stack, "/v1/sum", ndjson({"value": 1}, {"value": 2}, {"value": "3"})
    )
    assert (status, content_type) == (200, "application/json"), reply
    assert reply == {"total": "6", "count": 3}


async def test_client_streaming_ignores_blank_lines(stack: Stack) -> None:
    """Blank and whitespace-only lines are skipped; CRLF, no final newline and application/json are fine."""
    body = '\n{"value": 1}\r\n\n   \n{"value": 2}\r\n\t\n{"value": 3}'
    status, _, reply = await post(stack, "/v1/sum", body, content_type="application/json")
    assert status == 200, reply
    assert reply == {"total": "6", "count": 3}


async def test_client_streaming_path_variables_go_into_every_message(stack: Stack) -> None:
    status, _, reply = await post(stack, "/v1/sum/5", ndjson({}, {"value": 5}, {}))
    assert status == 200, reply
    assert reply == {"total": "15", "count": 3}
    status, _, error = await post(stack, "/v1/sum/5", ndjson({}, {"value": 4}))
    assert status == 400, error
    assert error["message"].startswith("line 2: value: ")
    assert_bad_request(error, reason="PATH_CONFLICT", field="value")


async def test_client_streaming_malformed_line_names_it(stack: Stack) -> None:
    status, _, error = await post(stack, "/v1/sum", '{"value": 1}\n{"value": \n{"value": 3}\n')
    assert status == 400, error
    assert error["message"].startswith("line 2: malformed JSON: ")
    assert_bad_request(error, reason="INVALID_ARGUMENT", field="line 2")
    status, _, error = await post(stack, "/v1/sum", b'{"value": 1}\n\n{"value": "\xff"}\n')
    assert status == 400, error
    assert error["message"] == "line 3: not UTF-8 text"


async def test_client_streaming_unknown_field_names_it_and_the_line(stack: Stack) -> None:
    status, _, error = await post(
        stack, "/v1/sum", ndjson({"value": 1}, {"value": 2}, {"value": 3, "nope": 1})
    )
    assert status == 400, error
    assert error["message"] == "line 3: unknown fields in the body: nope"
    assert_bad_request(error, reason="UNKNOWN_FIELD", field="nope")
    assert error["details"][1]["fieldViolations"][0]["description"] == "line 3: unknown field"


async def test_client_streaming_bad_value_names_the_line(stack: Stack) -> None:
    status, _, error = await post(stack, "/v1/sum", ndjson({"value": 1}, {"value": "x"}))
    assert status == 400, error
    assert error["message"].startswith("line 2: value: ")
    status, _, error = await post(stack, "/v1/sum", ndjson({"value": 1}, [1]))
    assert status == 400, error
    assert error["message"] == "line 2: body: expected a JSON object"


@pytest.mark.parametrize("body", ["", "\n", " \n\r\n\t"], ids=["empty", "newline", "blank"])
async def test_client_streaming_without_messages_is_a_stream_of_none(stack: Stack, body: str) -> None:
    """gRPC allows a stream of no messages: the call runs (and, on Tally, checks the token first)."""
    status, _, reply = await post(stack, "/v1/sum", body)
    assert status == 200, reply
    assert reply == {}


async def test_client_streaming_query_parameters_follow_the_body_rules(stack: Stack) -> None:
    """`body: "*"` binds every field, so a query parameter is refused (once, not per line)."""
    status, _, error = await post(stack, "/v1/sum?value=2", ndjson({"value": 1}))
    assert status == 400, error
    assert error["message"] == "value: is bound by the URL path or the body; not a query parameter"


async def test_client_streaming_body_over_the_limit_is_413(stack: Stack) -> None:
    runner, port = await serve(gateway_routes([stack.service], stack.channel, max_body_bytes=64))
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as session:
            small = ndjson({"value": 1}, {"value": 2})
            async with session.post("/v1/sum", data=small, headers={"Content-Type": NDJSON}) as response:
                assert response.status == 200
                assert await response.json() == {"total": "3", "count": 2}
            large = ndjson(*[{"value": v} for v in range(20)])
            assert len(large) > 64

            async def chunked() -> AsyncIterator[bytes]:
                yield large.encode()

            for data in (large, chunked()):  # with a Content-Length, and without (chunked)
                async with session.post("/v1/sum", data=data, headers={"Content-Type": NDJSON}) as response:
                    assert response.status == 413
                    error = await response.json()
                assert error["message"] == "request body is larger than 64 bytes"
                assert error["details"][0]["reason"] == "BODY_TOO_LARGE"
    finally:
        await runner.cleanup()


async def test_client_streaming_server_error_is_mapped(stack: Stack) -> None:
    status, content_type, error = await post(
        stack, "/v1/sum", ndjson({"value": 1}, {"value": -2}, {"value": 3})
    )
    assert (status, content_type) == (400, "application/json"), error
    assert error == {
        "code": 11,
        "message": "value 2 is negative",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "NEGATIVE_VALUE",
                "domain": "tally.test",
            }
        ],
    }


async def test_bidirectional_streaming_answers_a_stream(stack: Stack) -> None:
    status, content_type, text = await post(stack, "/v1/sum:running", ndjson({"value": 1}, {"value": 2}, {}))
    assert (status, content_type) == (200, NDJSON), text
    assert ndjson_lines(text) == [
        {"result": {"total": "1", "count": 1}},
        {"result": {"total": "3", "count": 2}},
        {"result": {"total": "3", "count": 3}},
    ]
    status, content_type, text = await post(stack, "/v1/sum:running", ndjson({"value": 1}, {"value": -1}))
    assert (status, content_type) == (200, NDJSON), text
    first, last = ndjson_lines(text)
    assert first == {"result": {"total": "1", "count": 1}}
    assert last["error"]["code"] == 11 and last["error"]["message"] == "value 2 is negative"
    status, _, error = await post(stack, "/v1/sum:running", ndjson({"value": -1}))
    assert status == 400 and error["code"] == 11, error


async def test_client_streaming_is_documented(stack: Stack) -> None:
    async with stack.http.get("/openapi.json") as response:
        assert response.status == 200
        doc = await response.json()
    body = doc["paths"]["/v1/sum"]["post"]["requestBody"]
    assert list(body["content"]) == [NDJSON, "application/json"]  # JSON: one object, one message
    assert body["content"][NDJSON]["schema"] == {
        "$ref": "#/components/schemas/tally_test.streaming.v1.SumRequest"
    }
    assert "One JSON object per line" in body["description"]
    assert "text/event-stream" in doc["paths"]["/v1/sum:running"]["post"]["responses"]["200"]["content"]
