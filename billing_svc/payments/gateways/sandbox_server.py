"""The sandbox payment gateway: an HTTP service of its own (`tally sandbox-gateway`), state in memory.

It is run as a separate process so that it outlives a crash of Tally, as a real gateway would.
The outcome of a charge is decided by its payment-method token (TOKENS). A charge is kept under
its idempotency key: a repeat gets the stored outcome and is never charged again, a repeat with a
different amount or currency is refused (409).

    POST /v1/charges           Idempotency-Key header; JSON amount_minor, currency_code,
                               payment_method, description, metadata
    GET  /v1/charges/{key}     the charge made under a key (404: never seen)
    POST /v1/refunds           Idempotency-Key header; JSON charge, amount_minor, currency_code
    GET  /v1/refunds/{key}     the refund made under a key (404: never seen)
    GET  /admin/stats          executions per key and totals, for tests counting at the gateway
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import signal
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from core.clock import Clock, SystemClock

# What each token does. Any other token is declined as invalid_payment_method.
TOKENS = {
    "tok_success": "charged at once",
    "tok_decline": "declined: card_declined",
    "tok_insufficient_funds": "declined: insufficient_funds",
    "tok_timeout": "charged, but answered only after --timeout-delay (longer than the client waits)",
    "tok_error": "500, nothing charged",
    "tok_delayed": "pending at first; succeeded once --pending-delay has passed",
    "tok_refund_timeout": "charged at once; a refund of it is made, but each answer to the refund "
    "request comes after --timeout-delay (a lookup answers at once)",
}
_DECLINES = {"tok_decline": "card_declined", "tok_insufficient_funds": "insufficient_funds"}


@dataclass
class Charge:
    id: str
    status: str  # succeeded, declined, pending
    amount_minor: int
    currency_code: str
    decline_code: str | None
    message: str
    refunded_minor: int = 0
    settles_at: datetime | None = None  # when a pending charge succeeds
    slow_refunds: bool = False  # answers to refund requests of it come after the timeout delay


@dataclass
class Refund:
    id: str
    charge: str
    amount_minor: int
    currency_code: str
    status: str = "succeeded"


@dataclass
class Ledger:
    """The gateway's whole state."""

    charges: dict[str, Charge] = field(default_factory=dict)  # by idempotency key
    charge_keys: dict[str, str] = field(default_factory=dict)  # charge id -> idempotency key
    refunds: dict[str, Refund] = field(default_factory=dict)  # by idempotency key
    executions: Counter[str] = field(default_factory=Counter)  # new charges made, per key
    refund_executions: Counter[str] = field(default_factory=Counter)  # new refunds made, per key
    charged: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))  # by currency
    refunded: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))


def create_app(*, timeout_delay: float, pending_delay: float, clock: Clock | None = None) -> web.Application:
    ledger = Ledger()
    now = (clock or SystemClock()).now
    routes = web.RouteTableDef()

    @routes.post("/v1/charges")
    async def charge(request: web.Request) -> web.Response:
        key, body = await _keyed_body(request)
        amount, currency = _money(body)
        existing = ledger.charges.get(key)
        if existing is not None:
            if (existing.amount_minor, existing.currency_code) != (amount, currency):
                return _error(409, "idempotency_key_reused", "this key was used with another amount")
            return _charge_json(_settled(existing, now()))
        method = str(body.get("payment_method", ""))
        if method == "tok_error":
            return _error(500, "gateway_error", "internal error; nothing was charged")
        made = _new_charge(method, amount, currency, now() + timedelta(seconds=pending_delay))
        ledger.charges[key] = made  # before any await: a concurrent repeat finds it
        ledger.charge_keys[made.id] = key
        ledger.executions[key] += 1
        if made.status != "declined":
            ledger.charged[currency] += amount
        if method == "tok_timeout":
            await asyncio.sleep(timeout_delay)  # the client gives up first; the charge stands
        return _charge_json(made)

    @routes.get("/v1/charges/{key}")
    async def lookup(request: web.Request) -> web.Response:
        found = ledger.charges.get(request.match_info["key"])
        if found is None:
            return _error(404, "not_found", "no charge under this key")
        return _charge_json(_settled(found, now()))

    @routes.post("/v1/refunds")
    async def refund(request: web.Request) -> web.Response:
        key, body = await _keyed_body(request)
        amount, currency = _money(body)
        charge_id = str(body.get("charge", ""))
        existing = ledger.refunds.get(key)
        if existing is not None:
            if (existing.charge, existing.amount_minor, existing.currency_code) != (
                charge_id,
                amount,
                currency,
            ):
                return _error(409, "idempotency_key_reused", "this key was used with another refund")
            return await _refund_json(existing)
        charged_key = ledger.charge_keys.get(charge_id)
        target = ledger.charges[charged_key] if charged_key is not None else None
        if target is None or _settled(target, now()).status != "succeeded":
            return _error(404, "charge_not_refundable", "no succeeded charge with this id")
        if currency != target.currency_code:
            return _error(400, "currency_mismatch", "the refund's currency differs from the charge's")
        if amount > target.amount_minor - target.refunded_minor:
            return _error(402, "amount_too_large", "the refund is larger than what remains of the charge")
        target.refunded_minor += amount
        made = Refund(f"re_{secrets.token_hex(8)}", charge_id, amount, currency)
        ledger.refunds[key] = made  # before any await: a concurrent repeat finds it
        ledger.refund_executions[key] += 1
        ledger.refunded[currency] += amount
        return await _refund_json(made)

    @routes.get("/v1/refunds/{key}")
    async def lookup_refund(request: web.Request) -> web.Response:
        found = ledger.refunds.get(request.match_info["key"])
        if found is None:
            return _error(404, "not_found", "no refund under this key")
        return web.json_response(asdict(found))

    async def _refund_json(made: Refund) -> web.Response:
        refunded = ledger.charges[ledger.charge_keys[made.charge]]
        if refunded.slow_refunds:
            await asyncio.sleep(timeout_delay)  # the client gives up first; the refund stands
        return web.json_response(asdict(made))

    @routes.get("/admin/stats")
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "charges_executed": dict(ledger.executions),
                "refunds_executed": dict(ledger.refund_executions),
                "total_charged_minor": dict(ledger.charged),
                "total_refunded_minor": dict(ledger.refunded),
            }
        )

    app = web.Application()
    app.add_routes(routes)
    return app


def _new_charge(method: str, amount: int, currency: str, settles_at: datetime) -> Charge:
    charge_id = f"ch_{secrets.token_hex(8)}"
    if method in ("tok_success", "tok_timeout", "tok_refund_timeout"):
        slow = method == "tok_refund_timeout"
        return Charge(charge_id, "succeeded", amount, currency, None, "charged", slow_refunds=slow)
    if method == "tok_delayed":
        return Charge(charge_id, "pending", amount, currency, None, "processing", settles_at=settles_at)
    code = _DECLINES.get(method, "invalid_payment_method")
    return Charge(charge_id, "declined", amount, currency, code, f"declined: {code}")


def _settled(charge: Charge, now: datetime) -> Charge:
    if charge.status == "pending" and charge.settles_at is not None and now >= charge.settles_at:
        charge.status, charge.message = "succeeded", "charged"
    return charge


def _charge_json(charge: Charge) -> web.Response:
    fields = ("id", "status", "amount_minor", "currency_code", "decline_code", "message", "refunded_minor")
    return web.json_response({name: getattr(charge, name) for name in fields})


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _keyed_body(request: web.Request) -> tuple[str, dict[str, Any]]:
    key = request.headers.get("Idempotency-Key", "")
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not key or not isinstance(body, dict):
        raise web.HTTPBadRequest(text="an Idempotency-Key header and a JSON object body are required")
    return key, body


def _money(body: dict[str, Any]) -> tuple[int, str]:
    amount, currency = body.get("amount_minor"), body.get("currency_code")
    if type(amount) is not int or amount <= 0 or not isinstance(currency, str) or len(currency) != 3:
        raise web.HTTPBadRequest(text="amount_minor must be a positive integer, currency_code 3 letters")
    return amount, currency


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def serve(host: str, port: int, *, timeout_delay: float, pending_delay: float) -> None:
    """Listen until SIGTERM or SIGINT; print the address once it is listening."""
    runner = web.AppRunner(create_app(timeout_delay=timeout_delay, pending_delay=pending_delay))
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]"), port)
    await site.start()
    bound = runner.addresses[0][1]  # the port really bound (port 0 picks a free one)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"sandbox gateway listening on http://{host}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    print("sandbox gateway stopped", file=sys.stderr, flush=True)
