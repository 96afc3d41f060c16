"""Money and unit prices on the wire: tally.type.v1.Money and google.type.Decimal.

Kept apart from core.money so that domain code can use Money without
importing protobuf. Servicers call these at the edge; bad input becomes an
InvalidArgument naming the field path, as google.rpc.BadRequest wants it.
"""

from __future__ import annotations

from decimal import Decimal

from google.type import decimal_pb2

from core import currencies
from core.errors import InvalidArgument
from core.money import Money, parse_unit_price
from core.text import excerpt
from tally.type.v1 import money_pb2


def money_to_proto(money: Money) -> money_pb2.Money:
    if not isinstance(money, Money):
        raise TypeError(f"expected Money, not {type(money).__name__}")
    return money_pb2.Money(currency_code=money.currency_code, amount_minor=money.amount_minor)


def money_from_proto(message: money_pb2.Money, *, field: str) -> Money:
    """Money from the wire. `field` is the message's path in the request, such as `line.amount`.

    amount_minor needs no check (int64 is Money's range); the currency must be
    one Tally bills in, in upper case.
    """
    code = message.currency_code
    if not code:
        raise InvalidArgument.field(f"{field}.currency_code", "is required")
    if not currencies.is_known(code):
        raise InvalidArgument.field(
            f"{field}.currency_code",
            f"{excerpt(code)!r} is not an ISO 4217 currency code Tally bills in (e.g. USD)",
        )
    return Money(code, message.amount_minor)


def decimal_to_proto(value: Decimal | int) -> decimal_pb2.Decimal:
    """A google.type.Decimal in plain notation ("0.000125", never "1.25E-4"), scale kept."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"expected a Decimal or an int, not {type(value).__name__}")
    exact = Decimal(value)
    if not exact.is_finite():
        raise ValueError(f"cannot send {exact} as a google.type.Decimal")
    return decimal_pb2.Decimal(value=format(exact, "f"))


def decimal_from_proto(message: decimal_pb2.Decimal, *, field: str) -> Decimal:
    """A unit price from a google.type.Decimal; the rules are parse_unit_price's.

    We accept a documented subset of the google.type.Decimal grammar: no
    exponent, at most 12 decimal places, below 10^18, not negative. An empty
    value is refused although the type's comment suggests reading it as 0: a
    price that silently became zero would bill nothing.
    """
    return parse_unit_price(message.value, field=f"{field}.value")
