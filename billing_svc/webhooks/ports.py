"""What the webhook endpoint use cases need from storage, as protocols (repository.py fills them)."""

from __future__ import annotations

from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

from billing_svc.webhooks.domain import Endpoint
from core.idempotency import IdempotencyRepository


class WebhookRepository(Protocol):
    async def add_endpoint(self, endpoint: Endpoint) -> None: ...

    async def endpoint(self, endpoint_id: str) -> Endpoint | None: ...

    async def list_endpoints(self, *, after: tuple[datetime, str] | None, limit: int) -> list[Endpoint]:
        """Up to `limit` endpoints in (create_time, id) order, after the position `after`."""
        ...

    async def set_enabled(self, endpoint_id: str, enabled: bool) -> bool: ...


class WebhooksUnitOfWork(Protocol):
    @property
    def webhooks(self) -> WebhookRepository: ...

    @property
    def idempotency(self) -> IdempotencyRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def commit(self) -> None: ...
