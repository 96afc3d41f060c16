"""One function per business action on payments. Writes that reach a gateway run the protocol of
collect.py: the intent commits first (its request_id claimed with it), the gateway is called with
no transaction open, the answer is recorded in a new transaction. A replayed request_id returns the
payment as it now stands and never calls the gateway again.

Refunds follow the same shape (refunds.py): the refund is committed pending (its amount held
against the payment, so concurrent refunds never exceed what was charged), sent under its own id as
the gateway's idempotency key, and recorded; one still unanswered stays pending, its amount held,
until the reconciler settles it by a lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from billing_svc.invoices import domain as invoices
from billing_svc.invoices import use_cases as invoice_use_cases
from billing_svc.payments import domain, refunds
from billing_svc.payments.collect import CollectInvoice, PaymentDeps, collect, drive, reload, start
from billing_svc.payments.domain import Payment, PaymentSettings, PaymentStatus
from billing_svc.payments.ports import PaymentsUnitOfWork
from core import ids
from core.errors import FailedPrecondition, InvalidArgument, Violations
from core.money import Money
from core.principal import Caller

__all__ = ["CollectInvoice", "collect"]


@dataclass(frozen=True)
class CreatePayment:
    account_id: str
    invoice_id: str
    amount: Money | None
    payment_method: str
    description: str
    metadata: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RefundPayment:
    id: str
    amount: Money | None
    reason: str


@dataclass(frozen=True)
class UpdatePaymentSettings:
    account_id: str
    gateway: str
    default_payment_method: str
    fields: tuple[str, ...]  # the fields to change


@dataclass(frozen=True)
class PaymentPage:
    payments: list[Payment]
    next_page_token: str


SETTINGS_FIELDS = ("gateway", "default_payment_method")


def _check_create(command: CreatePayment) -> None:
    violations = Violations()
    if not command.account_id and not command.invoice_id:
        violations.add("account_id", "is required without invoice_id")
    if command.amount is None and not command.invoice_id:
        violations.add("amount", "is required without invoice_id")
    if command.amount is not None and command.amount.amount_minor <= 0:
        violations.add("amount.amount_minor", "must be greater than 0")
    if len(command.description) > domain.MAX_DESCRIPTION:
        violations.add("description", f"must be at most {domain.MAX_DESCRIPTION} characters")
    if len(command.payment_method) > domain.MAX_PAYMENT_METHOD:
        violations.add("payment_method", f"must be at most {domain.MAX_PAYMENT_METHOD} characters")
    if len(command.metadata) > domain.MAX_METADATA:
        violations.add("metadata", f"must have at most {domain.MAX_METADATA} entries")
    # A card number in the payment method, the description or the metadata was refused before the use
    # case ran: the fields carry `refuse_card_numbers` (core/card_policy.py).
    for key, value in command.metadata:
        if len(key) > domain.MAX_METADATA_KEY or len(value) > domain.MAX_METADATA_VALUE:
            violations.add(
                "metadata",
                f"keys must be at most {domain.MAX_METADATA_KEY} characters, values "
                f"{domain.MAX_METADATA_VALUE}",
            )
    violations.raise_if_any()


def _require_currency(amount: Money, currency_code: str, field_name: str) -> None:
    if amount.currency_code != currency_code:
        raise InvalidArgument.field(
            f"{field_name}.currency_code", f"must be {currency_code}, the currency charged"
        )


async def _account_currency(uow: PaymentsUnitOfWork, account_id: str) -> str:
    terms = await uow.accounts.terms(account_id, lock=True)
    if terms is None or len(account_id) > ids.MAX_LENGTH:
        raise invoice_use_cases.account_not_found(account_id)
    if not terms.live:
        raise FailedPrecondition(
            f"account {account_id!r} is deleted",
            reason="ACCOUNT_DELETED",
            metadata={"account_id": account_id},
        )
    return terms.currency_code


async def create_payment(deps: PaymentDeps, caller: Caller, command: CreatePayment) -> Payment:
    _check_create(command)

    async def intent(uow: PaymentsUnitOfWork) -> Payment:
        amount = command.amount
        if not command.invoice_id:
            currency = await _account_currency(uow, command.account_id)
            assert amount is not None  # checked above
            _require_currency(amount, currency, "amount")
            return await _start(uow, command.account_id, currency, amount.amount_minor, "")
        invoice = await invoice_use_cases.load(uow, caller, command.invoice_id, for_update=True)
        if command.account_id and command.account_id != invoice.account_id:
            raise InvalidArgument.field("account_id", "must be the invoice's account, or empty")
        invoices.require(invoice, invoices.Action.PAY)
        pending = sum(p.amount_minor for p in await uow.payments.pending_for_invoice(invoice.id))
        payable = invoice.amount_remaining_minor - pending
        if amount is not None:
            _require_currency(amount, invoice.currency_code, "amount")
        wanted = payable if amount is None else amount.amount_minor
        if not 0 < wanted <= payable:
            raise FailedPrecondition(
                f"a payment of this invoice must be between 1 and the {payable} minor units remaining "
                "(less its pending payments)",
                reason="PAYMENT_EXCEEDS_REMAINING",
                metadata={"invoice_id": invoice.id, "payable_minor": str(payable)},
            )
        return await _start(uow, invoice.account_id, invoice.currency_code, wanted, invoice.id)

    async def _start(
        uow: PaymentsUnitOfWork, account_id: str, currency: str, minor: int, invoice_id: str
    ) -> Payment:
        return await start(
            deps,
            uow,
            caller,
            account_id=account_id,
            currency_code=currency,
            amount_minor=minor,
            invoice_id=invoice_id,
            payment_method=command.payment_method,
            description=command.description,
        )

    outcome = await deps.runner.run(caller, command, intent)
    if outcome.replayed:
        return await _visible(deps, caller, outcome.value.id)
    return await drive(deps, caller, outcome.value, dict(command.metadata))


async def pay_invoice(deps: PaymentDeps, caller: Caller, invoice_id: str, payment_method: str) -> None:
    """PayInvoice through the gateway: collect what remains (the caller reads the invoice after). A card
    number as the payment method was refused before the use case ran (core/card_policy.py)."""
    await collect(deps, caller, invoice_id, payment_method)


async def _visible(deps: PaymentDeps, caller: Caller, payment_id: str) -> Payment:
    payment = await reload(deps, payment_id)
    if caller.customer_account not in (None, payment.account_id):
        raise domain.payment_not_found(payment_id)
    return payment


async def get_payment(deps: PaymentDeps, caller: Caller, payment_id: str) -> Payment:
    invoice_use_cases.require_id(payment_id)
    if len(payment_id) > ids.MAX_LENGTH:
        raise domain.payment_not_found(payment_id)
    return await _visible(deps, caller, payment_id)


async def list_payments(
    deps: PaymentDeps,
    caller: Caller,
    *,
    account_id: str = "",
    invoice_id: str = "",
    statuses: Sequence[PaymentStatus] = (),
    size: int = 0,
    page_token: str = "",
) -> PaymentPage:
    """Newest first. A customer sees its own account's only: another account is NOT_FOUND."""
    if caller.customer_account is not None:
        if account_id not in ("", caller.customer_account):
            raise invoice_use_cases.account_not_found(account_id)
        account_id = caller.customer_account
    wanted = sorted({status.value for status in statuses})
    scope = {"account_id": account_id, "invoice_id": invoice_id, "statuses": wanted}
    page = deps.page_tokens.keyset_page(size, page_token, scope)
    async with deps.new_reader() as uow:
        if account_id and (len(account_id) > ids.MAX_LENGTH or await uow.accounts.terms(account_id) is None):
            raise invoice_use_cases.account_not_found(account_id)
        rows = await uow.payments.list_payments(
            account_id=account_id,
            invoice_id=invoice_id,
            statuses=[PaymentStatus(value) for value in wanted],
            after=page.after,
            limit=page.fetch_limit,
        )
    shown, token = page.slice(rows, key=lambda payment: (payment.create_time, payment.id))
    return PaymentPage(shown, token)


async def refund_payment(deps: PaymentDeps, caller: Caller, command: RefundPayment) -> Payment:
    invoice_use_cases.require_id(command.id)
    violations = Violations()
    if command.amount is not None and command.amount.amount_minor <= 0:
        violations.add("amount.amount_minor", "must be greater than 0")
    if len(command.reason) > domain.MAX_REASON:
        violations.add("reason", f"must be at most {domain.MAX_REASON} characters")
    violations.raise_if_any()

    async def intent(uow: PaymentsUnitOfWork) -> Payment:
        payment = (
            await uow.payments.get(command.id, for_update=True) if len(command.id) <= ids.MAX_LENGTH else None
        )
        if payment is None or caller.customer_account not in (None, payment.account_id):
            raise domain.payment_not_found(command.id)
        if command.amount is not None:
            _require_currency(command.amount, payment.currency_code, "amount")
        minor = payment.refundable_minor if command.amount is None else command.amount.amount_minor
        return await refunds.hold(deps, uow.payments, payment, minor, command.reason)

    outcome = await deps.runner.run(caller, command, intent)
    if outcome.replayed:
        return await _visible(deps, caller, outcome.value.id)
    return await refunds.send(deps, caller, outcome.value, outcome.value.refunds[-1])


async def get_payment_settings(deps: PaymentDeps, caller: Caller, account_id: str) -> PaymentSettings:
    invoice_use_cases.require_id(account_id, "account_id")
    async with deps.new_reader() as uow:
        if len(account_id) > ids.MAX_LENGTH or await uow.accounts.terms(account_id) is None:
            raise invoice_use_cases.account_not_found(account_id)
        return await uow.payment_settings.get(account_id) or PaymentSettings(account_id)


async def update_payment_settings(
    deps: PaymentDeps, caller: Caller, command: UpdatePaymentSettings
) -> PaymentSettings:
    invoice_use_cases.require_id(command.account_id, "settings.account_id")
    violations = Violations()
    if "gateway" in command.fields and command.gateway and command.gateway not in deps.gateways.known:
        violations.add("settings.gateway", f"must be one of {', '.join(deps.gateways.known)}, or empty")
    if len(command.default_payment_method) > domain.MAX_PAYMENT_METHOD:
        violations.add(
            "settings.default_payment_method", f"must be at most {domain.MAX_PAYMENT_METHOD} characters"
        )
    violations.raise_if_any()
    if "gateway" in command.fields and command.gateway:
        deps.gateways.choose(command.gateway, "")  # FAILED_PRECONDITION when it is not configured here

    async def action(uow: PaymentsUnitOfWork) -> PaymentSettings:
        await _account_currency(uow, command.account_id)
        before = await uow.payment_settings.get(command.account_id) or PaymentSettings(command.account_id)
        changed = {name: getattr(command, name) for name in command.fields}
        after = replace(before, **changed, update_time=deps.clock.now())
        await uow.payment_settings.put(after)
        await uow.audit.record(
            caller,
            time=deps.clock.now(),
            resource_type=domain.SETTINGS_RESOURCE_TYPE,
            resource_id=command.account_id,
            action="updated",
            changes={name: getattr(after, name) for name in command.fields},
        )
        return after

    return (await deps.settings_runner.run(caller, command, action)).value
