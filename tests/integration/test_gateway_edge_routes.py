"""Two grpc-gateway conventions over real HTTP, with a test-only service (no Tally RPC has them yet):
a template whose first segment carries the verb (`/v1:batchEcho`, `/edge:describe`) and map fields
set from the query string (`labels[team]=core`, `inner.tags[k]=v`).

tests/protos/tally_test/edge/v1/edge.proto is compiled here and served by an echo servicer
behind app.http.HttpServer, as `tally serve` serves the gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import grpc
import pytest

from app.http import HttpServer
from core.metrics import Metrics
from gateway.app import gateway_routes
from tests.protoc import Generated, compiled

PROTO_FILE = "tally_test/edge/v1/edge.proto"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    with compiled(PROTO_FILE, tmp_path_factory.mktemp("edge_proto")) as modules:
        yield modules


@pytest.fixture
async def http(generated: Generated) -> AsyncIterator[aiohttp.ClientSession]:
    class Echo(generated.pb2_grpc.EdgeTestServiceServicer):  # type: ignore[name-defined]
        async def Echo(self, request: Any, context: Any) -> Any:
            return request

    server = grpc.aio.server()
    generated.pb2_grpc.add_EdgeTestServiceServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    service = generated.pb2.DESCRIPTOR.services_by_name["EdgeTestService"]
    front = HttpServer("127.0.0.1:0", metrics=Metrics(), routes=gateway_routes([service], channel))
    await front.start()
    session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{front.port}")
    try:
        yield session
    finally:
        await session.close()
        await front.stop()
        await channel.close()
        await server.stop(None)


async def call(http: aiohttp.ClientSession, method: str, path: str, expect: int, **kwargs: Any) -> Any:
    async with http.request(method, path, **kwargs) as response:
        assert response.status == expect, (method, path, response.status, await response.text())
        assert response.content_type == "application/json"
        assert response.headers.get("X-Request-Id")
        return await response.json()


def violation(body: dict[str, Any]) -> tuple[str, str]:
    bad_request = body["details"][1]
    assert bad_request["@type"] == "type.googleapis.com/google.rpc.BadRequest", body
    found = bad_request["fieldViolations"][0]
    return found["field"], found["description"]


async def test_a_verb_on_the_first_segment_is_mounted(http: aiohttp.ClientSession) -> None:
    assert await call(http, "POST", "/v1:batchEcho", 200, json={"count": 2}) == {"count": 2}
    assert await call(http, "GET", "/edge:describe?count=4", 200) == {"count": 4}
    body = await call(http, "GET", "/edge:other", 404)
    assert body["details"][0]["reason"] == "ROUTE_NOT_FOUND"
    body = await call(http, "GET", "/v1:batchEcho", 405)
    assert body["details"][0]["reason"] == "METHOD_NOT_ALLOWED"


async def test_map_fields_from_the_query(http: aiohttp.ClientSession) -> None:
    query = (
        "labels[team]=core&labels[env]=prod&limits[calls]=9007199254740993&flags[7]=true"
        "&shades[sky]=SHADE_DARK&shades[sea]=1&inner.tags[owner]=ops"
    )
    echoed = await call(http, "GET", f"/v1/echo/3?{query}", 200)
    assert echoed == {
        "count": 3,
        "labels": {"team": "core", "env": "prod"},
        "limits": {"calls": "9007199254740993"},
        "flags": {"7": True},
        "shades": {"sky": "SHADE_DARK", "sea": "SHADE_LIGHT"},
        "inner": {"tags": {"owner": "ops"}},
    }
    # Brackets percent-encoded, as browsers and most clients send them.
    assert await call(http, "GET", "/v1/echo/1?labels%5Bteam%5D=core", 200) == {
        "count": 1,
        "labels": {"team": "core"},
    }


@pytest.mark.parametrize(
    ("path", "field", "description"),
    [
        ("/v1/echo/1?limits[calls]=many", "limits[calls]", "must be an integer from -9223372036854775808"),
        ("/v1/echo/1?flags[seven]=true", "flags[seven]", "the map key must be an integer"),
        ("/v1/echo/1?shades[sky]=SHADE_PINK", "shades[sky]", "must be one of SHADE_UNSPECIFIED, SHADE_LIGHT"),
        ("/v1/echo/1?labels=core", "labels", "set map entries one by one"),
        ("/v1/echo/1?count[x]=1", "count[x]", "is bound by the URL path"),
        ("/v1/echo/abc", "count", "must be an integer from -2147483648 to 2147483647"),
    ],
)
async def test_bad_values_in_the_url_name_the_field(
    http: aiohttp.ClientSession, path: str, field: str, description: str
) -> None:
    body = await call(http, "GET", path, 400)
    found_field, found_description = violation(body)
    assert found_field == field and found_description.startswith(description), body
    assert "invalid literal" not in body["message"]


async def test_a_bad_number_in_the_body_names_the_field(http: aiohttp.ClientSession) -> None:
    body = await call(http, "POST", "/v1:batchEcho", 400, json={"count": "three"})
    assert violation(body) == ("count", "must be an integer from -2147483648 to 2147483647")
    body = await call(http, "POST", "/v1:batchEcho", 400, json={"limits": {"calls": "many"}})
    assert violation(body) == (
        "limits",
        "must be a JSON object, each value an integer from -9223372036854775808 to 9223372036854775807",
    )
