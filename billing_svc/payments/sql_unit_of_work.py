"""The payments' unit of work on SQL: the invoices' repositories plus the payments', one session."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.invoices.sql_unit_of_work import SqlInvoicesUnitOfWork
from billing_svc.payments.ports import GatewayEventRepository, PaymentRepository, PaymentSettingsRepository
from billing_svc.payments.repository import (
    SqlGatewayEventRepository,
    SqlPaymentRepository,
    SqlPaymentSettingsRepository,
)


class SqlPaymentsUnitOfWork(SqlInvoicesUnitOfWork):
    """Fills PaymentsUnitOfWork (billing_svc.payments.ports)."""

    payments: PaymentRepository
    payment_settings: PaymentSettingsRepository
    gateway_events: GatewayEventRepository

    def _bind(self, session: AsyncSession) -> None:
        super()._bind(session)
        self.payments = SqlPaymentRepository(session)
        self.payment_settings = SqlPaymentSettingsRepository(session)
        self.gateway_events = SqlGatewayEventRepository(session)
