"""Events a payment gateway sends (webhooks), verified by the caller: each settles the attempt it is
about, once, however often it is delivered.

An event names its attempt by the attempt's id (the idempotency key it was charged under). In one
transaction the event is recorded in gateway_events, keyed by (gateway, its id), and the attempt is
settled with the event's result exactly as the reconciler would record a lookup (collect.settle): a
success pays the payment and its invoice, a decline fails it, a pending result leaves it pending. An
attempt already settled is left as it is. A redelivered event finds its row and changes nothing (on
PostgreSQL a concurrent redelivery waits for the first transaction and then finds it). An event Tally
does not act on (another type, an intent it did not make, an attempt of another gateway) is recorded
as ignored, so its replays stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from billing_svc.payments.collect import PaymentDeps, settle
from billing_svc.payments.gateways.stripe_webhooks import GatewayEvent
from core.principal import Caller, Principal, Role


class EventOutcome(StrEnum):
    PROCESSED = "processed"  # recorded on its attempt (or the attempt was settled already)
    IGNORED = "ignored"  # not about a payment of this gateway's that Tally made
    DUPLICATE = "duplicate"  # received before: nothing changed


REJECTED = "rejected"  # the outcome counted for a delivery refused before it was read (its signature)


class EventCounts:
    """Where received events are counted by (gateway, outcome): nowhere until the composition root
    hands it the app's metrics (`report_to`), which are made after the modules."""

    def __init__(self) -> None:
        self._sink: Callable[[str, str], None] | None = None

    def report_to(self, sink: Callable[[str, str], None]) -> None:
        self._sink = sink

    def count(self, gateway: str, outcome: str) -> None:
        if self._sink is not None:
            self._sink(gateway, outcome)


def gateway_caller(gateway: str, event_id: str) -> Caller:
    """Who acts in the audit log when a gateway's event settles a payment."""
    principal = Principal(subject=f"gateway:{gateway}", role=Role.SERVICE)
    return Caller(principal, method=f"gateway_event:{gateway}", request_id=event_id)


async def receive_gateway_event(
    deps: PaymentDeps, gateway: str, event_id: str, event: GatewayEvent | None
) -> EventOutcome:
    """Record a verified event of `gateway` and act on it; `event` None for one not acted on."""
    async with deps.new_uow() as uow:
        payment = await uow.payments.with_attempt(event.idempotency_key) if event is not None else None
        if payment is not None and payment.gateway != gateway:
            payment = None
        outcome = EventOutcome.IGNORED if payment is None else EventOutcome.PROCESSED
        recorded = await uow.gateway_events.add(
            gateway, event_id, received_time=deps.clock.now(), outcome=outcome.value
        )
        if not recorded:
            return EventOutcome.DUPLICATE  # rolled back: nothing of this delivery is kept
        if payment is not None and event is not None:
            caller = gateway_caller(gateway, event_id)
            await settle(deps, uow, caller, payment, event.idempotency_key, event.result, may_retry=False)
        await uow.commit()
    return outcome
