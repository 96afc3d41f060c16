"""Streaming handlers of both styles through the real server and its whole interceptor chain.

grpc.aio runs a server-streaming (or bidirectional) handler either as an async generator or
as a coroutine that sends with `await context.write(msg)` and returns None; grpc's own
Health/Watch is the latter. tests/protos/tally_test/chain/v1/chain.proto is compiled here and
served by `app.server.build()` as one more service module, so tracing, observability, error
mapping, auth and rate limiting all wrap it exactly as they wrap Tally's own services.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from app.modules import MODULES
from app.server import App, build
from core.errors import NotFound
from core.modules import ServiceModule
from core.principal import Role, current_principal
from core.settings import Settings
from tally.account.v1 import auth_pb2, auth_pb2_grpc
from tests.protoc import Generated, compiled
from tests.support import JWT_SECRET, TEST_SECRET, channel_as, cheap_passwords, mint, unpack


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    with compiled("tally_test/chain/v1/chain.proto", tmp_path_factory.mktemp("chain_proto")) as modules:
        yield modules


def make_servicer(generated: Generated) -> Any:
    pb2 = generated.pb2

    def replies(request: Any) -> Iterator[Any]:
        principal = current_principal()
        for value in range(1, request.upto + 1):
            if 0 < request.fail_after < value:
                raise NotFound(f"gone after {request.fail_after}", reason="COUNT_EXHAUSTED")
            yield pb2.CountReply(value=value, subject=principal.subject if principal else "")

    class Servicer(generated.pb2_grpc.ChainTestServiceServicer):  # type: ignore[name-defined]
        async def Write(self, request: Any, context: grpc.aio.ServicerContext) -> None:
            for reply in replies(request):
                await context.write(reply)

        async def Yield(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            for reply in replies(request):
                yield reply

        async def WriteScoped(self, request: Any, context: grpc.aio.ServicerContext) -> None:
            await self.Write(request, context)

        async def Echo(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
            async for request in requests:
                await context.write(pb2.CountReply(value=request.upto))

    return Servicer()


@pytest.fixture
async def chain_app(chain: Generated, tmp_path: Path) -> AsyncIterator[App]:
    """The real server for every Tally module plus the chain test service (embedded SQLite)."""
    module: ServiceModule[Any] = ServiceModule(
        name="chain_test",
        package="tests",
        services=(chain.pb2.DESCRIPTOR.services_by_name["ChainTestService"],),
        models=(),
        build=lambda _platform: make_servicer(chain),
        register=lambda server, servicer: chain.pb2_grpc.add_ChainTestServiceServicer_to_server(
            servicer, server
        ),
    )
    settings = Settings(
        data_dir=tmp_path,
        secret_key=TEST_SECRET,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        jwt_hs256_secret=JWT_SECRET,
    )
    application = await build(settings, passwords=cheap_passwords(), modules=(*MODULES, module))
    await application.start()
    try:
        yield application
    finally:
        await application.stop(grace=0)


def stub(chain: Generated, channel: grpc.aio.Channel) -> Any:
    return chain.pb2_grpc.ChainTestServiceStub(channel)


async def collect(call: Any) -> tuple[list[int], grpc.StatusCode, Any]:
    """The values received before the call ended, its status code, and its google.rpc.Status."""
    values: list[int] = []
    try:
        async for reply in call:
            values.append(reply.value)
    except grpc.aio.AioRpcError as error:
        return values, error.code(), rpc_status.from_call(error)
    return values, await call.code(), None


@pytest.mark.parametrize("method", ["Write", "Yield"])
async def test_both_streaming_styles_pass_the_chain(chain_app: App, chain: Generated, method: str) -> None:
    async with channel_as(chain_app, None) as channel:
        call = getattr(stub(chain, channel), method)(chain.pb2.CountRequest(upto=3))
        assert await collect(call) == ([1, 2, 3], grpc.StatusCode.OK, None)


@pytest.mark.parametrize("method", ["Write", "Yield"])
async def test_an_error_after_some_replies_is_its_real_status(
    chain_app: App, chain: Generated, method: str
) -> None:
    async with channel_as(chain_app, None) as channel:
        call = getattr(stub(chain, channel), method)(chain.pb2.CountRequest(upto=5, fail_after=2))
        values, code, status = await collect(call)
    assert (values, code) == ([1, 2], grpc.StatusCode.NOT_FOUND)
    assert status.message == "gone after 2"
    assert unpack(status).reason == "COUNT_EXHAUSTED"


async def test_auth_refuses_a_writing_handler_with_its_real_status(chain_app: App, chain: Generated) -> None:
    request = chain.pb2.CountRequest(upto=2)
    async with channel_as(chain_app, None) as anonymous:
        values, code, status = await collect(stub(chain, anonymous).WriteScoped(request))
    assert (values, code) == ([], grpc.StatusCode.UNAUTHENTICATED)
    assert unpack(status).reason == "TOKEN_MISSING"

    # Sent per call: grpc.aio applies a channel interceptor to its first matching kind only, so
    # conftest's BearerToken (unary-unary first) never reaches streaming calls.
    token = mint(chain_app, Role.SERVICE, scopes=frozenset({"chain:read"}))
    metadata = (("authorization", f"Bearer {token}"),)
    async with channel_as(chain_app, None) as channel:
        replies = [reply async for reply in stub(chain, channel).WriteScoped(request, metadata=metadata)]
    assert [(r.value, r.subject) for r in replies] == [(1, "test:service"), (2, "test:service")]


async def test_a_bidirectional_writing_handler_passes_the_chain(chain_app: App, chain: Generated) -> None:
    async def requests() -> AsyncIterator[Any]:
        for upto in (7, 8):
            yield chain.pb2.CountRequest(upto=upto)

    async with channel_as(chain_app, None) as channel:
        assert await collect(stub(chain, channel).Echo(requests())) == ([7, 8], grpc.StatusCode.OK, None)


async def test_health_watch_answers_serving_first(app: App) -> None:
    """grpc's Health/Watch writes with `context.write`; through the chain it used to be INTERNAL."""
    async with channel_as(app, None) as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await call.read()
        call.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_new_module_s_scopes_can_be_granted_by_existing(chain_app: App) -> None:
    """Known scopes come from the served policies: the chain module's `chain:read` joins by being served."""
    async with channel_as(chain_app, mint(chain_app)) as channel:
        created = await auth_pb2_grpc.AuthServiceStub(channel).CreateServiceAccount(
            auth_pb2.CreateServiceAccountRequest(
                service_account=auth_pb2.ServiceAccount(display_name="chain reader", scopes=["chain:read"])
            )
        )
    assert list(created.service_account.scopes) == ["chain:read"]
    assert "chain:read" in chain_app.components.identity.known_scopes
