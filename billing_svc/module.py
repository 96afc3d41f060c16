"""The billing service as the composition root sees it: services, tables, dependencies, servicers.

Serves tally.billing.v1 (MeterService, TestClockService) and tally.subscription.v1 (PlanService,
SubscriptionService). One package per domain, each with the account module's layers:
catalog/ (meters, plans, pricing), subscriptions/ (lifecycle, periods, proration, entitlements),
clocks/ (test clocks and the account time billing reads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing_svc.catalog.tables import MeterRow, PlanFeatureRow, PlanRow, PlanVersionRow
from billing_svc.clocks.tables import TestClockAccountRow, TestClockRow
from billing_svc.subscriptions.servicer import SubscriptionServicer
from billing_svc.subscriptions.sql_unit_of_work import SqlSubscriptionsUnitOfWork
from billing_svc.subscriptions.tables import PendingInvoiceItemRow, SubscriptionPhaseRow, SubscriptionRow
from billing_svc.subscriptions.use_cases import SubscriptionDeps
from core.modules import Platform, ServiceModule
from tally.billing.v1 import meter_pb2, meter_pb2_grpc, test_clock_pb2, test_clock_pb2_grpc
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc, subscription_pb2, subscription_pb2_grpc


@dataclass(frozen=True)
class BillingServices:
    platform: Platform
    subscriptions: SubscriptionDeps


def build(platform: Platform) -> BillingServices:
    def subscriptions_uow(
        sessions: async_sessionmaker[AsyncSession],
    ) -> Callable[[], SqlSubscriptionsUnitOfWork]:
        return lambda: SqlSubscriptionsUnitOfWork(
            sessions, wall_clock=platform.wall_clock, account_directory=platform.account_directory
        )

    subscriptions = SubscriptionDeps(
        new_uow=subscriptions_uow(platform.writers),
        new_reader=subscriptions_uow(platform.readers),
        wall_clock=platform.wall_clock,
        page_tokens=platform.page_tokens,
    )
    return BillingServices(platform=platform, subscriptions=subscriptions)


def register(server: grpc.aio.Server, services: BillingServices) -> None:
    meter_pb2_grpc.add_MeterServiceServicer_to_server(meter_pb2_grpc.MeterServiceServicer(), server)  # type: ignore[abstract]
    plan_pb2_grpc.add_PlanServiceServicer_to_server(plan_pb2_grpc.PlanServiceServicer(), server)  # type: ignore[abstract]
    subscription_pb2_grpc.add_SubscriptionServiceServicer_to_server(
        SubscriptionServicer(services.subscriptions), server
    )
    test_clock_pb2_grpc.add_TestClockServiceServicer_to_server(
        test_clock_pb2_grpc.TestClockServiceServicer(),  # type: ignore[abstract]
        server,
    )


MODULE: ServiceModule[BillingServices] = ServiceModule(
    name="billing",
    package="billing_svc",
    services=(
        meter_pb2.DESCRIPTOR.services_by_name["MeterService"],
        plan_pb2.DESCRIPTOR.services_by_name["PlanService"],
        subscription_pb2.DESCRIPTOR.services_by_name["SubscriptionService"],
        test_clock_pb2.DESCRIPTOR.services_by_name["TestClockService"],
    ),
    models=(
        MeterRow,
        PlanRow,
        PlanVersionRow,
        PlanFeatureRow,
        SubscriptionRow,
        SubscriptionPhaseRow,
        PendingInvoiceItemRow,
        TestClockRow,
        TestClockAccountRow,
    ),
    build=build,
    register=register,
)
