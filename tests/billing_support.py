"""Builders for billing tests: accounts, meters and plans over gRPC, in a few lines each."""

from __future__ import annotations

from google.protobuf import field_mask_pb2
from google.type import decimal_pb2

from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.billing.v1 import payment_pb2, payment_pb2_grpc
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc
from tally.type.v1 import money_pb2

MONTH = plan_pb2.BillingInterval(unit=plan_pb2.BillingInterval.UNIT_MONTH, count=1)
YEAR = plan_pb2.BillingInterval(unit=plan_pb2.BillingInterval.UNIT_YEAR, count=1)


def usd(minor: int, currency: str = "USD") -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, amount_minor=minor)


def per_seat(price: str) -> plan_pb2.SeatPrice:
    return plan_pb2.SeatPrice(
        description="Seats",
        price=plan_pb2.Price(per_unit=plan_pb2.PerUnitPrice(unit_price=decimal_pb2.Decimal(value=price))),
    )


async def new_account(
    channel: object, n: int, *, currency: str = "USD", zone: str = "", email: str = ""
) -> account_pb2.Account:
    stub = account_pb2_grpc.AccountServiceStub(channel)
    return await stub.CreateAccount(
        account_pb2.CreateAccountRequest(
            account=account_pb2.Account(
                display_name=f"Customer {n}",
                email=email or f"billing{n}@example.test",
                currency_code=currency,
                billing_time_zone=zone,
            )
        )
    )


async def new_plan(
    channel: object,
    code: str,
    *,
    base_minor: int | None = 3000,
    currency: str = "USD",
    interval: plan_pb2.BillingInterval = MONTH,
    trial_days: int = 0,
    seat_price: plan_pb2.SeatPrice | None = None,
    features: list[plan_pb2.Feature] | None = None,
) -> plan_pb2.Plan:
    stub = plan_pb2_grpc.PlanServiceStub(channel)
    plan = plan_pb2.Plan(
        code=code,
        display_name=code.replace("-", " ").title(),
        currency_code=currency,
        billing_interval=interval,
        trial_days=trial_days,
        features=features or [],
    )
    if base_minor is not None:
        plan.base_fee.CopyFrom(usd(base_minor, currency))
    if seat_price is not None:
        plan.seat_price.CopyFrom(seat_price)
    return await stub.CreatePlan(plan_pb2.CreatePlanRequest(plan=plan))


async def set_payment_method(channel: object, account_id: str, token: str) -> None:
    stub = payment_pb2_grpc.PaymentServiceStub(channel)
    settings = payment_pb2.PaymentSettings(account_id=account_id, default_payment_method=token)
    mask = field_mask_pb2.FieldMask(paths=["default_payment_method"])
    await stub.UpdatePaymentSettings(
        payment_pb2.UpdatePaymentSettingsRequest(settings=settings, update_mask=mask)
    )
