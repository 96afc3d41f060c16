# TEMPORARY STUB (uncommitted): the catalog helper's real module replaces it.
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from billing_svc.catalog.pricing import PricingModel
from core.money import Money


class IntervalUnit(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


@dataclass(frozen=True)
class BillingInterval:
    unit: IntervalUnit
    count: int


@dataclass(frozen=True)
class Feature:
    code: str
    display_name: str
    enabled: bool | None
    limit: int | None


@dataclass(frozen=True)
class SeatPrice:
    description: str
    price: PricingModel


@dataclass(frozen=True)
class MeteredCharge:
    meter_id: str
    description: str
    price: PricingModel


@dataclass(frozen=True)
class PlanTerms:
    interval: BillingInterval
    trial_days: int
    base_fee: Money | None
    seat_price: SeatPrice | None
    metered_charges: tuple[MeteredCharge, ...]
    minimum_spend: Money | None
    maximum_spend: Money | None
    requires_payment: bool


@dataclass(frozen=True)
class PlanVersion:
    plan_id: str
    version: int
    code: str
    display_name: str
    description: str
    currency_code: str
    terms: PlanTerms
    features: tuple[Feature, ...]
    in_use: bool
    create_time: datetime
    update_time: datetime
    archive_time: datetime | None
    revision: int

    @property
    def is_archived(self) -> bool:
        return self.archive_time is not None
