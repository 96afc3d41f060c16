"""What the usage use cases need from storage, as protocols. The SQL adapters: repository.py
(usage records), billing_svc.catalog.meter_reader (meters), the account module (accounts)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Protocol

from billing_svc.catalog.domain import Meter
from billing_svc.usage.domain import EarlierUsage, NewUsage


class UsageRepository(Protocol):
    async def insert_new(self, events: Sequence[NewUsage]) -> list[EarlierUsage | None]:
        """Store the events whose (account, event id) is free, set-based; per event, in order,
        None when stored now, else what the id held already. Keys must be distinct, and the
        records' create_time one."""
        ...

    async def invoiced_until(self, account_id: str) -> datetime | None:
        """The end of the latest period whose usage an account's finalized invoice billed (a cycle
        invoice with a usage basis, not a draft and not void); None when there is none."""
        ...

    async def purge_event_ids(self, before: datetime, *, limit: int) -> int:
        """Delete up to `limit` event ids stored before `before`; how many went."""
        ...


class MeterLookup(Protocol):
    async def by_codes(self, codes: Collection[str]) -> dict[str, Meter]: ...

    async def active_codes(self, limit: int) -> list[str]: ...
