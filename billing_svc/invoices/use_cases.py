"""One function per business action on invoices. Each write is one transaction run by the
IdempotentRunner; the audit row and the outbox event commit with the change.

Invoices live on their account's billing time (a test clock's frozen time, if it has one): an
invoice made during a rehearsal is dated in the rehearsal. Idempotency keys keep wall time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from billing_svc.invoices import domain, render
from billing_svc.invoices.credit_notes import CreditNote
from billing_svc.invoices.domain import (
    Action,
    Invoice,
    InvoiceLine,
    InvoiceReason,
    InvoiceStatus,
    LineKind,
    TimeRange,
    UsageBasis,
)
from billing_svc.invoices.lines import line_from_item
from billing_svc.invoices.ports import CreditRefunds, InvoicesUnitOfWork, WrittenOff
from billing_svc.invoices.usage_lines import recorded_line, usage_lines, without_usage
from core import ids
from core.audit import changes_between
from core.clock import Clock
from core.errors import FailedPrecondition, InvalidArgument, NotFound, Violations
from core.idempotency import Codec, IdempotentRunner
from core.pagination import PageTokens
from core.principal import Caller
from core.text import excerpt

INVOICE_CODEC = Codec(Invoice.to_dict, Invoice.from_dict)
CREDIT_NOTE_CODEC = Codec(CreditNote.to_dict, CreditNote.from_dict)
_AUDITED = ("status", "number", "total_minor", "credits_applied_minor", "amount_paid_minor", "line_count")


@dataclass(frozen=True)
class InvoiceDeps:
    new_uow: Callable[[], InvoicesUnitOfWork]
    new_reader: Callable[[], InvoicesUnitOfWork]
    clock: Clock  # wall time: request id retention
    page_tokens: PageTokens
    written_off: WrittenOff  # an open invoice voided or marked uncollectible: its subscription
    credit_refunds: CreditRefunds  # a credit note refunded on the invoice's payments
    number_prefix: str = "INV"
    days_until_due: int = 0
    # How long a cycle invoice that bills usage stays a draft (late usage lands on it).
    grace_period: timedelta = timedelta(0)
    runner: IdempotentRunner[InvoicesUnitOfWork, Invoice] = field(init=False, repr=False)
    credit_note_runner: IdempotentRunner[InvoicesUnitOfWork, CreditNote] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "runner", IdempotentRunner(self.new_uow, self.clock, codec=INVOICE_CODEC))
        runner = IdempotentRunner(self.new_uow, self.clock, codec=CREDIT_NOTE_CODEC)
        object.__setattr__(self, "credit_note_runner", runner)


@dataclass(frozen=True)
class NewLine:
    description: str
    quantity: Decimal
    unit_price: Decimal
    credit: bool = False


# The commands: each is a request's content, and so its fingerprint under a request_id (AIP-155).


@dataclass(frozen=True)
class CreateInvoice:
    account_id: str
    period_start: datetime | None
    period_end: datetime | None
    lines: tuple[NewLine, ...]
    description: str
    finalize: bool


@dataclass(frozen=True)
class AddInvoiceLine:
    invoice_id: str
    line: NewLine


@dataclass(frozen=True)
class RemoveInvoiceLine:
    invoice_id: str
    line_id: str


@dataclass(frozen=True)
class FinalizeInvoice:
    id: str


@dataclass(frozen=True)
class VoidInvoice:
    id: str


@dataclass(frozen=True)
class MarkInvoiceUncollectible:
    id: str


@dataclass(frozen=True)
class PayInvoice:
    id: str


@dataclass(frozen=True)
class InvoicePage:
    invoices: list[Invoice]
    next_page_token: str


def require_id(value: str, field_name: str = "id") -> None:
    if not value:
        raise InvalidArgument.field(field_name, "is required")


def account_not_found(account_id: str) -> NotFound:
    return NotFound(
        f"account {excerpt(account_id)!r} not found",
        reason="ACCOUNT_NOT_FOUND",
        metadata={"account_id": excerpt(account_id)},
    )


def check_new_lines(violations: Violations, path: str, lines: Sequence[NewLine]) -> None:
    for index, line in enumerate(lines):
        where = f"{path}[{index}]" if path.endswith("lines") else path
        if not line.description:
            violations.add(f"{where}.description", "is required")
        elif len(line.description) > domain.MAX_LINE_DESCRIPTION:
            violations.add(
                f"{where}.description", f"must be at most {domain.MAX_LINE_DESCRIPTION} characters"
            )
        if line.quantity <= 0:
            violations.add(f"{where}.quantity", "must be greater than 0")


def _check_create(command: CreateInvoice) -> None:
    violations = Violations()
    if (command.period_start is None) != (command.period_end is None):
        missing = "period_end" if command.period_end is None else "period_start"
        violations.add(missing, "is required with the other end of the period")
    elif (
        command.period_start is not None
        and command.period_end is not None
        and (command.period_end <= command.period_start)
    ):
        violations.add("period_end", "must be after period_start")
    if len(command.lines) > domain.MAX_NEW_LINES:
        violations.add("lines", f"must have at most {domain.MAX_NEW_LINES} lines, got {len(command.lines)}")
    check_new_lines(violations, "lines", command.lines)
    if len(command.description) > domain.MAX_DESCRIPTION:
        violations.add("description", f"must be at most {domain.MAX_DESCRIPTION} characters")
    violations.raise_if_any()


def _view(invoice: Invoice | None) -> dict[str, object] | None:
    if invoice is None:
        return None
    return {
        "status": invoice.status.value,
        "number": invoice.number,
        "total_minor": invoice.total_minor,
        "credits_applied_minor": invoice.credits_applied_minor,
        "amount_paid_minor": invoice.amount_paid_minor,
        "line_count": len(invoice.lines),
    }


def event_payload(invoice: Invoice) -> dict[str, object]:
    return {
        "id": invoice.id,
        "account_id": invoice.account_id,
        "subscription_id": invoice.subscription_id,
        "number": invoice.number,
        "status": invoice.status.value,
        "currency_code": invoice.currency_code,
        "total_minor": invoice.total_minor,
        "amount_due_minor": invoice.amount_due_minor,
        "amount_paid_minor": invoice.amount_paid_minor,
        "amount_remaining_minor": invoice.amount_remaining_minor,
    }


async def record_change(
    uow: InvoicesUnitOfWork, caller: Caller, action: str, before: Invoice | None, after: Invoice
) -> None:
    """The audit row and the events of one change: `invoice.<action>`, plus `invoice.paid` when the
    change paid it."""
    await uow.audit.record(
        caller,
        time=after.update_time,
        resource_type=domain.RESOURCE_TYPE,
        resource_id=after.id,
        action=action,
        changes=changes_between(_view(before), _view(after)),
    )
    resource = (domain.RESOURCE_TYPE, after.id)
    uow.emit(f"invoice.{action}", resource, event_payload(after))
    if after.status is InvoiceStatus.PAID and (before is None or before.status is not InvoiceStatus.PAID):
        uow.emit("invoice.paid", resource, event_payload(after))


async def load(uow: InvoicesUnitOfWork, caller: Caller, invoice_id: str, *, for_update: bool) -> Invoice:
    invoice = None
    if len(invoice_id) <= ids.MAX_LENGTH:
        invoice = await uow.invoices.get(invoice_id, for_update=for_update)
    if invoice is None or (caller.customer_account not in (None, invoice.account_id)):
        raise domain.invoice_not_found(invoice_id)
    return invoice


async def _billing_now(uow: InvoicesUnitOfWork, account_id: str) -> datetime:
    return (await uow.clocks.time_for(account_id)).now


async def usage_lines_of(uow: InvoicesUnitOfWork, invoice: Invoice, basis: UsageBasis) -> list[InvoiceLine]:
    found = await uow.period_usage.period_usage(invoice.account_id, basis, invoice.subscription_id)
    return usage_lines(
        found,
        basis,
        invoice.currency_code,
        subscription_id=invoice.subscription_id,
        new_line_id=lambda: ids.new_id(domain.LINE_ID_PREFIX),
    )


def collected_automatically(invoice: Invoice) -> bool:
    """Whether a finalized invoice is charged by the collection worker: a subscription's invoice with
    something to pay. Others wait for PayInvoice or a payment made by hand."""
    return (
        bool(invoice.subscription_id)
        and invoice.status is InvoiceStatus.OPEN
        and invoice.amount_due_minor > 0
    )


async def finalize(deps: InvoiceDeps, uow: InvoicesUnitOfWork, invoice: Invoice, now: datetime) -> Invoice:
    """Number the stored draft, apply the account's credit balance, freeze it (in the caller's
    transaction); a subscription's invoice with an amount due is scheduled for collection at once.

    A draft with a usage basis has its usage lines made again first, from the usage recorded by
    now: usage that came in late for the closed period (in the grace period) is on the invoice."""
    done = await finalized(deps, uow, invoice, now)
    await uow.invoices.save(
        done, lines_changed=done.usage_basis is not None, collect_from=collection_start(done, now)
    )
    return done


async def finalized(
    deps: InvoiceDeps,
    uow: InvoicesUnitOfWork,
    invoice: Invoice,
    now: datetime,
    *,
    account_locked: bool = False,
    numbered: bool = True,
) -> Invoice:
    """`finalize` but for storing the invoice: the caller saves it (or adds it, when the draft was
    never stored), with `collection_start`. `account_locked`: the caller holds the account's row
    lock, exclusive, already. `numbered=False` leaves the number to the caller (`take_number`),
    which takes it later in the transaction."""
    domain.require(invoice, Action.FINALIZE)
    if invoice.usage_basis is not None:
        # The account's row lock: usage being recorded for it (which share-locks the account) commits
        # first and is read here, or waits and then finds the period invoiced and is refused.
        if not account_locked:
            await uow.accounts.terms(invoice.account_id, lock=True, exclusive=True)
        lines = without_usage(invoice.lines) + tuple(await usage_lines_of(uow, invoice, invoice.usage_basis))
        invoice = replace(invoice, lines=lines)
    balance = await uow.balances.balance(invoice.account_id, invoice.currency_code)
    number = await take_number(deps, uow) if numbered else ""
    done = domain.finalized(
        invoice,
        number=number,
        credit_balance_minor=balance,
        now=now,
        due_time=now + timedelta(days=deps.days_until_due),
    )
    change = domain.balance_change_at_finalize(done)
    if change:
        source = (domain.RESOURCE_TYPE, done.id)
        await uow.balances.change(done.account_id, done.currency_code, change, source=source, now=now)
    return done


async def take_number(deps: InvoiceDeps, uow: InvoicesUnitOfWork) -> str:
    """The next invoice number, under the sequence row's lock until the transaction ends."""
    return domain.number_text(deps.number_prefix, await uow.invoices.next_number(deps.number_prefix))


def collection_start(invoice: Invoice, now: datetime) -> datetime | None:
    """When the collection worker starts charging a just-finalized invoice: at once, if it is
    `collected_automatically`; else never."""
    return now if collected_automatically(invoice) else None


async def create_invoice(deps: InvoiceDeps, caller: Caller, command: CreateInvoice) -> Invoice:
    require_id(command.account_id, "account_id")
    _check_create(command)

    async def action(uow: InvoicesUnitOfWork) -> Invoice:
        # A share lock on the account: its currency cannot change while the invoice is made in it. A
        # period invoice, which bills usage, takes it exclusive: period invoices of one account are
        # made one after another (the second reads the first's period and leaves its usage out), and
        # usage being recorded for it (which share-locks the account) commits first and is read here.
        period = command.period_end is not None
        terms = await uow.accounts.terms(command.account_id, lock=True, exclusive=period)
        if terms is None or len(command.account_id) > ids.MAX_LENGTH:
            raise account_not_found(command.account_id)
        if not terms.live:
            raise FailedPrecondition(
                f"account {command.account_id!r} is deleted",
                reason="ACCOUNT_DELETED",
                metadata={"account_id": command.account_id},
            )
        now = await _billing_now(uow, command.account_id)
        invoice_id = ids.new_id(domain.ID_PREFIX)
        lines = []
        if command.period_start is not None and command.period_end is not None:
            usage = await _unbilled_usage(
                uow, command.account_id, (command.period_start, command.period_end), terms.currency_code
            )
            room = max(domain.MAX_LINES - len(command.lines) - len(usage), 0)
            items = await uow.invoices.take_pending_items(
                command.account_id, invoice_id, before=command.period_end, limit=room
            )
            lines = [line_from_item(item, ids.new_id(domain.LINE_ID_PREFIX)) for item in items] + usage
        lines += [_one_off(line, terms.currency_code) for line in command.lines]
        if not lines:
            raise FailedPrecondition(
                "nothing to invoice: the account has no pending items and no unbilled usage in the period,"
                " and no lines were given",
                reason="NOTHING_TO_INVOICE",
                metadata={"account_id": command.account_id},
            )
        invoice = Invoice(
            id=invoice_id,
            account_id=command.account_id,
            subscription_id="",
            number="",
            status=InvoiceStatus.DRAFT,
            reason=InvoiceReason.PERIOD if command.period_end is not None else InvoiceReason.ONE_OFF,
            currency_code=terms.currency_code,
            period_start=command.period_start,
            period_end=command.period_end,
            lines=tuple(lines),
            description=command.description,
            create_time=now,
            update_time=now,
        )
        await uow.invoices.add(invoice)
        await record_change(uow, caller, "created", None, invoice)
        if not command.finalize:
            return invoice
        done = await finalize(deps, uow, invoice, now)
        await record_change(uow, caller, "finalized", invoice, done)
        return done

    return (await deps.runner.run(caller, command, action)).value


async def _unbilled_usage(
    uow: InvoicesUnitOfWork, account_id: str, period: tuple[datetime, datetime], currency_code: str
) -> list[InvoiceLine]:
    """A period invoice's usage lines: one per meter, for the account's records with their own price
    timed in the period that no subscription bills (those in a subscription's live time are its own,
    billed by it or, in a trial or a pause, deliberately not) and no earlier period invoice that is not
    void billed. Periods may overlap; a record is billed once. The caller holds the account's row lock,
    exclusive."""
    start, end = period
    billed = [
        (found.start, found.end) for found in await uow.invoices.period_invoices(account_id, start, end)
    ]
    found = await uow.period_usage.unsubscribed_recorded(account_id, start, end, billed)
    return [
        recorded_line(
            usage, period, currency_code, subscription_id="", line_id=ids.new_id(domain.LINE_ID_PREFIX)
        )
        for usage in found
    ]


def _one_off(line: NewLine, currency_code: str) -> domain.InvoiceLine:
    return domain.one_off_line(
        ids.new_id(domain.LINE_ID_PREFIX),
        line.description,
        line.quantity,
        line.unit_price,
        currency_code,
        credit=line.credit,
    )


async def add_invoice_line(deps: InvoiceDeps, caller: Caller, command: AddInvoiceLine) -> Invoice:
    require_id(command.invoice_id, "invoice_id")
    violations = Violations()
    check_new_lines(violations, "line", [command.line])
    violations.raise_if_any()

    async def action(uow: InvoicesUnitOfWork) -> Invoice:
        invoice = await load(uow, caller, command.invoice_id, for_update=True)
        domain.require(invoice, Action.EDIT)
        if len(invoice.lines) >= domain.MAX_LINES:
            raise FailedPrecondition(
                f"an invoice holds at most {domain.MAX_LINES} lines",
                reason="TOO_MANY_LINES",
                metadata={"invoice_id": invoice.id},
            )
        now = await _billing_now(uow, invoice.account_id)
        lines = (*invoice.lines, _one_off(command.line, invoice.currency_code))
        edited = domain.with_lines(invoice, lines, now)
        await uow.invoices.save(edited, lines_changed=True)
        await record_change(uow, caller, "updated", invoice, edited)
        return edited

    return (await deps.runner.run(caller, command, action)).value


async def remove_invoice_line(deps: InvoiceDeps, caller: Caller, command: RemoveInvoiceLine) -> Invoice:
    require_id(command.invoice_id, "invoice_id")
    require_id(command.line_id, "line_id")

    async def action(uow: InvoicesUnitOfWork) -> Invoice:
        invoice = await load(uow, caller, command.invoice_id, for_update=True)
        domain.require(invoice, Action.EDIT)
        removed = [line for line in invoice.lines if line.id == command.line_id]
        if not removed:
            raise NotFound(
                f"invoice {invoice.id!r} has no line {excerpt(command.line_id)!r}",
                reason="INVOICE_LINE_NOT_FOUND",
                metadata={"line_id": excerpt(command.line_id)},
            )
        now = await _billing_now(uow, invoice.account_id)
        kept = tuple(line for line in invoice.lines if line.id != command.line_id)
        edited = domain.with_lines(invoice, kept, now)
        await uow.invoices.save(edited, lines_changed=True)
        await uow.invoices.release_pending_items(invoice.id, [line.pending_item_id for line in removed])
        await record_change(uow, caller, "updated", invoice, edited)
        return edited

    return (await deps.runner.run(caller, command, action)).value


async def finalize_invoice(deps: InvoiceDeps, caller: Caller, command: FinalizeInvoice) -> Invoice:
    require_id(command.id)

    async def action(uow: InvoicesUnitOfWork) -> Invoice:
        invoice = await load(uow, caller, command.id, for_update=True)
        done = await finalize(deps, uow, invoice, await _billing_now(uow, invoice.account_id))
        await record_change(uow, caller, "finalized", invoice, done)
        return done

    return (await deps.runner.run(caller, command, action)).value


async def void_invoice(deps: InvoiceDeps, caller: Caller, command: VoidInvoice) -> Invoice:
    require_id(command.id)

    async def action(uow: InvoicesUnitOfWork) -> Invoice:
        invoice = await load(uow, caller, command.id, for_update=True)
        now = await _billing_now(uow, invoice.account_id)
        done = domain.voided(invoice, now)
        if _bills_unsubscribed_usage(invoice):
            await _check_no_later_period_invoice(uow, invoice)
        if invoice.status is InvoiceStatus.DRAFT:  # its items are owed still: pending again
            items = [line.pending_item_id for line in invoice.lines if line.pending_item_id]
            await uow.invoices.release_pending_items(invoice.id, items)
        elif invoice.credits_applied_minor:  # the credit it took goes back to the account
            source = (domain.RESOURCE_TYPE, invoice.id)
            await uow.balances.change(
                invoice.account_id,
                invoice.currency_code,
                invoice.credits_applied_minor,
                source=source,
                now=now,
            )
        await uow.invoices.save(done)
        await record_change(uow, caller, "voided", invoice, done)
        if invoice.status is InvoiceStatus.OPEN:  # an uncollectible one was written off already
            await deps.written_off(uow, caller, done, now)
        return done

    return (await deps.runner.run(caller, command, action)).value


def _bills_unsubscribed_usage(invoice: Invoice) -> bool:
    """A period invoice with usage lines: records no subscription bills (`_unbilled_usage`)."""
    return invoice.reason is InvoiceReason.PERIOD and any(
        line.kind is LineKind.USAGE for line in invoice.lines
    )


async def _check_no_later_period_invoice(uow: InvoicesUnitOfWork, invoice: Invoice) -> None:
    """Voiding a period invoice makes the usage it billed billable again, except where the period of
    another period invoice that is not void overlaps it. One made later left that overlap out, so it
    would never be billed: that one is to be voided first. Under the account's exclusive row lock, as
    CreateInvoice for a period takes it, so none is made meanwhile. "Later" is by create time, the
    account's time: two made at one instant (a test clock's frozen time) cannot be told apart and do
    not stop each other's void (refusing both would leave neither voidable)."""
    if invoice.period_start is None or invoice.period_end is None:  # a period invoice has both
        return
    await uow.accounts.terms(invoice.account_id, lock=True, exclusive=True)
    overlapping = await uow.invoices.period_invoices(
        invoice.account_id, invoice.period_start, invoice.period_end
    )
    later = [
        found
        for found in overlapping
        if found.invoice_id != invoice.id and found.create_time > invoice.create_time
    ]
    if later:
        raise FailedPrecondition(
            f"invoice {invoice.id!r} billed usage of a period that the later invoice "
            f"{later[0].invoice_id!r} overlaps and left out: void that one first",
            reason="LATER_PERIOD_INVOICE",
            metadata={"invoice_id": invoice.id, "later_invoice_id": later[0].invoice_id},
        )


async def mark_uncollectible(deps: InvoiceDeps, caller: Caller, command: MarkInvoiceUncollectible) -> Invoice:
    require_id(command.id)

    async def action(uow: InvoicesUnitOfWork) -> Invoice:
        invoice = await load(uow, caller, command.id, for_update=True)
        now = await _billing_now(uow, invoice.account_id)
        done = domain.uncollectible(invoice, now)
        await uow.invoices.save(done)
        await record_change(uow, caller, "marked_uncollectible", invoice, done)
        await deps.written_off(uow, caller, done, now)
        return done

    return (await deps.runner.run(caller, command, action)).value


async def pay_invoice_out_of_band(deps: InvoiceDeps, caller: Caller, command: PayInvoice) -> Invoice:
    require_id(command.id)

    async def action(uow: InvoicesUnitOfWork) -> Invoice:
        invoice = await load(uow, caller, command.id, for_update=True)
        domain.require(invoice, Action.PAY)
        now = await _billing_now(uow, invoice.account_id)
        done = domain.paid(invoice, invoice.amount_remaining_minor, now)
        await uow.invoices.save(done)
        await record_change(uow, caller, "payment_recorded", invoice, done)
        return done

    return (await deps.runner.run(caller, command, action)).value


async def get_invoice(deps: InvoiceDeps, caller: Caller, invoice_id: str) -> Invoice:
    require_id(invoice_id)
    async with deps.new_reader() as uow:
        return await load(uow, caller, invoice_id, for_update=False)


async def list_invoices(
    deps: InvoiceDeps,
    caller: Caller,
    account_id: str,
    *,
    statuses: Sequence[InvoiceStatus] = (),
    subscription_id: str = "",
    created: TimeRange = domain.ALL_TIME,
    size: int = 0,
    page_token: str = "",
) -> InvoicePage:
    """The account's invoices, newest first, that match every filter given: a page of its billing
    history. A page token holds the filters it was issued for, and is refused with others."""
    require_id(account_id, "account_id")
    if caller.customer_account not in (None, account_id):
        raise account_not_found(account_id)
    if created.start is not None and created.end is not None and created.end <= created.start:
        raise InvalidArgument.field("create_time_end", "must be after create_time_start")
    wanted = sorted({status.value for status in statuses})
    scope: dict[str, object] = {
        "account_id": account_id,
        "statuses": wanted,
        "subscription_id": subscription_id,
    }
    # A bound of the range joins the scope only when given: a token issued before the range filter
    # existed (a listing without one) stays good.
    if created.start is not None:
        scope["create_time_start"] = created.start.isoformat()
    if created.end is not None:
        scope["create_time_end"] = created.end.isoformat()
    page = deps.page_tokens.keyset_page(size, page_token, scope)
    async with deps.new_reader() as uow:
        if len(account_id) > ids.MAX_LENGTH or await uow.accounts.terms(account_id) is None:
            raise account_not_found(account_id)
        rows = await uow.invoices.list_for_account(
            account_id=account_id,
            statuses=[InvoiceStatus(value) for value in wanted],
            subscription_id=subscription_id,
            created=created,
            after=page.after,
            limit=page.fetch_limit,
        )
    shown, token = page.slice(rows, key=lambda invoice: (invoice.create_time, invoice.id))
    return InvoicePage(shown, token)


@dataclass(frozen=True)
class Rendered:
    content_type: str
    data: bytes


async def render_invoice(
    deps: InvoiceDeps, caller: Caller, invoice_id: str, *, pdf: bool, locale: str
) -> Rendered:
    require_id(invoice_id)
    chosen = render.parse_locale(locale)
    async with deps.new_reader() as uow:
        invoice = await load(uow, caller, invoice_id, for_update=False)
        terms = await uow.accounts.terms(invoice.account_id)
    zone = ZoneInfo(terms.billing_time_zone if terms is not None else "UTC")
    fmt = render.Formatter(invoice.currency_code, chosen, zone)
    bill_to = None if terms is None else render.BillTo(terms.display_name, terms.email)
    if pdf:
        return Rendered("application/pdf", render.render_pdf(invoice, fmt, bill_to))
    return Rendered("text/html; charset=utf-8", render.render_html(invoice, fmt, bill_to).encode())
