"""Payments and payment settings on SQL. Repositories never commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.payments.domain import (
    UNSETTLED,
    Attempt,
    AttemptStatus,
    Payment,
    PaymentSettings,
    PaymentStatus,
    Refund,
    RefundStatus,
)
from billing_svc.payments.tables import (
    GatewayEventRow,
    PaymentAttemptRow,
    PaymentRefundRow,
    PaymentRow,
    PaymentSettingsRow,
)
from core.claims import WorkQueue
from core.db import add_all_rows, upsert_into
from core.pagination import keyset_after


def _payment_values(payment: Payment) -> dict[str, Any]:
    return {
        "account_id": payment.account_id,
        "invoice_id": payment.invoice_id,
        "currency_code": payment.currency_code,
        "amount_minor": payment.amount_minor,
        "status": payment.status.value,
        "gateway": payment.gateway,
        "payment_method": payment.payment_method,
        "description": payment.description,
        "failure_code": payment.failure_code,
        "failure_message": payment.failure_message,
        "create_time": payment.create_time,
        "update_time": payment.update_time,
    }


def _attempt_rows(payment: Payment, reconcile_at: datetime | None) -> list[dict[str, Any]]:
    return [
        {
            "id": attempt.id,
            "payment_id": payment.id,
            "account_id": payment.account_id,
            "position": position,
            "status": attempt.status.value,
            "decline_code": attempt.decline_code,
            "message": attempt.message,
            "reference": attempt.reference,
            "create_time": attempt.create_time,
            "finish_time": attempt.finish_time,
            # Unsettled attempts are the reconciler's work once the inline protocol had its chance.
            "due_time": reconcile_at if attempt.status in UNSETTLED else None,
        }
        for position, attempt in enumerate(payment.attempts)
    ]


def _refund_rows(payment: Payment, reconcile_at: datetime | None) -> list[dict[str, Any]]:
    """A pending refund is due at `reconcile_at`; None leaves a stored one's due time as it is (a
    new one, due at once, should there be one): settling one refund neither unschedules another
    still pending nor makes it due sooner, while its own sending may still be on its way."""
    return [
        {
            "id": refund.id,
            "payment_id": payment.id,
            "account_id": payment.account_id,
            "position": position,
            "amount_minor": refund.amount_minor,
            "status": refund.status.value,
            "reason": refund.reason,
            "reference": refund.reference,
            "message": refund.message,
            "create_time": refund.create_time,
            "credit_note_id": refund.credit_note_id or None,
            "due_time": None
            if refund.status is not RefundStatus.PENDING
            else reconcile_at or refund.create_time,
        }
        for position, refund in enumerate(payment.refunds)
    ]


def _attempt(row: PaymentAttemptRow) -> Attempt:
    return Attempt(
        id=row.id,
        status=AttemptStatus(row.status),
        create_time=row.create_time,
        decline_code=row.decline_code,
        message=row.message,
        reference=row.reference,
        finish_time=row.finish_time,
    )


def _refund(row: PaymentRefundRow) -> Refund:
    return Refund(
        id=row.id,
        amount_minor=row.amount_minor,
        status=RefundStatus(row.status),
        reason=row.reason,
        create_time=row.create_time,
        reference=row.reference,
        message=row.message,
        credit_note_id=row.credit_note_id or "",
    )


def _payment(row: PaymentRow, attempts: Sequence[Attempt], refunds: Sequence[Refund]) -> Payment:
    return Payment(
        id=row.id,
        account_id=row.account_id,
        invoice_id=row.invoice_id,
        currency_code=row.currency_code,
        amount_minor=row.amount_minor,
        status=PaymentStatus(row.status),
        gateway=row.gateway,
        payment_method=row.payment_method,
        description=row.description,
        create_time=row.create_time,
        update_time=row.update_time,
        failure_code=row.failure_code,
        failure_message=row.failure_message,
        attempts=tuple(attempts),
        refunds=tuple(refunds),
    )


ATTEMPTS = WorkQueue.of(PaymentAttemptRow)  # the reconciler's work: unsettled attempts, by due time
REFUNDS = WorkQueue.of(PaymentRefundRow)  # and pending refunds
_FIXED = frozenset(
    {"id", "payment_id", "account_id", "position", "create_time", "amount_minor", "credit_note_id"}
)


class SqlPaymentRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    @property
    def session(self) -> AsyncSession:
        return self._session

    async def _children(
        self, payment_ids: Sequence[str]
    ) -> tuple[dict[str, list[Attempt]], dict[str, list[Refund]]]:
        attempts: dict[str, list[Attempt]] = {payment_id: [] for payment_id in payment_ids}
        refunds: dict[str, list[Refund]] = {payment_id: [] for payment_id in payment_ids}
        if not payment_ids:
            return attempts, refunds
        attempt_rows = await self._session.scalars(
            select(PaymentAttemptRow)
            .where(PaymentAttemptRow.payment_id.in_(payment_ids))
            .order_by(PaymentAttemptRow.payment_id, PaymentAttemptRow.position)
        )
        for row in attempt_rows.all():
            attempts[row.payment_id].append(_attempt(row))
        refund_rows = await self._session.scalars(
            select(PaymentRefundRow)
            .where(PaymentRefundRow.payment_id.in_(payment_ids))
            .order_by(PaymentRefundRow.payment_id, PaymentRefundRow.position)
        )
        for refund_row in refund_rows.all():
            refunds[refund_row.payment_id].append(_refund(refund_row))
        return attempts, refunds

    async def get(self, payment_id: str, *, for_update: bool = False) -> Payment | None:
        row = await self._session.get(PaymentRow, payment_id, with_for_update=for_update)
        if row is None:
            return None
        attempts, refunds = await self._children([row.id])
        return _payment(row, attempts[row.id], refunds[row.id])

    async def add(self, payment: Payment, *, reconcile_at: datetime) -> None:
        await self._session.execute(insert(PaymentRow).values(id=payment.id, **_payment_values(payment)))
        await add_all_rows(self._session, PaymentAttemptRow, _attempt_rows(payment, reconcile_at))

    async def save(self, payment: Payment, *, reconcile_at: datetime | None) -> None:
        """The payment, its attempts and its refunds as they now are. Children are upserted by id,
        never deleted, so a child's claim (claimed_by, lease_until) survives a save."""
        await self._session.execute(
            update(PaymentRow).where(PaymentRow.id == payment.id).values(**_payment_values(payment))
        )
        for model, rows in (
            (PaymentAttemptRow, _attempt_rows(payment, reconcile_at)),
            (PaymentRefundRow, _refund_rows(payment, reconcile_at)),
        ):
            for values in rows:
                kept = _FIXED
                if model is PaymentRefundRow and reconcile_at is None and values["due_time"] is not None:
                    kept = _FIXED | {"due_time"}  # a pending refund keeps its schedule
                changed = {name: value for name, value in values.items() if name not in kept}
                statement = upsert_into(self._session, model).values(**values)
                await self._session.execute(
                    statement.on_conflict_do_update(index_elements=["id"], set_=changed)
                )

    async def claim_due_attempts(
        self, worker: str, *, now: datetime, lease: timedelta, limit: int
    ) -> list[tuple[str, str]]:
        rows = await ATTEMPTS.claim(self._session, worker, now=now, lease=lease, limit=limit)
        return [(row.payment_id, row.id) for row in rows]

    async def complete_attempt(self, worker: str, attempt_id: str) -> int:
        return await ATTEMPTS.complete(self._session, worker, [(attempt_id,)])

    async def release_attempt(self, worker: str, attempt_id: str, *, due: datetime) -> int:
        return await ATTEMPTS.release(self._session, worker, [(attempt_id,)], due=due)

    async def claim_due_refunds(
        self, worker: str, *, now: datetime, lease: timedelta, limit: int
    ) -> list[tuple[str, str]]:
        rows = await REFUNDS.claim(self._session, worker, now=now, lease=lease, limit=limit)
        return [(row.payment_id, row.id) for row in rows]

    async def complete_refund(self, worker: str, refund_id: str) -> int:
        return await REFUNDS.complete(self._session, worker, [(refund_id,)])

    async def release_refund(self, worker: str, refund_id: str, *, due: datetime) -> int:
        return await REFUNDS.release(self._session, worker, [(refund_id,)], due=due)

    async def with_attempt(self, attempt_id: str) -> Payment | None:
        payment_id = await self._session.scalar(
            select(PaymentAttemptRow.payment_id).where(PaymentAttemptRow.id == attempt_id)
        )
        return None if payment_id is None else await self.get(payment_id)

    async def with_refund(self, refund_id: str) -> Payment | None:
        payment_id = await self._session.scalar(
            select(PaymentRefundRow.payment_id).where(PaymentRefundRow.id == refund_id)
        )
        return None if payment_id is None else await self.get(payment_id)

    async def succeeded_for_invoice(self, invoice_id: str) -> list[Payment]:
        rows = (
            await self._session.scalars(
                select(PaymentRow)
                .where(
                    PaymentRow.invoice_id == invoice_id, PaymentRow.status == PaymentStatus.SUCCEEDED.value
                )
                .order_by(PaymentRow.create_time.desc(), PaymentRow.id.desc())
                .with_for_update()
            )
        ).all()
        attempts, refunds = await self._children([row.id for row in rows])
        return [_payment(row, attempts[row.id], refunds[row.id]) for row in rows]

    async def pending_for_invoice(self, invoice_id: str) -> list[Payment]:
        rows = (
            await self._session.scalars(
                select(PaymentRow).where(
                    PaymentRow.invoice_id == invoice_id, PaymentRow.status == PaymentStatus.PENDING.value
                )
            )
        ).all()
        return [_payment(row, [], []) for row in rows]

    async def list_payments(
        self,
        *,
        account_id: str,
        invoice_id: str,
        statuses: Sequence[PaymentStatus],
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Payment]:
        """Newest first; an empty account_id or invoice_id does not filter."""
        wanted: list[ColumnElement[bool]] = []
        if account_id:
            wanted.append(PaymentRow.account_id == account_id)
        if invoice_id:
            wanted.append(PaymentRow.invoice_id == invoice_id)
        if statuses:
            wanted.append(PaymentRow.status.in_([status.value for status in statuses]))
        statement = keyset_after(
            select(PaymentRow).where(*wanted), PaymentRow.create_time, PaymentRow.id, after, descending=True
        )
        rows = (await self._session.scalars(statement.limit(limit))).all()
        attempts, refunds = await self._children([row.id for row in rows])
        return [_payment(row, attempts[row.id], refunds[row.id]) for row in rows]


class SqlPaymentSettingsRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def get(self, account_id: str) -> PaymentSettings | None:
        row = await self._session.get(PaymentSettingsRow, account_id)
        if row is None:
            return None
        return PaymentSettings(row.account_id, row.gateway, row.default_payment_method, row.update_time)

    async def put(self, settings: PaymentSettings) -> None:
        values = {
            "gateway": settings.gateway,
            "default_payment_method": settings.default_payment_method,
            "update_time": settings.update_time,
        }
        statement = upsert_into(self._session, PaymentSettingsRow).values(
            account_id=settings.account_id, **values
        )
        await self._session.execute(
            statement.on_conflict_do_update(index_elements=["account_id"], set_=values)
        )


class SqlGatewayEventRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def add(self, gateway: str, event_id: str, *, received_time: datetime, outcome: str) -> bool:
        statement = upsert_into(self._session, GatewayEventRow).values(
            gateway=gateway, event_id=event_id, received_time=received_time, outcome=outcome
        )
        result = await self._session.execute(
            statement.on_conflict_do_nothing(index_elements=["gateway", "event_id"])
        )
        return int(getattr(result, "rowcount", 0)) == 1
