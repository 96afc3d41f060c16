"""Webhook endpoint use cases: each write is one transaction run by an IdempotentRunner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from billing_svc.webhooks import domain, targets
from billing_svc.webhooks.domain import Endpoint, endpoint_from_dict, endpoint_to_dict, secret_associated_data
from billing_svc.webhooks.ports import WebhooksUnitOfWork
from core import ids
from core.clock import Clock
from core.errors import InvalidArgument, NotFound
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

    def __post_init__(self) -> None:
        codec = Codec(endpoint_to_dict, endpoint_from_dict)
        object.__setattr__(self, "runner", IdempotentRunner(self.new_uow, self.clock, codec=codec))


@dataclass(frozen=True)
class CreateWebhookEndpoint:
    url: str
    event_types: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class SetWebhookEndpointEnabled:
    id: str
    enabled: bool


def not_found(endpoint_id: str) -> NotFound:
    return NotFound(
        f"webhook endpoint {excerpt(endpoint_id)!r} not found",
        reason="WEBHOOK_ENDPOINT_NOT_FOUND",
        metadata={"id": excerpt(endpoint_id)},
    )


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
        return replace(found, enabled=command.enabled)

    return (await deps.runner.run(caller, command, action)).value
