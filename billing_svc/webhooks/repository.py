"""SQL for webhooks: endpoints, the fan-out of outbox events into deliveries, attempts. Never commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, and_, exists, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.webhooks import domain
from billing_svc.webhooks.domain import Attempt, Delivery, Endpoint
from billing_svc.webhooks.tables import (
    WebhookAttemptRow,
    WebhookCursorRow,
    WebhookDeliveryRow,
    WebhookEndpointRow,
)
from core import ids, outbox
from core.pagination import keyset_after

CURSOR = "fanout"


class FanOut(NamedTuple):
    """What one fan-out did: outbox events read past the cursor, deliveries made for them."""

    events: int
    deliveries: int


class SqlWebhookRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def add_endpoint(self, endpoint: Endpoint) -> None:
        values = {**endpoint.__dict__, "event_types": list(endpoint.event_types)}
        await self._session.execute(insert(WebhookEndpointRow).values(values))

    async def endpoints(self, *, enabled_only: bool) -> list[Endpoint]:
        statement = select(WebhookEndpointRow).order_by(WebhookEndpointRow.id)
        if enabled_only:
            statement = statement.where(WebhookEndpointRow.enabled.is_(True))
        rows = (await self._session.execute(statement)).scalars().all()
        return [
            Endpoint(
                r.id, r.url, tuple(r.event_types), r.description, r.secret_sealed, r.enabled, r.create_time
            )
            for r in rows
        ]

    async def list_endpoints(self, *, after: tuple[datetime, str] | None, limit: int) -> list[Endpoint]:
        statement = keyset_after(
            select(WebhookEndpointRow), WebhookEndpointRow.create_time, WebhookEndpointRow.id, after
        )
        rows = (await self._session.execute(statement.limit(limit))).scalars().all()
        return [
            Endpoint(
                r.id, r.url, tuple(r.event_types), r.description, r.secret_sealed, r.enabled, r.create_time
            )
            for r in rows
        ]

    async def set_enabled(self, endpoint_id: str, enabled: bool) -> bool:
        statement = update(WebhookEndpointRow).where(WebhookEndpointRow.id == endpoint_id)
        result = await self._session.execute(statement.values(enabled=enabled))
        return int(getattr(result, "rowcount", 0)) == 1

    async def cursor(self) -> int:
        """The fan-out cursor, its row locked to the end of the transaction (made at 0, the start
        of the outbox, by the first pass; a concurrent first pass's insert does nothing)."""
        dialect = self._session.get_bind().dialect.name
        upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        made = upsert(WebhookCursorRow).values(name=CURSOR, position=0).on_conflict_do_nothing()
        await self._session.execute(made)
        statement = select(WebhookCursorRow.position).where(WebhookCursorRow.name == CURSOR)
        return int((await self._session.execute(statement.with_for_update())).scalar_one())

    async def fan_out(self, now: datetime, limit: int) -> FanOut:
        """Deliveries for up to `limit` outbox events after the cursor, one per matching enabled
        endpoint; the cursor moves past them. In the caller's transaction, which locks the cursor
        row first so two passes never fan out the same events."""
        after = await self.cursor()
        events = await outbox.read_events(self._session, after, limit)
        if not events:
            return FanOut(0, 0)
        endpoints = await self.endpoints(enabled_only=True)
        rows = [
            _delivery(endpoint.id, event, now)
            for event in events
            for endpoint in endpoints
            if domain.matches(endpoint.event_types, event.type)
        ]
        if rows:
            await self._session.execute(insert(WebhookDeliveryRow), rows)
        await self._session.execute(
            update(WebhookCursorRow)
            .where(WebhookCursorRow.name == CURSOR)
            .values(position=events[-1].position)
        )
        return FanOut(len(events), len(rows))

    async def endpoint(self, endpoint_id: str) -> Endpoint | None:
        row = await self._session.get(WebhookEndpointRow, endpoint_id)
        if row is None:
            return None
        return Endpoint(
            row.id,
            row.url,
            tuple(row.event_types),
            row.description,
            row.secret_sealed,
            row.enabled,
            row.create_time,
        )

    async def blocked(self, delivery: Any) -> bool:
        """Whether an earlier event's delivery to the same endpoint, for the same resource, is pending."""
        earlier = WebhookDeliveryRow
        statement = select(
            exists().where(
                and_(
                    earlier.endpoint_id == delivery.endpoint_id,
                    earlier.resource_type == delivery.resource_type,
                    earlier.resource_id == delivery.resource_id,
                    earlier.event_position < delivery.event_position,
                    earlier.status == domain.PENDING,
                )
            )
        )
        return bool((await self._session.execute(statement)).scalar())

    async def record_attempt(
        self, delivery_id: str, time: datetime, http_status: int, error: str, duration_ms: int
    ) -> None:
        await self._session.execute(
            insert(WebhookAttemptRow).values(
                id=ids.new_id(domain.ATTEMPT_PREFIX),
                delivery_id=delivery_id,
                attempt_time=time,
                http_status=http_status,
                error=error[:500],
                duration_ms=duration_ms,
            )
        )

    async def set_status(self, delivery_id: str, status: str, attempt_count: int) -> None:
        await self._session.execute(
            update(WebhookDeliveryRow)
            .where(WebhookDeliveryRow.id == delivery_id)
            .values(status=status, attempt_count=attempt_count)
        )

    async def delivery(self, delivery_id: str, *, for_update: bool = False) -> Delivery | None:
        statement = select(WebhookDeliveryRow).where(WebhookDeliveryRow.id == delivery_id)
        if for_update:
            statement = statement.with_for_update()
        rows = (await self._session.execute(statement)).scalars().all()
        return (await self._views(rows))[0] if rows else None

    async def list_deliveries(
        self, endpoint_id: str, *, view: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[Delivery]:
        row = WebhookDeliveryRow
        statement = keyset_after(select(row), row.create_time, row.id, after).where(
            row.endpoint_id == endpoint_id
        )
        if view:
            statement = statement.where(_of_view(view))
        rows = (await self._session.execute(statement.limit(limit))).scalars().all()
        return await self._views(rows)

    async def list_attempts(
        self, delivery_id: str, *, after: tuple[datetime, str] | None, limit: int
    ) -> list[Attempt]:
        # The endpoint's URL comes along in the same statement: shown_error leaves it out of errors.
        attempt = WebhookAttemptRow
        ordered = keyset_after(select(attempt), attempt.attempt_time, attempt.id, after)
        statement = (
            ordered.add_columns(WebhookEndpointRow.url)
            .join(WebhookDeliveryRow, WebhookDeliveryRow.id == attempt.delivery_id)
            .outerjoin(WebhookEndpointRow, WebhookEndpointRow.id == WebhookDeliveryRow.endpoint_id)
            .where(attempt.delivery_id == delivery_id)
        )
        rows = (await self._session.execute(statement.limit(limit))).all()
        return [
            Attempt(
                id=row.id,
                delivery_id=row.delivery_id,
                attempt_time=row.attempt_time,
                response_status_code=row.http_status,
                error=domain.shown_error(row.error, url or ""),
                duration_ms=row.duration_ms,
            )
            for row, url in rows
        ]

    async def reschedule(self, delivery_id: str, due: datetime) -> None:
        await self._session.execute(
            update(WebhookDeliveryRow)
            .where(WebhookDeliveryRow.id == delivery_id)
            .values(status=domain.PENDING, due_time=due, claimed_by=None, lease_until=None)
        )

    async def due_count(self, now: datetime) -> int:
        """Deliveries due by `now`, in flight included (one range of the due_time index)."""
        row = WebhookDeliveryRow
        statement = select(func.count()).select_from(row).where(row.due_time <= now)
        return int((await self._session.execute(statement)).scalar_one())

    async def _views(self, rows: Sequence[WebhookDeliveryRow]) -> list[Delivery]:
        """The deliveries with their last attempts: two statements for any number of rows."""
        if not rows:
            return []
        owners = select(WebhookEndpointRow.id, WebhookEndpointRow.url).where(
            WebhookEndpointRow.id.in_({r.endpoint_id for r in rows})
        )
        urls = {endpoint_id: url for endpoint_id, url in (await self._session.execute(owners)).all()}
        attempts = (
            await self._session.execute(
                select(WebhookAttemptRow)
                .where(WebhookAttemptRow.delivery_id.in_([r.id for r in rows]))
                .order_by(WebhookAttemptRow.attempt_time, WebhookAttemptRow.id)
            )
        ).scalars()
        last = {attempt.delivery_id: attempt for attempt in attempts}
        return [_view(r, last.get(r.id), urls.get(r.endpoint_id, "")) for r in rows]


def _of_view(view: str) -> ColumnElement[bool]:
    row = WebhookDeliveryRow
    if view == domain.VIEW_SUCCEEDED:
        return row.status == domain.DELIVERED
    if view == domain.VIEW_FAILED:
        return row.status == domain.FAILED
    attempted = row.attempt_count > 0 if view == domain.VIEW_RETRYING else row.attempt_count == 0
    return and_(row.status == domain.PENDING, attempted)


def _view(row: WebhookDeliveryRow, attempt: WebhookAttemptRow | None, url: str) -> Delivery:
    return Delivery(
        id=row.id,
        endpoint_id=row.endpoint_id,
        event_id=row.event_id,
        event_type=row.event_type,
        resource_type=row.resource_type,
        resource_id=row.resource_id,
        status=row.status,
        attempt_count=row.attempt_count,
        next_attempt_time=row.due_time if row.status == domain.PENDING else None,
        last_response_status_code=attempt.http_status if attempt else 0,
        last_error=domain.shown_error(attempt.error, url) if attempt else "",
        last_attempt_time=attempt.attempt_time if attempt else None,
        event_time=row.event_time,
        create_time=row.create_time,
    )


def _delivery(endpoint_id: str, event: outbox.OutboxEvent, now: datetime) -> dict[str, Any]:
    return {
        "id": ids.new_id(domain.DELIVERY_PREFIX),
        "endpoint_id": endpoint_id,
        "event_position": event.position,
        "event_id": event.id,
        "event_type": event.type,
        "resource_type": event.resource_type,
        "resource_id": event.resource_id,
        "payload": dict(event.payload),
        "event_time": event.create_time,
        "status": domain.PENDING,
        "attempt_count": 0,
        "create_time": now,
        "due_time": now,
        "claimed_by": None,
        "lease_until": None,
    }
