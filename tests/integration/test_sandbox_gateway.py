"""The sandbox adapter against `tally sandbox-gateway` run as a real process: every token, counted
at the gateway."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from billing_svc.payments.gateways.port import (
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    GatewayMisuse,
    RefundRequest,
    RefundStatus,
)
from billing_svc.payments.gateways.sandbox import SandboxGateway
from tests.integration.sandbox_support import (
    CLIENT_TIMEOUT,
    PENDING_DELAY,
    ROOT,
    TIMEOUT_DELAY,
    sandbox_process,
)


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    with sandbox_process("--timeout-delay", str(TIMEOUT_DELAY), "--pending-delay", str(PENDING_DELAY)) as url:
        yield url


@pytest.fixture
async def gateway(sandbox_url: str) -> AsyncIterator[SandboxGateway]:
    adapter = SandboxGateway(sandbox_url, timeout=CLIENT_TIMEOUT)
    yield adapter
    await adapter.close()


def charge_of(token: str, amount: int = 1250, key: str | None = None) -> ChargeRequest:
    return ChargeRequest(key or f"pay_{uuid.uuid4().hex}", amount, "USD", token, "invoice inv_1", {"n": "1"})


async def stats(sandbox_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{sandbox_url}/admin/stats") as response:
        answer: dict[str, Any] = await response.json()
        return answer


async def test_success_is_charged_once_however_often_it_is_repeated(gateway, sandbox_url) -> None:
    request = charge_of("tok_success")
    first = await gateway.charge(request)
    again = await gateway.charge(request)
    assert first.status is ChargeStatus.SUCCEEDED and first.reference is not None
    assert again == first
    assert (await stats(sandbox_url))["charges_executed"][request.idempotency_key] == 1
    assert await gateway.lookup(request.idempotency_key) == first


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("tok_decline", "card_declined"),
        ("tok_insufficient_funds", "insufficient_funds"),
        ("tok_nope", "invalid_payment_method"),
    ],
)
async def test_declines_carry_their_code_and_charge_nothing(gateway, sandbox_url, token, code) -> None:
    before = (await stats(sandbox_url))["total_charged_minor"].get("USD", 0)
    result = await gateway.charge(charge_of(token))
    assert (result.status, result.decline_code) == (ChargeStatus.DECLINED, code)
    assert (await stats(sandbox_url))["total_charged_minor"].get("USD", 0) == before


async def test_a_timeout_is_unknown_and_the_retry_with_the_same_key_finds_the_one_charge(
    gateway, sandbox_url
) -> None:
    request = charge_of("tok_timeout")
    first = await gateway.charge(request)
    assert first.status is ChargeStatus.UNKNOWN
    retried = await gateway.charge(request)
    assert retried.status is ChargeStatus.SUCCEEDED
    assert (await stats(sandbox_url))["charges_executed"][request.idempotency_key] == 1


async def test_a_server_error_fails_and_charges_nothing(gateway, sandbox_url) -> None:
    request = charge_of("tok_error")
    assert (await gateway.charge(request)).status is ChargeStatus.FAILED
    assert request.idempotency_key not in (await stats(sandbox_url))["charges_executed"]
    assert await gateway.lookup(request.idempotency_key) is None


async def test_a_delayed_charge_is_pending_then_succeeds_on_lookup(gateway) -> None:
    request = charge_of("tok_delayed")
    assert (await gateway.charge(request)).status is ChargeStatus.PENDING
    settled = await wait_for_status(gateway, request.idempotency_key, ChargeStatus.SUCCEEDED)
    assert settled.reference is not None


async def wait_for_status(gateway: SandboxGateway, key: str, wanted: ChargeStatus) -> ChargeResult:
    """Polls until the lookup says `wanted`, failing after a deadline well past PENDING_DELAY."""
    async with asyncio.timeout(PENDING_DELAY + 5):
        while True:
            found = await gateway.lookup(key)
            if found is not None and found.status is wanted:
                return found
            await asyncio.sleep(0.05)


async def test_the_same_key_with_another_amount_is_refused(gateway, sandbox_url) -> None:
    request = charge_of("tok_success", amount=500)
    await gateway.charge(request)
    with pytest.raises(GatewayMisuse):
        await gateway.charge(charge_of("tok_success", amount=501, key=request.idempotency_key))
    assert (await stats(sandbox_url))["charges_executed"][request.idempotency_key] == 1


async def test_partial_refunds_never_exceed_what_remains(gateway, sandbox_url) -> None:
    charged = await gateway.charge(charge_of("tok_success", amount=1000))
    assert charged.reference is not None

    def refund(amount: int, key: str) -> RefundRequest:
        return RefundRequest(key, charged.reference or "", amount, "USD")

    first = await gateway.refund(refund(600, "re_a"))
    assert first.status is RefundStatus.SUCCEEDED
    assert await gateway.refund(refund(600, "re_a")) == first  # a repeat refunds nothing more
    assert (await gateway.refund(refund(401, "re_b"))).status is RefundStatus.DECLINED
    assert (await gateway.refund(refund(400, "re_c"))).status is RefundStatus.SUCCEEDED
    assert (await gateway.refund(refund(1, "re_d"))).status is RefundStatus.DECLINED
    unknown = RefundRequest("re_e", "ch_missing", 1, "USD")
    assert (await gateway.refund(unknown)).status is RefundStatus.DECLINED


async def test_a_refund_is_found_by_its_key_even_when_its_answer_timed_out(gateway, sandbox_url) -> None:
    """tok_refund_timeout: the refund is made, but every answer to the request comes too late; the
    lookup by the refund's key answers at once with what was made, and never seen is None."""
    charged = await gateway.charge(charge_of("tok_refund_timeout", amount=800))
    assert charged.status is ChargeStatus.SUCCEEDED and charged.reference
    key = f"prf_{uuid.uuid4().hex}"
    request = RefundRequest(key, charged.reference, 800, "USD")
    assert (await gateway.refund(request)).status is RefundStatus.UNKNOWN
    assert (await gateway.refund(request)).status is RefundStatus.UNKNOWN  # the repeat is late too
    found = await gateway.lookup_refund(key, charge_reference=charged.reference)
    assert found is not None and found.status is RefundStatus.SUCCEEDED
    assert (found.reference or "").startswith("re_")
    assert (await stats(sandbox_url))["refunds_executed"][key] == 1
    assert await gateway.lookup_refund(f"prf_{uuid.uuid4().hex}", charge_reference=charged.reference) is None


async def test_a_refused_connection_fails_and_a_lookup_stays_unknown() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = SandboxGateway(f"http://127.0.0.1:{port}", timeout=CLIENT_TIMEOUT)
    try:
        assert (await adapter.charge(charge_of("tok_success"))).status is ChargeStatus.FAILED
        looked_up = await adapter.lookup("pay_x")
        assert looked_up is not None and looked_up.status is ChargeStatus.UNKNOWN
        refund = await adapter.lookup_refund("prf_x", charge_reference="ch_x")
        assert refund is not None and refund.status is RefundStatus.UNKNOWN
    finally:
        await adapter.close()


def test_the_command_refuses_an_address_other_than_loopback() -> None:
    command = [sys.executable, "-m", "app.cli", "sandbox-gateway", "--listen", "0.0.0.0:0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--allow-remote" in done.stderr


async def test_concurrent_duplicates_charge_once(gateway, sandbox_url) -> None:
    request = charge_of("tok_success")
    results = await asyncio.gather(*(gateway.charge(request) for _ in range(5)))
    assert {result.reference for result in results} == {results[0].reference}
    assert (await stats(sandbox_url))["charges_executed"][request.idempotency_key] == 1


async def test_the_breaker_stops_calling_a_failing_sandbox(gateway, sandbox_url) -> None:
    from datetime import UTC, datetime

    from billing_svc.payments.gateways.breaker import CircuitBreaker, CircuitState
    from core.clock import FrozenClock

    breaker = CircuitBreaker(gateway, FrozenClock(datetime(2026, 1, 1, tzinfo=UTC)), failure_threshold=2)
    results = [await breaker.charge(charge_of("tok_error")) for _ in range(2)]
    assert [r.status for r in results] == [ChargeStatus.FAILED, ChargeStatus.FAILED]
    assert breaker.state is CircuitState.OPEN
    refused = await breaker.charge(charge_of("tok_success"))
    assert refused.status is ChargeStatus.FAILED and "circuit open" in refused.message
    assert refused.reference is None
