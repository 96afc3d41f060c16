"""Invoice lines made from what subscriptions owe (pending invoice items). No I/O."""

from __future__ import annotations

from decimal import Decimal, localcontext

from billing_svc.invoices.domain import InvoiceLine, LineKind
from billing_svc.subscriptions.domain import ItemKind, PendingItem
from billing_svc.subscriptions.engine import SEAT_FEE
from core import currencies
from core.money import MAX_UNIT_PRICE_PLACES


def _unit_price(item: PendingItem) -> Decimal | None:
    """The whole fee's price of one unit, when the amount is exactly that times the quantity with at
    most 12 places (a per-seat price); None for prorations and tiered seat prices."""
    if item.kind is not ItemKind.FEE or item.quantity <= 0:
        return None
    amount = Decimal(item.amount_minor).scaleb(-currencies.exponent(item.currency_code))
    with localcontext() as context:
        context.prec = 60
        price = amount / item.quantity
        places = -int(price.as_tuple().exponent)
        if price * item.quantity != amount or places > MAX_UNIT_PRICE_PLACES:
            return None
    return price


def line_from_item(item: PendingItem, line_id: str) -> InvoiceLine:
    if item.kind is ItemKind.FEE:
        kind = LineKind.SEATS if item.fee_code == SEAT_FEE else LineKind.SUBSCRIPTION_FEE
    else:
        kind = LineKind.PRORATION
    return InvoiceLine(
        id=line_id,
        kind=kind,
        description=item.description,
        quantity=item.quantity,
        unit_price=_unit_price(item),
        amount_minor=item.amount_minor,
        period_start=item.period_start,
        period_end=item.period_end,
        subscription_id=item.subscription_id,
        pending_item_id=item.id,
    )
