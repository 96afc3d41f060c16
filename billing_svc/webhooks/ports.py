"""What the webhook endpoint use cases need from storage, as protocols (repository.py fills them)."""

from __future__ import annotations

from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

from billing_svc.webhooks.domain import Attempt, Delivery, Endpoint
from core.audit import AuditLog
from core.idempotency import IdempotencyRepository


class WebhookRepository(Protocol):
    async def add_endpoint(self, endpoint: Endpoint) -> None: ...

    async def endpoint(self, endpoint_id: str) -> Endpoint | None: ...

    async def list_endpoints(self, *, after: tuple[datetime, str] | None, limit: int) -> list[Endpoint]:
        """Up to `limit` endpoints in (create_time, id) order, after the position `after`."""
        ...

    async def set_enabled(self, endpoint_id: str, enabled: bool) -> bool: ...

    async def delivery(self, delivery_id: str, *, for_update: bool = False) -> Delivery | None: ...

    async def list_deliveries(
        self, endpoint_id: str, *, view: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[Delivery]:
        """Up to `limit` deliveries of the endpoint in (create_time, id) order, after `after`; of one
        view (domain.VIEWS) unless `view` is empty."""
        ...

    async def list_attempts(
        self, delivery_id: str, *, after: tuple[datetime, str] | None, limit: int
    ) -> list[Attempt]:
        """Up to `limit` attempts of the delivery in (attempt_time, id) order, after `after`, their
        errors shortened by domain.shown_error."""
        ...

    async def reschedule(self, delivery_id: str, due: datetime) -> None:
        """Pending and due at `due`, its claim (a send in flight) let go."""
        ...


class WebhooksUnitOfWork(Protocol):
    @property
    def webhooks(self) -> WebhookRepository: ...

    @property
    def idempotency(self) -> IdempotencyRepository: ...

    @property
    def audit(self) -> AuditLog: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def commit(self) -> None: ...
