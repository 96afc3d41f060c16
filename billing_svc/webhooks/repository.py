"""SQL for webhooks: endpoints, the fan-out of outbox events into deliveries, attempts. Never commits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc.webhooks import domain
from billing_svc.webhooks.domain import Endpoint
from billing_svc.webhooks.tables import (
    WebhookAttemptRow,
    WebhookCursorRow,
    WebhookDeliveryRow,
    WebhookEndpointRow,
)
from core import ids, outbox
from core.pagination import keyset_after

CURSOR = "fanout"


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

    async def fan_out(self, now: datetime, limit: int) -> int:
        """Deliveries for outbox events after the cursor, one per matching enabled endpoint; the
        cursor moves past them. In the caller's transaction, which locks the cursor row first so
        two passes never fan out the same events."""
        after = await self.cursor()
        events = await outbox.read_events(self._session, after, limit)
        if not events:
            return 0
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
        return len(rows)

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
                id=ids.new_id("wha"),
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
