"""Webhook targets at delivery time: the address connected to is the address checked.

DNS rebinding: a name answers a public address when an endpoint is created and 127.0.0.1 when
a delivery connects. The deliverer resolves through targets.PublicOnlyResolver, which checks the
addresses the connection will use, so a rebound name is refused at connect time.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from billing_svc.webhooks import targets
from billing_svc.webhooks.delivery import WebhookDeliverer
from core.clock import FrozenClock
from core.sealing import Sealer

PUBLIC = "93.184.215.14"


def _result(host: str, address: str) -> ResolveResult:
    return ResolveResult(hostname=host, host=address, port=80, family=socket.AF_INET, proto=0, flags=0)


class Rebinding(AbstractResolver):
    """Answers each lookup with the next address of its list (the last one from then on)."""

    def __init__(self, *answers: str) -> None:
        self._answers = list(answers)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        return [_result(host, address)]

    async def close(self) -> None:
        return None


async def test_a_name_rebound_to_loopback_is_refused_on_the_second_lookup() -> None:
    resolver = targets.PublicOnlyResolver(Rebinding(PUBLIC, "127.0.0.1"))
    first = await resolver.resolve("hooks.example.com", 443)
    assert [r["host"] for r in first] == [PUBLIC]
    with pytest.raises(targets.NonPublicTarget, match=r"example\.com resolves to a non-public"):
        await resolver.resolve("hooks.example.com", 443)


@pytest.mark.parametrize("address", ["10.1.2.3", "169.254.169.254", "::1", "fd00::1", "100.64.0.1"])
async def test_any_non_public_answer_refuses_the_name(address: str) -> None:
    class Mixed(Rebinding):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            return [_result(host, PUBLIC), _result(host, address)]

    with pytest.raises(targets.NonPublicTarget):
        await targets.PublicOnlyResolver(Mixed(PUBLIC)).resolve("hooks.example.com")


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:8080/hook", True),
        ("http://[::1]/hook", True),
        ("https://192.168.0.7/hook", True),
        (f"https://{PUBLIC}/hook", False),
        ("https://hooks.example.com/hook", False),  # a name: checked by the resolver instead
    ],
)
def test_literal_addresses_are_checked_before_connecting(url: str, refused: bool) -> None:
    if refused:
        with pytest.raises(targets.NonPublicTarget):
            targets.refuse_literal(url)
    else:
        targets.refuse_literal(url)


@dataclass
class _Delivery:
    event_id: str = "oev_1"
    event_type: str = "invoice.created"
    event_time: datetime = datetime(2026, 12, 1, tzinfo=UTC)
    payload: Any = None


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[int, list[str]]]:
    got: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(await request.text())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = cast(Any, site._server).sockets[0].getsockname()[1]
    try:
        yield port, got
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("allow_private", [False, True])
async def test_the_deliverer_connects_only_where_it_may(
    receiver: tuple[int, list[str]], allow_private: bool
) -> None:
    port, got = receiver
    deliverer = WebhookDeliverer(
        cast(Any, None),
        FrozenClock(datetime(2026, 12, 1, tzinfo=UTC)),
        Sealer(b"k" * 32, "webhook-secret"),
        allow_private_targets=allow_private,
    )
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    async with deliverer._http() as http:
        # "localhost" is a name: only the resolver can see that it means 127.0.0.1.
        status, error, _ = await deliverer._post(http, f"http://localhost:{port}/hook", secret, _Delivery())
    if allow_private:
        assert (status, error, len(got)) == (204, "", 1)
    else:
        assert status == 0
        assert error == "refused target: localhost resolves to a non-public address"
        assert got == []
