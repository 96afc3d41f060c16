"""Whose rate-limit bucket an anonymous call is charged to, through the real server and gateways.

A process on the server's host cannot pick its bucket by sending `x-forwarded-for`; only the
gateway's proof makes the server believe a forwarded client (core.forwarding). REST callers
are keyed by their own address, whichever gateway they come through. Loopback has all of
127.0.0.0/8, so distinct callers are distinct local addresses (127.0.0.2, 127.0.0.3, ...).
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from app.gateway_server import StandaloneGateway
from app.server import App
from core.forwarding import GATEWAY_PROOF, GatewayProof
from core.settings import Settings
from tally.account.v1 import auth_pb2, auth_pb2_grpc
from tests.support import JWT_SECRET, TEST_SECRET, details, failing, serving

AUTH_BURST = 10  # the default "auth" limit: burst 10, 1 per second
LOGIN = {"email": "nobody@example.com", "password": "wrong password, surely"}
GATEWAY_SECRET = "a-shared-gateway-secret-0123456789abcdef"

Serve = Callable[..., AbstractAsyncContextManager[App]]


@pytest.fixture
def serve(tmp_path: Path) -> Serve:
    """The real server on embedded SQLite (the buckets do not depend on the database)."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[App]:
        settings = Settings(
            data_dir=tmp_path,
            secret_key=TEST_SECRET,
            jwt_hs256_secret=JWT_SECRET,
            grpc_addr="127.0.0.1:0",
            http_addr="127.0.0.1:0",
            **overrides,
        )
        async with serving(settings) as app:
            yield app

    return start


async def grpc_login(app: App, metadata: list[tuple[str, str]]) -> str:
    """A failed login's status code name: UNAUTHENTICATED if it got past the limiter."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        error = await failing(stub.Login(auth_pb2.LoginRequest(**LOGIN), metadata=metadata))
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert details(error).retry is not None
    return str(error.code().name)


async def rest_login(port: int, source: str, headers: dict[str, str] | None = None) -> int:
    """POST /v1/auth:login from the local address `source`; the HTTP status."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"http://127.0.0.1:{port}/v1/auth:login"
        async with session.post(url, json=LOGIN, headers=headers or {}) as response:
            await response.read()
            return response.status


async def test_a_loopback_client_cannot_choose_its_bucket(serve: Serve) -> None:
    async with serve() as app:
        forged = GatewayProof(secrets.token_bytes(32))
        codes: Counter[str] = Counter()
        for attempt in range(30):
            client = f"198.51.100.{attempt + 1}"
            codes[
                await grpc_login(app, [("x-forwarded-for", client), (GATEWAY_PROOF, forged.sign(client))])
            ] += 1
    assert codes == {"UNAUTHENTICATED": AUTH_BURST, "RESOURCE_EXHAUSTED": 30 - AUTH_BURST}


async def test_rest_callers_are_keyed_by_their_own_address(serve: Serve) -> None:
    async with serve() as app:
        first = [await rest_login(app.http_port, "127.0.0.2") for _ in range(AUTH_BURST + 2)]
        assert first == [401] * AUTH_BURST + [429] * 2
        # Another REST client has its own bucket, and so does the gateway's own address: the
        # gateway's calls were charged to the client it forwarded, not to itself.
        assert await rest_login(app.http_port, "127.0.0.3") == 401
        assert await grpc_login(app, []) == "UNAUTHENTICATED"


async def test_a_rest_caller_cannot_send_the_proof_or_pick_a_client(serve: Serve) -> None:
    async with serve() as app:
        proof = {"Grpc-Metadata-X-Tally-Gateway-Proof": "0" * 64}
        assert await rest_login(app.http_port, "127.0.0.2", proof) == 400
        # No trusted proxies configured: X-Forwarded-For from a caller changes nothing.
        statuses = [
            await rest_login(app.http_port, "127.0.0.2", {"X-Forwarded-For": f"198.51.100.{n}"})
            for n in range(AUTH_BURST + 1)
        ]
        assert statuses == [401] * AUTH_BURST + [429]


async def test_behind_a_trusted_proxy_the_forwarded_client_is_keyed(serve: Serve) -> None:
    async with serve(trusted_proxies=["127.0.0.2/32"]) as app:
        # The proxy at 127.0.0.2 appended each client's address; what the client wrote is ignored.
        def via_proxy(client: str) -> dict[str, str]:
            return {"X-Forwarded-For": f"6.6.6.6, {client}"}

        first = [await rest_login(app.http_port, "127.0.0.2", via_proxy("203.0.113.1")) for _ in range(11)]
        assert first == [401] * AUTH_BURST + [429]
        assert await rest_login(app.http_port, "127.0.0.2", via_proxy("203.0.113.2")) == 401
        # 127.0.0.3 is no trusted proxy: its header is not believed, it is keyed as itself.
        untrusted = [
            await rest_login(app.http_port, "127.0.0.3", via_proxy("203.0.113.3")) for _ in range(11)
        ]
        assert untrusted == [401] * AUTH_BURST + [429]


@pytest.mark.parametrize("shared", [True, False], ids=["shared-secret", "no-secret"])
async def test_the_standalone_gateway_forwards_clients_only_with_the_shared_secret(
    serve: Serve, shared: bool
) -> None:
    secret = {"gateway_secret": GATEWAY_SECRET} if shared else {}
    async with serve(**secret) as app:
        gateway = StandaloneGateway(app.settings, f"127.0.0.1:{app.port}", health_ttl=0)
        await gateway.start()
        try:
            first = [await rest_login(gateway.port, "127.0.0.2") for _ in range(AUTH_BURST + 1)]
            assert first == [401] * AUTH_BURST + [429]
            other = await rest_login(gateway.port, "127.0.0.3")
        finally:
            await gateway.stop()
    # With the secret the server believes the gateway about its clients; without it every REST
    # caller of that gateway shares the gateway's (loopback) bucket.
    assert other == (401 if shared else 429)
