"""What the read use cases need from storage, as protocols: the usage reader, and the snapshot unit
of work that holds it with the meters, subscriptions, plans, accounts and clocks it reads beside.
The SQL adapters are read_repository.py and read_unit_of_work.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from types import TracebackType
from typing import Protocol, Self

from billing_svc.catalog.ports import MeterRepository
from billing_svc.clocks.account_time import AccountClocks
from billing_svc.subscriptions.ports import PlanVersions, SubscriptionRepository
from billing_svc.usage.domain import UsageRecord
from core.accounts import AccountDirectory
from core.pagination import Position


@dataclass(frozen=True)
class PeriodTotals:
    """One meter's records over a period: what SQL can add up for every aggregation."""

    record_count: int  # every record
    plan_count: int  # records without their own price (the plan prices them)
    plan_sum: Decimal  # their units
    plan_max: Decimal  # their largest units; 0 without any
    recorded_units: Decimal  # units of the records with their own price
    recorded_amount: Decimal  # sum of units x price_per_unit, exact


class UsageReader(Protocol):
    async def records(
        self,
        account_id: str,
        *,
        service: str | None,
        start: datetime | None,
        end: datetime | None,
        properties: Mapping[str, str],
        after: Position | None,
        limit: int,
    ) -> list[UsageRecord]:
        """Up to `limit` records in (event_time, id) order after `after`, matching every filter."""
        ...

    async def period_totals(self, account_id: str, start: datetime, end: datetime) -> dict[str, PeriodTotals]:
        """Per meter with records in [start, end), by meter id."""
        ...

    async def unique_count(
        self, account_id: str, meter_id: str, property_name: str, start: datetime, end: datetime
    ) -> int: ...

    async def latest_units(
        self, account_id: str, meter_id: str, start: datetime, end: datetime
    ) -> Decimal: ...

    async def level_before(self, account_id: str, meter_id: str, start: datetime) -> Decimal: ...

    async def weighted_area(
        self, account_id: str, meter_id: str, start: datetime, end: datetime
    ) -> Fraction: ...

    async def changes(
        self, account_id: str, meter_id: str, start: datetime, end: datetime
    ) -> list[tuple[datetime, Decimal]]: ...


class UsageReadUnitOfWork(Protocol):
    """One read-only snapshot. Members are read-only properties so that fakes may use their own."""

    @property
    def usage(self) -> UsageReader: ...

    @property
    def meters(self) -> MeterRepository: ...

    @property
    def subscriptions(self) -> SubscriptionRepository: ...

    @property
    def plans(self) -> PlanVersions: ...

    @property
    def accounts(self) -> AccountDirectory: ...

    @property
    def clocks(self) -> AccountClocks: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
