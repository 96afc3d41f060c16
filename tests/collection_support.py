"""A stand-in for the payments module's collect_invoice, on the real sandbox gateway.

`SandboxCollector` charges an invoice's amount remaining at the sandbox (a separate process,
tests/integration/sandbox_support.py) with the payment-method token the test gave the account,
under one idempotency key per attempt, and records a success as the invoice paid in a transaction
of its own (PayInvoice's use case), after the gateway answered: the shape the payments module's
collector has (attempt, call out with no transaction open, record the result).
"""

from __future__ import annotations

from collections import Counter

from app.server import App
from billing_svc.collection import Collected
from billing_svc.invoices.domain import InvoiceStatus
from billing_svc.invoices.use_cases import PayInvoice, get_invoice, pay_invoice_out_of_band
from billing_svc.module import BillingServices
from billing_svc.payments.gateways.port import ChargeRequest, ChargeStatus
from billing_svc.payments.gateways.sandbox import SandboxGateway
from core.principal import SYSTEM


class SandboxCollector:
    def __init__(self, sandbox_url: str):
        self.gateway = SandboxGateway(sandbox_url, timeout=5.0)
        self.tokens: dict[str, str] = {}  # account id -> payment-method token
        self.calls: Counter[str] = Counter()  # invoice id -> collect calls
        self._app: App | None = None

    def bind(self, app: App) -> None:
        self._app = app

    def key(self, invoice_id: str, attempt: int) -> str:
        return f"{invoice_id}/{attempt}"

    async def __call__(self, invoice_id: str) -> Collected:
        assert self._app is not None, "bind the collector to the app first"
        billing = self._app.components.services["billing"]
        assert isinstance(billing, BillingServices)
        invoice = await get_invoice(billing.invoices, SYSTEM, invoice_id)
        if invoice.status is not InvoiceStatus.OPEN or invoice.amount_remaining_minor <= 0:
            return Collected.NOTHING_DUE
        token = self.tokens.get(invoice.account_id)
        if token is None:
            return Collected.NO_PAYMENT_METHOD
        self.calls[invoice_id] += 1
        request = ChargeRequest(
            self.key(invoice_id, self.calls[invoice_id]),
            invoice.amount_remaining_minor,
            invoice.currency_code,
            token,
            f"invoice {invoice.number}",
        )
        result = await self.gateway.charge(request)
        if result.status is ChargeStatus.SUCCEEDED:
            await pay_invoice_out_of_band(billing.invoices, SYSTEM, PayInvoice(invoice_id))
            return Collected.PAID
        if result.status is ChargeStatus.DECLINED:
            return Collected.DECLINED
        if result.status is ChargeStatus.FAILED:
            return Collected.GATEWAY_UNAVAILABLE
        return Collected.PENDING

    async def close(self) -> None:
        await self.gateway.close()
