"""Credit notes: issue one on a finalized invoice, get one, list an invoice's or an account's.

Issuing is one transaction run by the IdempotentRunner under the invoice's row lock: two credit
notes of one invoice are made one after the other, so together they cannot exceed its total. The
credit note's number (its own gapless sequence), the invoice's credited amounts, the credit
balance entry, the audit rows and the outbox events commit with it, or nothing does.

Refund method PAYMENT_REFUND follows RefundPayment's protocol through the `CreditRefunds` port: the
refunds commit pending with the credit note (their amounts held on the payments), are sent after
the commit with no transaction open, and are left to the reconciler if an answer is lost. A
replayed request_id returns the stored credit note and sends nothing again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from billing_svc.invoices import credit_notes, domain
from billing_svc.invoices.credit_notes import CreditNote, CreditNoteLine, CreditNoteReason, RefundMethod
from billing_svc.invoices.ports import InvoicesUnitOfWork
from billing_svc.invoices.use_cases import InvoiceDeps, account_not_found, load, record_change, require_id
from core import ids
from core.audit import changes_between
from core.errors import PermissionDenied, Violations
from core.principal import Caller


@dataclass(frozen=True)
class NewCreditNoteLine:
    description: str
    amount_minor: int


@dataclass(frozen=True)
class CreateCreditNote:
    invoice_id: str
    lines: tuple[NewCreditNoteLine, ...]
    reason: CreditNoteReason | None
    memo: str
    refund_method: RefundMethod | None


@dataclass(frozen=True)
class CreditNotePage:
    credit_notes: list[CreditNote]
    next_page_token: str


def _check_create(command: CreateCreditNote) -> tuple[CreditNoteReason, RefundMethod]:
    violations = Violations()
    if not command.lines:
        violations.add("lines", "must have at least 1 line")
    elif len(command.lines) > credit_notes.MAX_LINES:
        violations.add("lines", f"must have at most {credit_notes.MAX_LINES} lines, got {len(command.lines)}")
    for index, line in enumerate(command.lines):
        where = f"lines[{index}]"
        if not line.description:
            violations.add(f"{where}.description", "is required")
        elif len(line.description) > domain.MAX_LINE_DESCRIPTION:
            violations.add(
                f"{where}.description", f"must be at most {domain.MAX_LINE_DESCRIPTION} characters"
            )
        if not 0 < line.amount_minor <= credit_notes.MAX_LINE_AMOUNT_MINOR:
            violations.add(
                f"{where}.amount_minor", f"must be between 1 and {credit_notes.MAX_LINE_AMOUNT_MINOR}"
            )
    if command.reason is None:
        violations.add("reason", "is required")
    if command.refund_method is None:
        violations.add("refund_method", "is required")
    if len(command.memo) > credit_notes.MAX_MEMO:
        violations.add("memo", f"must be at most {credit_notes.MAX_MEMO} characters")
    violations.raise_if_any()
    assert command.reason is not None
    assert command.refund_method is not None
    return command.reason, command.refund_method


# CreateCreditNote needs invoices:write; one that sends money back through a gateway also needs
# what RefundPayment needs, so that an invoices-only service account cannot move money.
REFUND_SCOPE = "payments:write"


def _require_refund_scope(caller: Caller) -> None:
    if caller.principal is not None and not caller.principal.has_scope(REFUND_SCOPE):
        raise PermissionDenied(
            f"refund_method PAYMENT_REFUND refunds through the payment gateway and needs the "
            f"{REFUND_SCOPE} scope too",
            reason="SCOPE_REQUIRED",
            metadata={"field": "refund_method", "scope": REFUND_SCOPE},
        )


def event_payload(note: CreditNote) -> dict[str, object]:
    return {
        "id": note.id,
        "number": note.number,
        "invoice_id": note.invoice_id,
        "account_id": note.account_id,
        "currency_code": note.currency_code,
        "total_minor": note.total_minor,
        "pre_payment_minor": note.pre_payment_minor,
        "post_payment_minor": note.post_payment_minor,
        "reason": note.reason.value,
        "refund_method": note.refund_method.value,
        "refund_ids": list(note.refund_ids),
    }


async def create_credit_note(deps: InvoiceDeps, caller: Caller, command: CreateCreditNote) -> CreditNote:
    require_id(command.invoice_id, "invoice_id")
    reason, refund_method = _check_create(command)
    if refund_method is RefundMethod.PAYMENT_REFUND:
        _require_refund_scope(caller)

    async def action(uow: InvoicesUnitOfWork) -> CreditNote:
        # The invoice's row lock: credit notes of one invoice are made one after the other.
        invoice = await load(uow, caller, command.invoice_id, for_update=True)
        total = sum(line.amount_minor for line in command.lines)
        pre, _post = credit_notes.split(invoice, total)
        now = (await uow.clocks.time_for(invoice.account_id)).now
        number = domain.number_text(
            credit_notes.NUMBER_PREFIX, await uow.invoices.next_number(credit_notes.NUMBER_PREFIX)
        )
        note = CreditNote(
            id=ids.new_id(credit_notes.ID_PREFIX),
            number=number,
            invoice_id=invoice.id,
            account_id=invoice.account_id,
            currency_code=invoice.currency_code,
            lines=tuple(
                CreditNoteLine(ids.new_id(credit_notes.LINE_ID_PREFIX), line.description, line.amount_minor)
                for line in command.lines
            ),
            reason=reason,
            memo=command.memo,
            refund_method=refund_method,
            pre_payment_minor=pre,
            create_time=now,
        )
        if note.post_payment_minor and refund_method is RefundMethod.PAYMENT_REFUND:
            # Held on the payments in this transaction: a refusal rolls all of it back, the number too.
            note = replace(note, refund_ids=await deps.credit_refunds.hold(uow, caller, note))
        await uow.credit_notes.add(note)
        if note.post_payment_minor and refund_method is RefundMethod.CREDIT_BALANCE:
            source = (credit_notes.RESOURCE_TYPE, note.id)
            await uow.balances.change(
                note.account_id, note.currency_code, note.post_payment_minor, source=source, now=now
            )
        # OUT_OF_BAND_REFUND: the credit note itself is the record of the refund made outside Tally.
        after = credit_notes.credited(invoice, note, now)
        await uow.invoices.save(after)
        await uow.audit.record(
            caller,
            time=now,
            resource_type=credit_notes.RESOURCE_TYPE,
            resource_id=note.id,
            action="created",
            changes=changes_between(None, event_payload(note)),
        )
        uow.emit("credit_note.created", (credit_notes.RESOURCE_TYPE, note.id), event_payload(note))
        await record_change(uow, caller, "credited", invoice, after)
        return note

    outcome = await deps.credit_note_runner.run(caller, command, action)
    if outcome.value.refund_ids and not outcome.replayed:
        await deps.credit_refunds.send(caller, outcome.value.refund_ids)
    return outcome.value


async def _load(uow: InvoicesUnitOfWork, caller: Caller, credit_note_id: str) -> CreditNote:
    note = None
    if len(credit_note_id) <= ids.MAX_LENGTH:
        note = await uow.credit_notes.get(credit_note_id)
    if note is None or caller.customer_account not in (None, note.account_id):
        raise credit_notes.credit_note_not_found(credit_note_id)
    return note


async def get_credit_note(deps: InvoiceDeps, caller: Caller, credit_note_id: str) -> CreditNote:
    require_id(credit_note_id)
    async with deps.new_reader() as uow:
        return await _load(uow, caller, credit_note_id)


async def list_credit_notes(
    deps: InvoiceDeps,
    caller: Caller,
    *,
    invoice_id: str = "",
    account_id: str = "",
    size: int = 0,
    page_token: str = "",
) -> CreditNotePage:
    if not invoice_id and not account_id and caller.customer_account is not None:
        account_id = caller.customer_account  # a customer's listing is its own account's
    if account_id and caller.customer_account not in (None, account_id):
        raise account_not_found(account_id)
    scope = {"invoice_id": invoice_id, "account_id": account_id}
    page = deps.page_tokens.keyset_page(size, page_token, scope)
    async with deps.new_reader() as uow:
        if invoice_id:
            invoice = await load(uow, caller, invoice_id, for_update=False)
            if account_id and invoice.account_id != account_id:
                raise domain.invoice_not_found(invoice_id, "invoice_id")
        elif account_id and (
            len(account_id) > ids.MAX_LENGTH or await uow.accounts.terms(account_id) is None
        ):
            raise account_not_found(account_id)
        rows = await uow.credit_notes.list_notes(
            account_id=account_id, invoice_id=invoice_id, after=page.after, limit=page.fetch_limit
        )
    shown, token = page.slice(rows, key=lambda note: (note.create_time, note.id))
    return CreditNotePage(shown, token)
