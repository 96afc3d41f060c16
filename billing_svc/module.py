"""The billing service as the composition root sees it: services, tables, dependencies, servicers.

Serves tally.billing.v1 (MeterService, TestClockService, UsageService, InvoiceService, PaymentService,
GatewayEventService, WebhookService, EventService) and tally.subscription.v1 (PlanService,
SubscriptionService). One package per domain, each with the account module's layers: catalog/ (meters,
plans, pricing), subscriptions/ (lifecycle, periods, proration, entitlements), clocks/ (test clocks and
the account time billing reads), usage/ (recording usage exactly once), invoices/ (invoices, numbers,
credit balances), webhooks/ (endpoints, signed deliveries), events/ (the outbox read and watched by
clients), payments/ (payments through gateways, their refunds, the gateways' webhooks, the reconciler;
the gateway adapters).

Reads the override "run_due_work" (a billing_svc.clocks.ports.RunDueWork) from the platform, which
tests use to stand in for the subscriptions' work while they drive AdvanceTestClock, and
"payment_after_charge" (a callable given each ChargeResult before it is recorded), which crash tests use,
and "invoice_collector" (a billing_svc.collection.InvoiceCollector), which stands in for the payments
module's collect_invoice as what the collection worker and test clock advances charge invoices with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import cast

import grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing_svc.billing_work import BillingWork, SqlBillingUnitOfWork
from billing_svc.catalog.meter_servicer import MeterServicer
from billing_svc.catalog.meter_use_cases import MeterDeps
from billing_svc.catalog.plan_servicer import PlanServicer
from billing_svc.catalog.plan_use_cases import PlanDeps
from billing_svc.catalog.sql_unit_of_work import SqlCatalogUnitOfWork
from billing_svc.catalog.tables import MeterRow, PlanFeatureRow, PlanRow, PlanVersionRow
from billing_svc.clocks.ports import Collections, FinalizeDraft, RunDueWork
from billing_svc.clocks.servicer import TestClockServicer
from billing_svc.clocks.sql_unit_of_work import SqlTestClocksUnitOfWork
from billing_svc.clocks.tables import TestClockAccountRow, TestClockRow
from billing_svc.clocks.unit_of_work import TestClocksUnitOfWork
from billing_svc.clocks.use_cases import TestClockDeps
from billing_svc.collection import ClockCollections, DunningPolicy, InvoiceCollector, written_off
from billing_svc.events.reader import SqlEventReader
from billing_svc.events.servicer import EventServicer
from billing_svc.events.use_cases import EventDeps
from billing_svc.invoices.servicer import InvoiceServicer
from billing_svc.invoices.sql_unit_of_work import SqlInvoicesUnitOfWork
from billing_svc.invoices.tables import (
    CreditBalanceEntryRow,
    CreditBalanceRow,
    CreditNoteLineRow,
    CreditNoteRow,
    InvoiceLineRow,
    InvoiceNumberSequenceRow,
    InvoiceRow,
)
from billing_svc.invoices.use_cases import InvoiceDeps
from billing_svc.payments.collect import CollectionOutcome, PaymentDeps, collect_invoice
from billing_svc.payments.credit_refunds import CreditNoteRefunds
from billing_svc.payments.gateway_event_servicer import GatewayEventServicer
from billing_svc.payments.gateways.registry import GatewayFactory, GatewayRegistry
from billing_svc.payments.gateways.sandbox import SandboxGateway
from billing_svc.payments.gateways.stripe_gateway import StripeGateway
from billing_svc.payments.gateways.stripe_webhooks import StripeWebhooks
from billing_svc.payments.inbound import EventCounts
from billing_svc.payments.servicer import PaymentServicer
from billing_svc.payments.sql_unit_of_work import SqlPaymentsUnitOfWork
from billing_svc.payments.tables import (
    GatewayEventRow,
    PaymentAttemptRow,
    PaymentRefundRow,
    PaymentRow,
    PaymentSettingsRow,
)
from billing_svc.payments.use_cases import pay_invoice
from billing_svc.subscriptions.servicer import SubscriptionServicer
from billing_svc.subscriptions.sql_unit_of_work import SqlSubscriptionsUnitOfWork
from billing_svc.subscriptions.tables import PendingInvoiceItemRow, SubscriptionPhaseRow, SubscriptionRow
from billing_svc.subscriptions.use_cases import SubscriptionDeps
from billing_svc.usage.coalescer import Coalescer
from billing_svc.usage.read_unit_of_work import SqlUsageReadUnitOfWork
from billing_svc.usage.read_use_cases import UsageReadDeps
from billing_svc.usage.servicer import UsageServicer
from billing_svc.usage.sql_unit_of_work import SqlUsageUnitOfWork
from billing_svc.usage.tables import UsageEventIdRow, UsageHourlyRow, UsageRecordRow
from billing_svc.usage.use_cases import UsageDeps, record_usage_batch, window_from
from billing_svc.webhooks.delivery import SEALING_PURPOSE
from billing_svc.webhooks.servicer import WebhookServicer
from billing_svc.webhooks.sql_unit_of_work import SqlWebhooksUnitOfWork
from billing_svc.webhooks.tables import (
    WebhookAttemptRow,
    WebhookCursorRow,
    WebhookDeliveryRow,
    WebhookEndpointRow,
)
from billing_svc.webhooks.use_cases import WebhookDeps
from core.modules import Platform, ServiceModule
from core.principal import SYSTEM, Caller
from tally.billing.v1 import (
    event_pb2,
    event_pb2_grpc,
    invoice_pb2,
    invoice_pb2_grpc,
    meter_pb2,
    meter_pb2_grpc,
    payment_pb2,
    payment_pb2_grpc,
    test_clock_pb2,
    test_clock_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
    webhook_pb2,
    webhook_pb2_grpc,
)
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc, subscription_pb2, subscription_pb2_grpc


@dataclass(frozen=True)
class BillingServices:
    platform: Platform
    meters: MeterDeps
    plans: PlanDeps
    subscriptions: SubscriptionDeps
    test_clocks: TestClockDeps
    usage: UsageDeps
    usage_reads: UsageReadDeps
    invoices: InvoiceDeps
    payments: PaymentDeps
    # Stripe's webhooks (GatewayEventService): None without TALLY_STRIPE_WEBHOOK_SECRET.
    stripe_webhooks: StripeWebhooks | None
    gateway_events: EventCounts  # received events by gateway and outcome, for the app's metrics
    webhooks: WebhookDeps
    events: EventDeps
    new_billing_uow: Callable[[], SqlBillingUnitOfWork]  # the billing worker's transactions
    billing_work: BillingWork  # a boundary's work and its invoice; drafts finalized after grace
    collector: InvoiceCollector  # charges an invoice (payments' collect_invoice, or a test's stand-in)
    dunning: DunningPolicy


def _billing_uow(
    platform: Platform, sessions: async_sessionmaker[AsyncSession]
) -> Callable[[], SqlBillingUnitOfWork]:
    # Records are stamped with the wall clock; an account's test clock is read inside the transaction.
    return lambda: SqlBillingUnitOfWork(
        sessions,
        wall_clock=platform.wall_clock,
        account_directory=platform.account_directory,
        cache=platform.cache,
    )


def _test_clocks(
    platform: Platform, billing_work: BillingWork, collections: Collections | None
) -> TestClockDeps:
    # Records are stamped with the wall clock; frozen_time is the only simulated time here.
    wall = platform.wall_clock

    def test_clocks_uow(sessions: async_sessionmaker[AsyncSession]) -> Callable[[], SqlTestClocksUnitOfWork]:
        return lambda: SqlTestClocksUnitOfWork(
            sessions, wall_clock=wall, account_directory=platform.account_directory, cache=platform.cache
        )

    # An advance runs the billing worker's own work (renewals and their invoices) on one transaction
    # per piece of work; tests may stand in for it.
    work = cast(RunDueWork[TestClocksUnitOfWork], platform.overrides.get("run_due_work") or billing_work)
    return TestClockDeps(
        new_uow=_billing_uow(platform, platform.writers),
        new_reader=test_clocks_uow(platform.snapshots),  # a clock and its accounts: one snapshot
        clock=wall,
        page_tokens=platform.page_tokens,
        run_due_work=work,
        finalize_draft=cast(FinalizeDraft[TestClocksUnitOfWork], billing_work.finalize_due_draft),
        collections=collections,
    )


def _usage(platform: Platform) -> UsageDeps:
    # Events are timed against their receipt on the wall clock, whatever an account's test clock says.
    settings = platform.settings

    def new_usage_uow() -> SqlUsageUnitOfWork:
        return SqlUsageUnitOfWork(
            platform.writers, wall_clock=platform.wall_clock, account_directory=platform.account_directory
        )

    deps = UsageDeps(
        new_uow=new_usage_uow,
        clock=platform.wall_clock,
        window=window_from(settings.usage_late_window_hours, settings.usage_future_skew_seconds),
    )
    if not settings.usage_coalesce:
        return deps
    # Group commit: CreateUsageRecord calls that arrive together are recorded as one batch.
    coalescer = Coalescer(lambda caller, items: record_usage_batch(deps, caller, items))
    return replace(deps, coalesce=coalescer.record)


def _invoices(platform: Platform, payments: PaymentDeps) -> InvoiceDeps:
    def invoices_uow(sessions: async_sessionmaker[AsyncSession]) -> Callable[[], SqlInvoicesUnitOfWork]:
        return lambda: SqlInvoicesUnitOfWork(
            sessions, wall_clock=platform.wall_clock, account_directory=platform.account_directory
        )

    return InvoiceDeps(
        # Writes hold the subscriptions too: a write-off restores the subscription in its transaction.
        new_uow=_billing_uow(platform, platform.writers),
        new_reader=invoices_uow(platform.snapshots),  # an invoice and its lines: one snapshot
        clock=platform.wall_clock,
        page_tokens=platform.page_tokens,
        written_off=written_off,
        # A credit note refunded on the invoice's payments: the payments' own refund path.
        credit_refunds=CreditNoteRefunds(payments),
        number_prefix=platform.settings.invoice_number_prefix,
        days_until_due=platform.settings.invoice_days_until_due,
        grace_period=timedelta(seconds=platform.settings.invoice_grace_period_seconds),
    )


def _gateway_factories(platform: Platform) -> dict[str, GatewayFactory]:
    """The configured gateways; an adapter (and its HTTP session) is made on first use."""
    settings = platform.settings
    timeout = settings.payment_gateway_timeout_seconds
    connect = min(timeout, 3.0)

    def sandbox() -> SandboxGateway:
        return SandboxGateway(settings.sandbox_gateway_url, timeout=timeout, connect_timeout=connect)

    factories: dict[str, GatewayFactory] = {"sandbox": sandbox}
    key = settings.stripe_api_key
    if key is not None:

        def stripe() -> StripeGateway:
            return StripeGateway(
                key.get_secret_value(),
                api_base=settings.stripe_api_base,
                timeout=timeout,
                connect_timeout=connect,
            )

        factories["stripe"] = stripe
    return factories


def _payments(platform: Platform) -> PaymentDeps:
    # Payments keep wall time (their records, the attempts' due times); the invoice a payment pays is
    # marked paid at its account's billing time, inside the recording transaction.
    def payments_uow(sessions: async_sessionmaker[AsyncSession]) -> Callable[[], SqlPaymentsUnitOfWork]:
        return lambda: SqlPaymentsUnitOfWork(
            sessions, wall_clock=platform.wall_clock, account_directory=platform.account_directory
        )

    settings = platform.settings
    gateways = GatewayRegistry(
        _gateway_factories(platform),
        platform.wall_clock,
        default=settings.payment_gateway_default,
        by_currency=settings.gateway_by_currency,
    )
    crash = platform.overrides.get("payment_after_charge")
    deps = PaymentDeps(
        new_uow=payments_uow(platform.writers),
        new_reader=payments_uow(platform.snapshots),  # a payment, its attempts and refunds: one snapshot
        clock=platform.wall_clock,
        page_tokens=platform.page_tokens,
        gateways=gateways,
        retry_attempts=settings.payment_retry_attempts,
        retry_delay_seconds=settings.payment_retry_delay_seconds,
        reconcile_after=timedelta(seconds=settings.payment_reconcile_after_seconds),
        gateway_timeout=timedelta(seconds=settings.payment_gateway_timeout_seconds),
    )
    return replace(deps, after_charge=crash) if callable(crash) else deps


def _stripe_webhooks(platform: Platform) -> StripeWebhooks | None:
    """The signature check of Stripe's webhooks, on the wall clock; None when no secret is set."""
    secret = platform.settings.stripe_webhook_secret
    return StripeWebhooks(secret.get_secret_value(), platform.wall_clock) if secret is not None else None


def build(platform: Platform) -> BillingServices:
    # The catalog keeps infrastructure time: its records are stamped by the wall clock, never by
    # an account's (test) clock, which belongs to no plan or meter.
    clock = platform.wall_clock

    def new_catalog_uow() -> SqlCatalogUnitOfWork:
        return SqlCatalogUnitOfWork(platform.writers, clock=clock, cache=platform.cache)

    def new_catalog_reader() -> SqlCatalogUnitOfWork:
        return SqlCatalogUnitOfWork(platform.readers, clock=clock)

    def new_catalog_snapshot() -> SqlCatalogUnitOfWork:
        # A plan is read in two statements (the plan with its version, then the features).
        return SqlCatalogUnitOfWork(platform.snapshots, clock=clock)

    def subscriptions_uow(
        sessions: async_sessionmaker[AsyncSession],
    ) -> Callable[[], SqlSubscriptionsUnitOfWork]:
        return lambda: SqlSubscriptionsUnitOfWork(
            sessions, wall_clock=clock, account_directory=platform.account_directory, cache=platform.cache
        )

    meters = MeterDeps(
        new_uow=new_catalog_uow, new_reader=new_catalog_reader, clock=clock, page_tokens=platform.page_tokens
    )
    plans = PlanDeps(
        new_uow=new_catalog_uow,
        new_reader=new_catalog_snapshot,
        clock=clock,
        page_tokens=platform.page_tokens,
        cache=platform.cache,
    )
    payments = _payments(platform)
    invoices = _invoices(platform, payments)
    billing_work = BillingWork(invoices)
    # Writes hold the invoices too: a new subscription's first invoice, and the invoices of the
    # boundaries a change catches up on, commit with it. Reads of a subscription touch the plan too
    # (a preview, the entitlements join): one snapshot.
    subscriptions = SubscriptionDeps(
        new_uow=_billing_uow(platform, platform.writers),
        new_reader=subscriptions_uow(platform.snapshots),
        wall_clock=clock,
        page_tokens=platform.page_tokens,
        cache=platform.cache,
        boundary_work=billing_work,
    )
    # A summary reads records, meters, the subscription, its plan and the account's clock: one snapshot.
    usage_reads = UsageReadDeps(
        new_reader=lambda: SqlUsageReadUnitOfWork(
            platform.snapshots, wall_clock=clock, account_directory=platform.account_directory
        ),
        clock=clock,
        page_tokens=platform.page_tokens,
    )
    settings = platform.settings
    dunning = DunningPolicy.from_settings(
        settings.dunning_retry_days, settings.dunning_end_state, settings.collection_retry_delay_seconds
    )

    async def collect(invoice_id: str) -> CollectionOutcome:
        return await collect_invoice(payments, SYSTEM, invoice_id)

    collector = cast(InvoiceCollector, platform.overrides.get("invoice_collector") or collect)
    # A rehearsal's collections are not counted in tally_collections_total (the worker's are).
    collections = ClockCollections(_billing_uow(platform, platform.writers), collector, dunning, clock)
    return BillingServices(
        platform=platform,
        usage_reads=usage_reads,
        meters=meters,
        plans=plans,
        subscriptions=subscriptions,
        test_clocks=_test_clocks(platform, billing_work, collections),
        usage=_usage(platform),
        invoices=invoices,
        payments=payments,
        stripe_webhooks=_stripe_webhooks(platform),
        gateway_events=EventCounts(),
        webhooks=WebhookDeps(
            lambda: SqlWebhooksUnitOfWork(platform.writers, clock=clock),
            clock,
            platform.server_key.sealer(SEALING_PURPOSE),
            platform.page_tokens,
            allow_private_targets=platform.settings.webhook_allow_private_targets,
        ),
        events=EventDeps(
            SqlEventReader(platform.readers),  # one statement per read: no transaction held
            platform.page_tokens,
            poll_seconds=platform.settings.events_watch_poll_seconds,
            heartbeat_seconds=platform.settings.events_watch_heartbeat_seconds,
            commits=platform.outbox_commits,
        ),
        new_billing_uow=_billing_uow(platform, platform.writers),
        billing_work=billing_work,
        collector=collector,
        dunning=dunning,
    )


def register(server: grpc.aio.Server, services: BillingServices) -> None:
    meter_pb2_grpc.add_MeterServiceServicer_to_server(MeterServicer(services.meters), server)
    plan_pb2_grpc.add_PlanServiceServicer_to_server(PlanServicer(services.plans), server)
    subscription_pb2_grpc.add_SubscriptionServiceServicer_to_server(
        SubscriptionServicer(services.subscriptions), server
    )
    test_clock_pb2_grpc.add_TestClockServiceServicer_to_server(
        TestClockServicer(services.test_clocks), server
    )
    usage = UsageServicer(services.usage, services.usage_reads)
    usage_pb2_grpc.add_UsageServiceServicer_to_server(usage, server)
    payments = services.payments

    async def collect(caller: Caller, invoice_id: str, payment_method: str) -> None:
        await pay_invoice(payments, caller, invoice_id, payment_method)

    invoice_pb2_grpc.add_InvoiceServiceServicer_to_server(InvoiceServicer(services.invoices, collect), server)
    payment_pb2_grpc.add_PaymentServiceServicer_to_server(PaymentServicer(payments), server)
    payment_pb2_grpc.add_GatewayEventServiceServicer_to_server(
        GatewayEventServicer(payments, services.stripe_webhooks, services.gateway_events), server
    )
    webhook_pb2_grpc.add_WebhookServiceServicer_to_server(WebhookServicer(services.webhooks), server)
    event_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(services.events), server)


MODULE: ServiceModule[BillingServices] = ServiceModule(
    name="billing",
    package="billing_svc",
    services=(
        meter_pb2.DESCRIPTOR.services_by_name["MeterService"],
        plan_pb2.DESCRIPTOR.services_by_name["PlanService"],
        subscription_pb2.DESCRIPTOR.services_by_name["SubscriptionService"],
        test_clock_pb2.DESCRIPTOR.services_by_name["TestClockService"],
        usage_pb2.DESCRIPTOR.services_by_name["UsageService"],
        invoice_pb2.DESCRIPTOR.services_by_name["InvoiceService"],
        payment_pb2.DESCRIPTOR.services_by_name["PaymentService"],
        payment_pb2.DESCRIPTOR.services_by_name["GatewayEventService"],
        webhook_pb2.DESCRIPTOR.services_by_name["WebhookService"],
        event_pb2.DESCRIPTOR.services_by_name["EventService"],
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
        UsageRecordRow,
        UsageEventIdRow,
        UsageHourlyRow,
        InvoiceRow,
        InvoiceLineRow,
        InvoiceNumberSequenceRow,
        CreditBalanceRow,
        CreditBalanceEntryRow,
        CreditNoteRow,
        CreditNoteLineRow,
        WebhookEndpointRow,
        WebhookDeliveryRow,
        WebhookAttemptRow,
        WebhookCursorRow,
        PaymentRow,
        PaymentAttemptRow,
        PaymentRefundRow,
        PaymentSettingsRow,
        GatewayEventRow,
    ),
    build=build,
    register=register,
)
