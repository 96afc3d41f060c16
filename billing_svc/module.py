"""The billing service as the composition root sees it: services, tables, dependencies, servicers.

Serves tally.billing.v1 (MeterService, TestClockService) and tally.subscription.v1 (PlanService,
SubscriptionService). One package per domain, each with the account module's layers:
catalog/ (meters, plans, pricing), subscriptions/ (lifecycle, periods, proration, entitlements),
clocks/ (test clocks and the account time billing reads).

Reads the override "run_due_work" (a billing_svc.clocks.ports.RunDueWork) from the platform, which
tests use to stand in for the subscriptions' work while they drive AdvanceTestClock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import grpc

from billing_svc.catalog.tables import MeterRow, PlanFeatureRow, PlanRow, PlanVersionRow
from billing_svc.clocks.ports import DoneWork, RunDueWork
from billing_svc.clocks.servicer import TestClockServicer
from billing_svc.clocks.sql_unit_of_work import SqlTestClocksUnitOfWork
from billing_svc.clocks.tables import TestClockAccountRow, TestClockRow
from billing_svc.clocks.unit_of_work import TestClocksUnitOfWork
from billing_svc.clocks.use_cases import TestClockDeps
from billing_svc.subscriptions.tables import PendingInvoiceItemRow, SubscriptionPhaseRow, SubscriptionRow
from core.errors import FailedPrecondition
from core.modules import Platform, ServiceModule
from tally.billing.v1 import meter_pb2, meter_pb2_grpc, test_clock_pb2, test_clock_pb2_grpc
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc, subscription_pb2, subscription_pb2_grpc


@dataclass(frozen=True)
class BillingServices:
    platform: Platform
    test_clocks: TestClockDeps


async def _no_subscription_work(
    uow: TestClocksUnitOfWork, subscription_id: str, now: datetime
) -> Sequence[DoneWork]:
    # Stands in until billing_svc/subscriptions/work.py (run_due_work) is on this branch: nothing
    # creates subscriptions before it, so no advance finds work to run.
    raise FailedPrecondition(
        "subscription work is not available in this build",
        reason="SUBSCRIPTION_WORK_UNAVAILABLE",
        metadata={"subscription_id": subscription_id},
    )


def _test_clocks(platform: Platform) -> TestClockDeps:
    # Records are stamped with the wall clock; frozen_time is the only simulated time here.
    wall = platform.wall_clock

    def new_uow() -> SqlTestClocksUnitOfWork:
        return SqlTestClocksUnitOfWork(
            platform.writers, wall_clock=wall, account_directory=platform.account_directory
        )

    def new_reader() -> SqlTestClocksUnitOfWork:
        return SqlTestClocksUnitOfWork(
            platform.snapshots, wall_clock=wall, account_directory=platform.account_directory
        )

    run_due_work = cast(
        RunDueWork[TestClocksUnitOfWork], platform.overrides.get("run_due_work") or _no_subscription_work
    )
    return TestClockDeps(
        new_uow=new_uow,
        new_reader=new_reader,
        clock=wall,
        page_tokens=platform.page_tokens,
        run_due_work=run_due_work,
    )


def build(platform: Platform) -> BillingServices:
    return BillingServices(platform=platform, test_clocks=_test_clocks(platform))


def register(server: grpc.aio.Server, services: BillingServices) -> None:
    meter_pb2_grpc.add_MeterServiceServicer_to_server(meter_pb2_grpc.MeterServiceServicer(), server)  # type: ignore[abstract]
    plan_pb2_grpc.add_PlanServiceServicer_to_server(plan_pb2_grpc.PlanServiceServicer(), server)  # type: ignore[abstract]
    subscription_pb2_grpc.add_SubscriptionServiceServicer_to_server(
        subscription_pb2_grpc.SubscriptionServiceServicer(), server  # type: ignore[abstract]
    )
    test_clocks = TestClockServicer(services.test_clocks)
    test_clock_pb2_grpc.add_TestClockServiceServicer_to_server(test_clocks, server)


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
