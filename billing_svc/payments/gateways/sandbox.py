"""The adapter for the sandbox gateway (sandbox_server.py), over aiohttp with a timeout per call.

How an HTTP outcome maps to a status, and why:
    connection refused, connect timeout    FAILED  the request never left us
    429, 5xx                               FAILED  the sandbox answers these before charging
    a timeout after sending, a dropped     UNKNOWN it may have charged: retry with the same key
    connection, a garbled answer                   or look it up
    409, other 4xx                         raise   our bug (a key reused, a malformed request)
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

from billing_svc.payments.gateways.port import (
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    GatewayMisuse,
    RefundRequest,
    RefundResult,
    RefundStatus,
)

_CHARGE_STATUSES = {
    "succeeded": ChargeStatus.SUCCEEDED,
    "declined": ChargeStatus.DECLINED,
    "pending": ChargeStatus.PENDING,
}


class _Unreached(Exception):
    """Certainly not processed: say FAILED."""


class _Unsure(Exception):
    """Perhaps processed: say UNKNOWN."""


class SandboxGateway:
    name = "sandbox"

    def __init__(self, base_url: str, *, timeout: float = 10.0, connect_timeout: float = 3.0) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        body = {
            "amount_minor": request.amount_minor,
            "currency_code": request.currency_code,
            "payment_method": request.payment_method,
            "description": request.description,
            "metadata": dict(request.metadata),
        }
        try:
            status, answer = await self._call("POST", "/v1/charges", request.idempotency_key, body)
        except _Unreached as exc:
            return ChargeResult(ChargeStatus.FAILED, None, None, str(exc))
        except _Unsure as exc:
            return ChargeResult(ChargeStatus.UNKNOWN, None, None, str(exc))
        return _charge_result(status, answer)

    async def lookup(self, idempotency_key: str) -> ChargeResult | None:
        try:
            status, answer = await self._call(
                "GET", f"/v1/charges/{quote(idempotency_key, safe='')}", None, None
            )
        except (_Unreached, _Unsure) as exc:
            # Asking failed: nothing more is known about the charge than before.
            return ChargeResult(ChargeStatus.UNKNOWN, None, None, f"lookup failed: {exc}")
        if status == 404:
            return None
        return _charge_result(status, answer)

    async def refund(self, request: RefundRequest) -> RefundResult:
        body = {
            "charge": request.charge_reference,
            "amount_minor": request.amount_minor,
            "currency_code": request.currency_code,
        }
        try:
            status, answer = await self._call("POST", "/v1/refunds", request.idempotency_key, body)
        except _Unreached as exc:
            return RefundResult(RefundStatus.FAILED, None, str(exc))
        except _Unsure as exc:
            return RefundResult(RefundStatus.UNKNOWN, None, str(exc))
        if status in (402, 404):
            return RefundResult(RefundStatus.DECLINED, None, _message(answer))
        _check_ours(status, answer)
        return RefundResult(RefundStatus.SUCCEEDED, str(answer["id"]), "refunded")

    async def lookup_refund(self, idempotency_key: str, *, charge_reference: str) -> RefundResult | None:
        try:
            status, answer = await self._call(
                "GET", f"/v1/refunds/{quote(idempotency_key, safe='')}", None, None
            )
        except (_Unreached, _Unsure) as exc:
            return RefundResult(RefundStatus.UNKNOWN, None, f"lookup failed: {exc}")
        if status == 404:
            return None
        _check_ours(status, answer)
        return RefundResult(RefundStatus.SUCCEEDED, str(answer["id"]), "refunded")

    async def _call(
        self, method: str, path: str, key: str | None, body: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON answer; 429 and 5xx raise _Unreached, like a refused connection."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Idempotency-Key": key} if key is not None else {}
        try:
            async with self._session.request(
                method, self._base + path, json=body, headers=headers
            ) as response:
                if response.status == 429 or response.status >= 500:
                    raise _Unreached(f"sandbox answered {response.status}; nothing was done")
                text = await response.text()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise _Unreached(f"sandbox unreachable: {exc}") from exc
        except TimeoutError as exc:
            raise _Unsure("no answer from the sandbox in time") from exc
        except aiohttp.ClientError as exc:
            raise _Unsure(f"sandbox call broke off: {exc}") from exc
        return response.status, _json_object(response.status, text)


def _json_object(status: int, text: str) -> dict[str, Any]:
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        return answer
    if 400 <= status < 500:
        raise GatewayMisuse(f"sandbox refused the request ({status}): {text[:200]}")
    raise _Unsure("sandbox answered something other than a JSON object")


def _charge_result(status: int, answer: dict[str, Any]) -> ChargeResult:
    _check_ours(status, answer)
    decline = answer.get("decline_code")
    return ChargeResult(
        _CHARGE_STATUSES[str(answer["status"])],
        str(answer["id"]),
        str(decline) if decline is not None else None,
        str(answer.get("message", "")),
    )


def _check_ours(status: int, answer: dict[str, Any]) -> None:
    if status != 200:
        raise GatewayMisuse(f"sandbox refused the request ({status}): {_message(answer)}")


def _message(answer: dict[str, Any]) -> str:
    error = answer.get("error")
    return str(error.get("message", "")) if isinstance(error, dict) else ""
