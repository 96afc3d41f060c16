"""Cycle invoices: the invoice of each subscription boundary (its start, renewals, a trial's end),
made in the transaction of the boundary's work, and the finalization of those that wait out a
grace period. billing_svc/billing_work.py calls these; the invoices' own actions are use_cases.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from billing_svc.invoices import domain
from billing_svc.invoices.domain import Invoice, InvoiceReason, InvoiceStatus, UsageBasis
from billing_svc.invoices.lines import line_from_item
from billing_svc.invoices.ports import InvoicesUnitOfWork
from billing_svc.invoices.use_cases import (
    InvoiceDeps,
    collection_start,
    finalize,
    finalized,
    record_change,
    usage_lines_of,
)
from core import ids
from core.principal import Caller


def cycle_key(subscription_id: str, period_start: datetime) -> str:
    """The key of a subscription's cycle invoice: one invoice per subscription per period start."""
    return f"{subscription_id}/{period_start.isoformat()}"


async def invoice_cycle(
    deps: InvoiceDeps,
    uow: InvoicesUnitOfWork,
    caller: Caller,
    *,
    account_id: str,
    subscription_id: str,
    at: datetime,
    usage: UsageBasis | None = None,
    recorded_only: bool = False,
) -> Invoice | None:
    """The cycle invoice of a subscription's boundary at `at` (its start, a renewal, a trial's end),
    made in the caller's transaction: every pending item of the subscription that starts at or
    before `at` (the new period's fees in advance, the prorations of the period that ended), and,
    given the `usage` basis of the period that ended, its usage in arrears. A `recorded_only` basis
    (a plan without metered charges or a minimum) bills records with their own price only: without
    any in the period, it is dropped (the invoice is finalized at once, as one without usage).

    An invoice that bills usage stays a draft for the grace period (deps.grace_period, its
    `grace_until`): the billing worker, or the test clock's advance, finalizes it then, with its
    usage lines made again (`finalize`). Any other is finalized at once.

    An invoice finalized at once is returned without its number, which the transaction takes
    last, at commit (with its audit rows and events).

    None when the boundary's invoice exists already (the work ran before and committed) or the
    subscription owes nothing. `cycle_key` is unique, so even two workers racing past the
    subscription's row lock cannot store a second invoice for the period.
    """
    key = cycle_key(subscription_id, at)
    if await uow.invoices.cycle_invoice_exists(key):
        return None
    # Exclusive when it bills usage, as finalize locks it (taken first: no upgrade from a share lock).
    terms = await uow.accounts.terms(account_id, lock=True, exclusive=usage is not None)
    if terms is None:  # subscriptions keep their account; a missing one is corrupt data
        raise LookupError(f"account {account_id} of subscription {subscription_id} is missing")
    invoice_id = ids.new_id(domain.ID_PREFIX)
    # Times are stored to the microsecond, so "starts before at + 1 µs" is "starts at or before at".
    items = await uow.invoices.take_pending_items(
        account_id,
        invoice_id,
        before=at + timedelta(microseconds=1),
        limit=domain.MAX_LINES,
        subscription_id=subscription_id,
    )
    if (
        usage is not None
        and recorded_only
        and not (await uow.period_usage.period_usage(account_id, usage, subscription_id)).recorded
    ):
        usage = None
    if not items and usage is None:
        return None
    starts = [item.period_start for item in items] + ([usage.period_start] if usage else [])
    ends = [item.period_end for item in items] + ([usage.period_end] if usage else [])
    grace = usage is not None and deps.grace_period > timedelta(0)
    invoice = Invoice(
        id=invoice_id,
        account_id=account_id,
        subscription_id=subscription_id,
        number="",
        status=InvoiceStatus.DRAFT,
        reason=InvoiceReason.SUBSCRIPTION_CYCLE,
        currency_code=terms.currency_code,
        period_start=min(starts),
        period_end=max(ends),
        lines=tuple(line_from_item(item, ids.new_id(domain.LINE_ID_PREFIX)) for item in items),
        description="",
        create_time=at,
        update_time=at,
        usage_basis=usage,
        grace_until=at + deps.grace_period if grace else None,
    )
    if grace:  # the usage so far, shown on the draft (finalize makes the usage lines itself)
        assert usage is not None
        invoice = replace(invoice, lines=invoice.lines + tuple(await usage_lines_of(uow, invoice, usage)))
    if grace:
        await uow.invoices.add(invoice, cycle_key=key)
        await record_change(uow, caller, "created", None, invoice)
        return invoice
    # Finalized before it is stored: one INSERT of the final invoice and its lines (the account's
    # lock, exclusive when it bills usage, was taken above). Its number is the transaction's last
    # write (uow.last_write): every finalizing transaction queues on the sequence row's lock, so
    # it is taken right before the audit rows, the events and COMMIT, which are all it is held
    # for. Audited and announced then, numbered, as before: made as a draft, then finalized.
    done = await finalized(deps, uow, invoice, at, account_locked=True, numbered=False)
    await uow.invoices.add(done, cycle_key=key, collect_from=collection_start(done, at))

    async def number_and_record() -> None:
        numbered = replace(done, number=await uow.invoices.number_invoice(done.id, deps.number_prefix))
        await record_change(uow, caller, "created", None, invoice)
        await record_change(uow, caller, "finalized", invoice, numbered)

    uow.last_write(number_and_record)
    return done


async def finalize_after_grace(
    deps: InvoiceDeps, uow: InvoicesUnitOfWork, caller: Caller, invoice_id: str, now: datetime
) -> Invoice | None:
    """Finalize a draft whose grace period has ended by `now`, in the caller's transaction; None
    when it is no longer such a draft (finalized or voided meanwhile, or its grace not over)."""
    invoice = await uow.invoices.get(invoice_id, for_update=True)
    if invoice is None or invoice.status is not InvoiceStatus.DRAFT:
        return None
    if invoice.grace_until is None or invoice.grace_until > now:
        return None
    done = await finalize(deps, uow, invoice, now)
    await record_change(uow, caller, "finalized", invoice, done)
    return done
