"""The catalog's tables: meters, plans and their versions, plan features.

A plan's prices and terms live in its versions (`plan_versions.terms`, a JSON document whose
amounts are decimal strings, never JSON numbers, so no float reads them); names and the archive
mark live on the plan. Features are rows of their own so that entitlements are one indexed join.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKeyConstraint, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from billing_svc.catalog.domain import MAX_CODE, MAX_DESCRIPTION, MAX_DISPLAY_NAME, MAX_UNIT_LABEL
from core import ids
from core.db import Base, UtcDateTime


class MeterRow(Base):
    __tablename__ = "meters"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    code: Mapped[str] = mapped_column(String(MAX_CODE), unique=True)
    display_name: Mapped[str] = mapped_column(String(MAX_DISPLAY_NAME))
    unit_label: Mapped[str] = mapped_column(String(MAX_UNIT_LABEL))
    aggregation: Mapped[str] = mapped_column(String(16))
    property: Mapped[str] = mapped_column(String(MAX_CODE))  # "" unless UNIQUE_COUNT
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)
    archive_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revision: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_meters_create_time_id", "create_time", "id"),)


class PlanRow(Base):
    __tablename__ = "plans"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    code: Mapped[str] = mapped_column(String(MAX_CODE), unique=True)
    display_name: Mapped[str] = mapped_column(String(MAX_DISPLAY_NAME))
    description: Mapped[str] = mapped_column(String(MAX_DESCRIPTION))
    currency_code: Mapped[str] = mapped_column(String(3))
    latest_version: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)
    archive_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revision: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_plans_create_time_id", "create_time", "id"),)


class PlanVersionRow(Base):
    __tablename__ = "plan_versions"

    plan_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Interval, trial, fees, charges, minimum and maximum: see billing_svc.catalog.domain.
    terms: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Set once a subscription uses the version: from then on its terms never change.
    in_use: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (ForeignKeyConstraint(["plan_id"], ["plans.id"], ondelete="CASCADE"),)


class PlanFeatureRow(Base):
    __tablename__ = "plan_features"

    plan_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(MAX_CODE), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(MAX_DISPLAY_NAME))
    enabled: Mapped[bool | None] = mapped_column(Boolean)  # a flag, or
    limit: Mapped[int | None] = mapped_column(BigInteger)  # a numeric limit: exactly one is set

    __table_args__ = (
        ForeignKeyConstraint(
            ["plan_id", "version"], ["plan_versions.plan_id", "plan_versions.version"], ondelete="CASCADE"
        ),
    )
