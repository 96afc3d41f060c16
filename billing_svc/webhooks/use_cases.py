"""Webhook endpoint use cases: each write is one transaction run by an IdempotentRunner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from billing_svc.webhooks import domain, targets
from billing_svc.webhooks.domain import (
    Attempt,
    Delivery,
    Endpoint,
    delivery_from_dict,
    delivery_to_dict,
    endpoint_from_dict,
    endpoint_to_dict,
    secret_associated_data,
)
from billing_svc.webhooks.ports import WebhooksUnitOfWork
from core import ids
from core.audit import changes_between
from core.clock import Clock
from core.errors import FailedPrecondition, InvalidArgument, NotFound
from core.idempotency import Codec, IdempotentRunner
from core.pagination import PageTokens
from core.principal import Caller
from core.sealing import Sealer
from core.text import excerpt

MAX_DESCRIPTION = 500
MAX_EVENT_TYPES = 50


@dataclass(frozen=True)
class WebhookDeps:
    new_uow: Callable[[], WebhooksUnitOfWork]
    clock: Clock
    sealer: Sealer
    page_tokens: PageTokens
    allow_private_targets: bool = False
    runner: IdempotentRunner[WebhooksUnitOfWork, Endpoint] = field(init=False, repr=False)
    delivery_runner: IdempotentRunner[WebhooksUnitOfWork, Delivery] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        codec = Codec(endpoint_to_dict, endpoint_from_dict)
        object.__setattr__(self, "runner", IdempotentRunner(self.new_uow, self.clock, codec=codec))
        deliveries = Codec(delivery_to_dict, delivery_from_dict)
        object.__setattr__(
            self, "delivery_runner", IdempotentRunner(self.new_uow, self.clock, codec=deliveries)
        )


@dataclass(frozen=True)
class CreateWebhookEndpoint:
    url: str
    event_types: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class SetWebhookEndpointEnabled:
    id: str
    enabled: bool


@dataclass(frozen=True)
class RedeliverWebhook:
    delivery_id: str


def not_found(endpoint_id: str) -> NotFound:
    return NotFound(
        f"webhook endpoint {excerpt(endpoint_id)!r} not found",
        reason="WEBHOOK_ENDPOINT_NOT_FOUND",
        metadata={"id": excerpt(endpoint_id)},
    )


def delivery_not_found(delivery_id: str) -> NotFound:
    return NotFound(
        f"webhook delivery {excerpt(delivery_id)!r} not found",
        reason="WEBHOOK_DELIVERY_NOT_FOUND",
        metadata={"id": excerpt(delivery_id)},
    )


def _audited(endpoint: Endpoint) -> dict[str, object]:
    """What the audit log may show of an endpoint: everything but its (sealed) secret."""
    return {"url": endpoint.url, "event_types": list(endpoint.event_types), "enabled": endpoint.enabled}


def secret_of(deps: WebhookDeps, endpoint: Endpoint) -> str:
    return deps.sealer.open(endpoint.secret_sealed, secret_associated_data(endpoint.id)).decode()


async def create_endpoint(
    deps: WebhookDeps, caller: Caller, url: str, event_types: list[str], description: str
) -> tuple[Endpoint, str]:
    """The new endpoint and its secret; a replay of the request id gives the same two."""
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument.field(
            "webhook_endpoint.description", f"must be at most {MAX_DESCRIPTION} characters"
        )
    if len(event_types) > MAX_EVENT_TYPES or any(not 0 < len(t) <= 64 for t in event_types):
        raise InvalidArgument.field("webhook_endpoint.event_types", "at most 50 types of 1 to 64 characters")
    # Resolved before the transaction opens: DNS is network.
    await targets.refuse_private(url, allow_private=deps.allow_private_targets)
    command = CreateWebhookEndpoint(url, tuple(sorted(set(event_types))), description)

    async def action(uow: WebhooksUnitOfWork) -> Endpoint:
        endpoint_id = ids.new_id(domain.ENDPOINT_PREFIX)
        sealed = deps.sealer.seal(domain.new_secret().encode(), secret_associated_data(endpoint_id))
        endpoint = Endpoint(
            endpoint_id, command.url, command.event_types, command.description, sealed, True, deps.clock.now()
        )
        await uow.webhooks.add_endpoint(endpoint)
        await uow.audit.record(
            caller,
            time=endpoint.create_time,
            resource_type=domain.ENDPOINT_RESOURCE_TYPE,
            resource_id=endpoint.id,
            action="create",
            changes=changes_between(None, {**_audited(endpoint), "description": endpoint.description}),
        )
        return endpoint

    created = (await deps.runner.run(caller, command, action)).value
    return created, secret_of(deps, created)


async def get_endpoint(deps: WebhookDeps, endpoint_id: str) -> Endpoint:
    async with deps.new_uow() as uow:
        found = await uow.webhooks.endpoint(endpoint_id) if 0 < len(endpoint_id) <= ids.MAX_LENGTH else None
    if found is None:
        raise not_found(endpoint_id)
    return found


async def list_endpoints(deps: WebhookDeps, *, size: int, page_token: str) -> tuple[list[Endpoint], str]:
    page = deps.page_tokens.keyset_page(size, page_token, {"list": "webhook_endpoints"})
    async with deps.new_uow() as uow:
        rows = await uow.webhooks.list_endpoints(after=page.after, limit=page.fetch_limit)
    return page.slice(rows, key=lambda endpoint: (endpoint.create_time, endpoint.id))


async def set_enabled(deps: WebhookDeps, caller: Caller, endpoint_id: str, enabled: bool) -> Endpoint:
    command = SetWebhookEndpointEnabled(endpoint_id, enabled)

    async def action(uow: WebhooksUnitOfWork) -> Endpoint:
        found = await uow.webhooks.endpoint(command.id) if 0 < len(command.id) <= ids.MAX_LENGTH else None
        if found is None:
            raise not_found(command.id)
        await uow.webhooks.set_enabled(command.id, command.enabled)
        changed = replace(found, enabled=command.enabled)
        await uow.audit.record(
            caller,
            time=deps.clock.now(),
            resource_type=domain.ENDPOINT_RESOURCE_TYPE,
            resource_id=command.id,
            action="enable" if command.enabled else "disable",
            changes=changes_between(_audited(found), _audited(changed)),
        )
        return changed

    return (await deps.runner.run(caller, command, action)).value


async def list_deliveries(
    deps: WebhookDeps, endpoint_id: str, *, view: str, size: int, page_token: str
) -> tuple[list[Delivery], str]:
    """An endpoint's deliveries by (create_time, id); `view` one of domain.VIEWS, or "" for all."""
    query = {"list": "webhook_deliveries", "endpoint_id": endpoint_id, "view": view}
    page = deps.page_tokens.keyset_page(size, page_token, query)
    await get_endpoint(deps, endpoint_id)
    async with deps.new_uow() as uow:
        rows = await uow.webhooks.list_deliveries(
            endpoint_id, view=view, after=page.after, limit=page.fetch_limit
        )
    return page.slice(rows, key=lambda delivery: (delivery.create_time, delivery.id))


async def get_delivery(deps: WebhookDeps, delivery_id: str) -> Delivery:
    async with deps.new_uow() as uow:
        found = await uow.webhooks.delivery(delivery_id) if 0 < len(delivery_id) <= ids.MAX_LENGTH else None
    if found is None:
        raise delivery_not_found(delivery_id)
    return found


async def list_attempts(
    deps: WebhookDeps, delivery_id: str, *, size: int, page_token: str
) -> tuple[list[Attempt], str]:
    """A delivery's attempts by (attempt_time, id), oldest first: what its attempt_count counts."""
    query = {"list": "webhook_attempts", "delivery_id": delivery_id}
    page = deps.page_tokens.keyset_page(size, page_token, query)
    async with deps.new_uow() as uow:
        known = 0 < len(delivery_id) <= ids.MAX_LENGTH
        if not known or await uow.webhooks.delivery(delivery_id) is None:
            raise delivery_not_found(delivery_id)
        rows = await uow.webhooks.list_attempts(delivery_id, after=page.after, limit=page.fetch_limit)
    return page.slice(rows, key=lambda attempt: (attempt.attempt_time, attempt.id))


async def redeliver(deps: WebhookDeps, caller: Caller, delivery_id: str) -> Delivery:
    """Makes the delivery due now (pending again, its claim let go); the delivery job sends it. A
    replay of the request id answers the first call's delivery and schedules nothing."""
    command = RedeliverWebhook(delivery_id)

    async def action(uow: WebhooksUnitOfWork) -> Delivery:
        known = 0 < len(command.delivery_id) <= ids.MAX_LENGTH
        found = await uow.webhooks.delivery(command.delivery_id, for_update=True) if known else None
        if found is None:
            raise delivery_not_found(command.delivery_id)
        endpoint = await uow.webhooks.endpoint(found.endpoint_id)
        if endpoint is None or not endpoint.enabled:
            raise FailedPrecondition(
                f"webhook endpoint {found.endpoint_id!r} is disabled; enable it to redeliver",
                reason="WEBHOOK_ENDPOINT_DISABLED",
                metadata={"endpoint_id": found.endpoint_id},
            )
        now = deps.clock.now()
        await uow.webhooks.reschedule(found.id, now)
        after = replace(found, status=domain.PENDING, next_attempt_time=now)
        await uow.audit.record(
            caller,
            time=now,
            resource_type=domain.DELIVERY_RESOURCE_TYPE,
            resource_id=found.id,
            action="redeliver",
            changes=changes_between(
                {"status": found.view, "next_attempt_time": found.next_attempt_time},
                {"status": after.view, "next_attempt_time": now},
            ),
        )
        return after

    return (await deps.delivery_runner.run(caller, command, action)).value
