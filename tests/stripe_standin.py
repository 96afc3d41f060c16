"""A local stand-in for the part of Stripe's HTTP API that the Stripe adapter uses.

Form-encoded bodies, the Idempotency-Key header honoured (a repeat replays the stored answer, a
repeat with other parameters is an idempotency_error), errors shaped like Stripe's so the real
SDK raises its real error classes. The payment method decides the outcome (PAYMENT_METHODS); a
refund's status and how late it is answered are the state's (`refund_status`, `refund_delay`).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_KEY = "sk_test_standin"
SLOW_DELAY = 2.0  # what pm_slow makes the client wait: longer than the tests' client timeout

PAYMENT_METHODS = {
    "pm_card_visa": "succeeded",
    "pm_card_chargeDeclined": "card_error generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "card_error insufficient_funds",
    "pm_processing": "processing",
    "pm_requires_action": "requires_action",
    "pm_server_error": "created, then a 500 (so the outcome is unknown to the caller)",
    "pm_rate_limited": "429 before any work",
    "pm_slow": "created (succeeded), answered after SLOW_DELAY",
}
_DECLINES = {
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
}
_REUSED_KEY = (
    "Keys for idempotent requests can only be used with the same parameters they were first used with."
)
_SEARCH = re.compile(r"^metadata\['tally_idempotency_key'\]:'((?:[^'\\]|\\.)*)'$")


@dataclass
class StandinState:
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id
    refunded: Counter[str] = field(default_factory=Counter)  # by payment intent id
    # Idempotency-Key -> (the parameters, the HTTP status, the answer)
    answers: dict[str, tuple[dict[str, str], int, dict[str, Any]]] = field(default_factory=dict)
    created: Counter[str] = field(default_factory=Counter)  # PaymentIntents made, by our key
    refunds: list[dict[str, Any]] = field(default_factory=list)  # in the order made
    refunds_created: Counter[str] = field(default_factory=Counter)  # Refunds made, by our key
    refund_status: str = "succeeded"  # what each new refund is made as (pending, failed ...)
    refund_delay: float = 0  # how late a new refund is answered (made all the same)
    page_limit: int = 100  # the most a list answers in one page, whatever `limit` asks


def create_app(state: StandinState) -> web.Application:
    routes = web.RouteTableDef()

    @routes.post("/v1/payment_intents")
    async def create_intent(request: web.Request) -> web.Response:
        return await _idempotent(request, state, lambda params: _create_intent(state, params))

    @routes.get("/v1/payment_intents/search")
    async def search(request: web.Request) -> web.Response:
        match = _SEARCH.match(request.query.get("query", ""))
        if match is None:
            return _error(400, "invalid_request_error", "unsupported query", code="parameter_invalid_string")
        key = re.sub(r"\\(.)", r"\1", match.group(1))
        found = [i for i in state.intents.values() if i["metadata"].get("tally_idempotency_key") == key]
        body = {"object": "search_result", "url": "/v1/payment_intents/search", "has_more": False}
        return web.json_response({**body, "data": found[:1]})

    @routes.post("/v1/refunds")
    async def refund(request: web.Request) -> web.Response:
        return await _idempotent(request, state, lambda params: _refund(state, params))

    @routes.get("/v1/refunds")
    async def list_refunds(request: web.Request) -> web.Response:
        """Newest first, filtered by payment_intent, paged by limit and starting_after."""
        wanted = request.query.get("payment_intent")
        found = [r for r in reversed(state.refunds) if wanted is None or r["payment_intent"] == wanted]
        after = request.query.get("starting_after")
        if after is not None:
            found = found[[r["id"] for r in found].index(after) + 1 :]
        limit = min(int(request.query.get("limit", "10")), state.page_limit)
        body = {"object": "list", "url": "/v1/refunds", "has_more": len(found) > limit}
        return web.json_response({**body, "data": found[:limit]})

    @web.middleware
    async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return _error(401, "invalid_request_error", "Invalid API Key provided")
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[authenticate])
    app.add_routes(routes)
    return app


async def _idempotent(request: web.Request, state: StandinState, run: Any) -> web.Response:
    params = {k: str(v) for k, v in (await request.post()).items()}
    key = request.headers.get("Idempotency-Key", "")
    if key in state.answers:
        stored_params, status, body = state.answers[key]
        if stored_params != params:
            return _error(400, "idempotency_error", _REUSED_KEY)
        return web.json_response(body, status=status)
    status, body, delay = run(params)
    if status != 429:  # a rate-limited request never started executing, so nothing is kept
        state.answers[key] = (params, status, body)
    if delay:
        await asyncio.sleep(delay)
    return web.json_response(body, status=status)


def _create_intent(state: StandinState, params: dict[str, str]) -> tuple[int, dict[str, Any], float]:
    method = params.get("payment_method", "")
    if method == "pm_rate_limited":
        return 429, _error_body("rate_limit_error", "Too many requests", code="rate_limit"), 0
    if method not in PAYMENT_METHODS:
        body = _error_body(
            "invalid_request_error", f"No such PaymentMethod: '{method}'", code="resource_missing"
        )
        return 400, body, 0
    metadata = {k[9:-1]: v for k, v in params.items() if k.startswith("metadata[")}
    intent: dict[str, Any] = {
        "id": f"pi_{secrets.token_hex(8)}",
        "object": "payment_intent",
        "amount": int(params["amount"]),
        "currency": params["currency"],
        "status": "succeeded",
        "metadata": metadata,
        "last_payment_error": None,
    }
    state.intents[intent["id"]] = intent
    state.created[metadata.get("tally_idempotency_key", "")] += 1
    if method in _DECLINES:
        error = {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": _DECLINES[method],
            "message": "Your card was declined.",
        }
        intent.update(status="requires_payment_method", last_payment_error=error)
        return 402, {"error": {**error, "payment_intent": intent}}, 0
    if method in ("pm_processing", "pm_requires_action"):
        intent["status"] = method[3:]
    if method == "pm_server_error":
        return 500, _error_body("api_error", "An unknown error occurred"), 0
    return 200, intent, SLOW_DELAY if method == "pm_slow" else 0


def _refund(state: StandinState, params: dict[str, str]) -> tuple[int, dict[str, Any], float]:
    intent = state.intents.get(params.get("payment_intent", ""))
    if intent is None or intent["status"] != "succeeded":
        return 404, _error_body("invalid_request_error", "No such payment_intent", code="resource_missing"), 0
    amount = int(params.get("amount", intent["amount"] - state.refunded[intent["id"]]))
    if amount > intent["amount"] - state.refunded[intent["id"]]:
        body = _error_body(
            "invalid_request_error",
            "Refund amount is greater than unrefunded amount",
            code="amount_too_large",
        )
        return 400, body, 0
    if state.refund_status != "failed":
        state.refunded[intent["id"]] += amount
    metadata = {k[9:-1]: v for k, v in params.items() if k.startswith("metadata[")}
    refund = {
        "id": f"re_{secrets.token_hex(8)}",
        "object": "refund",
        "amount": amount,
        "status": state.refund_status,
        "failure_reason": "declined" if state.refund_status == "failed" else None,
        "payment_intent": intent["id"],
        "metadata": metadata,
    }
    state.refunds.append(refund)
    state.refunds_created[metadata.get("tally_idempotency_key", "")] += 1
    return 200, refund, state.refund_delay


def _error_body(kind: str, message: str, *, code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code is not None:
        error["code"] = code
    return {"error": error}


def _error(status: int, kind: str, message: str, *, code: str | None = None) -> web.Response:
    return web.json_response(_error_body(kind, message, code=code), status=status)


@asynccontextmanager
async def running_standin() -> AsyncIterator[tuple[str, StandinState]]:
    """The stand-in listening on a free loopback port: its base URL and its state."""
    state = StandinState()
    runner = web.AppRunner(create_app(state))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", state
    finally:
        await runner.cleanup()
