"""Webhook delivery: fan-out of outbox events into deliveries, then signed POSTs with retries.

A pass fans out (one transaction), claims due deliveries (a short transaction, core/claims.py),
POSTs each with no transaction open, and records each attempt and the next due time in a new
transaction. Deliveries are at least once: a crash after the POST and before the record sends
again (receivers deduplicate by the webhook-id header, the event id). Per endpoint and resource,
a delivery waits while an earlier event's delivery is pending; a failed one (schedule spent) no
longer holds the later ones back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook

from billing_svc.webhooks import domain, targets
from billing_svc.webhooks.domain import secret_associated_data
from billing_svc.webhooks.repository import FanOut, SqlWebhookRepository
from billing_svc.webhooks.tables import WebhookDeliveryRow
from core.claims import WorkQueue, new_worker_id
from core.clock import Clock
from core.db import UnitOfWork
from core.errors import InvalidArgument
from core.periodic import PeriodicPasses
from core.sealing import Sealer

log = logging.getLogger("tally.webhooks")
QUEUE = WorkQueue.of(WebhookDeliveryRow)
LEASE = timedelta(minutes=2)
# While an earlier delivery for the resource is pending, look again this much later.
BLOCKED_RETRY = timedelta(seconds=1)
DISABLED_RETRY = timedelta(minutes=5)
SEALING_PURPOSE = "webhook-secret"


@dataclass
class DeliveryReport:
    """What delivery passes did: outbox events fanned out, the deliveries made for them, the due
    deliveries claimed, and those delivered (answered 2xx)."""

    events: int = 0
    made: int = 0
    claimed: int = 0
    delivered: int = 0

    def add(self, other: DeliveryReport) -> None:
        self.events += other.events
        self.made += other.made
        self.claimed += other.claimed
        self.delivered += other.delivered

    def summary(self) -> str:
        return (
            f"{self.events} events fanned out into {self.made} deliveries; "
            f"{self.claimed} deliveries claimed; {self.delivered} delivered"
        )


class WebhookDeliverer(PeriodicPasses):
    """A periodic job (core.periodic: `run` until cancelled or `stop()`), one `run_pass` an interval."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        sealer: Sealer,
        *,
        interval_seconds: float = 1.0,
        timeout_seconds: float = 10.0,
        batch: int = 100,
        allow_private_targets: bool = False,
        on_outcome: Callable[[str], None] = lambda outcome: None,
        on_backlog: Callable[[int], None] | None = None,
    ):
        super().__init__(interval_seconds, what="webhook delivery pass", log=log)
        self._sessions = sessions
        self._clock = clock
        self._sealer = sealer
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._batch = batch
        self._allow_private = allow_private_targets
        self._on_outcome = on_outcome  # metrics, once per attempt recorded: "succeeded", "retried", "failed"
        self._on_backlog = on_backlog  # metrics: deliveries due at the start of each pass
        self.worker = new_worker_id("webhooks")

    async def fan_out(self) -> FanOut:
        async with UnitOfWork(self._sessions) as uow:
            made = await SqlWebhookRepository(uow.session).fan_out(self._clock.now(), self._batch)
            await uow.commit()
        return made

    async def run_pass(self) -> int:
        """Fan out, then one round of sends; how many deliveries were delivered."""
        return (await self.one_pass()).delivered

    async def one_pass(self) -> DeliveryReport:
        """Fan out up to a batch of events, then claim up to a batch of due deliveries and send
        each (in event order), recording every attempt."""
        made = await self.fan_out()
        async with UnitOfWork(self._sessions) as uow:
            if self._on_backlog is not None:
                self._on_backlog(await SqlWebhookRepository(uow.session).due_count(self._clock.now()))
            claimed = await QUEUE.claim(
                uow.session, self.worker, now=self._clock.now(), lease=LEASE, limit=self._batch
            )
            await uow.commit()
        sent = 0
        async with self._http() as http:
            for delivery in sorted(claimed, key=lambda row: row.event_position):
                sent += await self._deliver(http, delivery)
        return DeliveryReport(made.events, made.deliveries, len(claimed), sent)

    async def run_until_idle(self, *, max_passes: int = 10_000) -> DeliveryReport:
        """Passes until every event is fanned out and no delivery is due (`tally worker --once`):
        a delivery that fails is due again on its schedule, later, so this ends; the total."""
        total = DeliveryReport()
        for _ in range(max_passes):
            report = await self.one_pass()
            total.add(report)
            if report.events < self._batch and report.claimed < self._batch:
                break
        return total

    def _http(self) -> aiohttp.ClientSession:
        """The client of one pass. Unless private targets are allowed, names resolve through
        targets.PublicOnlyResolver, so the address checked is the address connected to."""
        if self._allow_private:
            return aiohttp.ClientSession(timeout=self._timeout)
        connector = aiohttp.TCPConnector(resolver=targets.PublicOnlyResolver())
        return aiohttp.ClientSession(timeout=self._timeout, connector=connector)

    async def _deliver(self, http: aiohttp.ClientSession, delivery: Any) -> int:
        async with UnitOfWork(self._sessions) as uow:
            repo = SqlWebhookRepository(uow.session)
            endpoint = await repo.endpoint(delivery.endpoint_id)
            blocked = await repo.blocked(delivery)
            if blocked or endpoint is None or not endpoint.enabled:
                key = [QUEUE.key_of(delivery)]
                if endpoint is None:
                    await QUEUE.complete(uow.session, self.worker, key)
                else:
                    # Back later: for order, or to see whether the endpoint was enabled again.
                    wait = BLOCKED_RETRY if blocked else DISABLED_RETRY
                    await QUEUE.release(uow.session, self.worker, key, due=self._clock.now() + wait)
                await uow.commit()
                return 0
        secret = self._sealer.open(endpoint.secret_sealed, secret_associated_data(endpoint.id)).decode()
        status, error, duration_ms = await self._post(http, endpoint.url, secret, delivery)
        return await self._record(delivery, status, error, duration_ms)

    async def _post(
        self, http: aiohttp.ClientSession, url: str, secret: str, delivery: Any
    ) -> tuple[int, str, int]:
        now = self._clock.now()
        body = json.dumps(
            {
                "type": delivery.event_type,
                "timestamp": delivery.event_time.isoformat(),
                "data": delivery.payload,
            },
            separators=(",", ":"),
        )
        headers = {
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(delivery.event_id, now, body),
            "content-type": "application/json",
        }
        started = time.monotonic()
        try:
            if not self._allow_private:
                targets.refuse_literal(url)
            async with http.post(url, data=body.encode(), headers=headers, allow_redirects=False) as response:
                await response.read()
                status, error = (
                    response.status,
                    "" if domain.is_success(response.status) else response.reason or "",
                )
        except (InvalidArgument, targets.NonPublicTarget) as exc:
            status, error = 0, f"refused target: {exc}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # aiohttp wraps what the resolver raised in a ClientConnectorError, as `os_error`.
            refused = getattr(exc, "os_error", None)
            if isinstance(refused, targets.NonPublicTarget):
                status, error = 0, f"refused target: {refused}"
            else:
                status, error = 0, f"{type(exc).__name__}: {exc}"
        return status, error, int((time.monotonic() - started) * 1000)

    async def _record(self, delivery: Any, status: int, error: str, duration_ms: int) -> int:
        now = self._clock.now()
        attempts = delivery.attempt_count + 1
        ok = domain.is_success(status)
        next_time: datetime | None = None if ok else domain.next_due(attempts, now)
        outcome = "succeeded" if ok else ("retried" if next_time is not None else "failed")
        async with UnitOfWork(self._sessions) as uow:
            repo = SqlWebhookRepository(uow.session)
            await repo.record_attempt(delivery.id, now, status, error, duration_ms)
            held = await QUEUE.complete(
                uow.session, self.worker, [QUEUE.key_of(delivery)], next_due=next_time
            )
            if held:
                state = domain.DELIVERED if ok else (domain.PENDING if next_time else domain.FAILED)
                await repo.set_status(delivery.id, state, attempts)
            await uow.commit()
        self._on_outcome(outcome)
        return 1 if ok and held else 0
