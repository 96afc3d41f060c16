"""Webhook endpoints, their deliveries (claimable work), each delivery's attempts, the fan-out cursor."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core import ids
from core.claims import Claimable
from core.db import Base, UtcDateTime

MAX_URL = 2048


class WebhookEndpointRow(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    url: Mapped[str] = mapped_column(String(MAX_URL))
    event_types: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(String(500))
    secret_sealed: Mapped[str] = mapped_column(Text)  # core.sealing, bound to the endpoint id
    enabled: Mapped[bool] = mapped_column(Boolean)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class WebhookDeliveryRow(Claimable, Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH))
    event_position: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(40))
    resource_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    event_time: Mapped[datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16))
    attempt_count: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        # The order check: an earlier pending delivery for the same endpoint and resource.
        Index("ix_webhook_deliveries_order", "endpoint_id", "resource_type", "resource_id", "event_position"),
    )


class WebhookAttemptRow(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), index=True)
    attempt_time: Mapped[datetime] = mapped_column(UtcDateTime)
    http_status: Mapped[int] = mapped_column(Integer)  # 0: no response
    error: Mapped[str] = mapped_column(String(500))
    duration_ms: Mapped[int] = mapped_column(Integer)


class WebhookCursorRow(Base):
    __tablename__ = "webhook_cursor"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
