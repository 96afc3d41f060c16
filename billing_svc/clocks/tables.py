"""Test clocks and the accounts attached to them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKeyConstraint, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from billing_svc.clocks.domain import MAX_DISPLAY_NAME
from core import ids
from core.db import Base, UtcDateTime


class TestClockRow(Base):
    __tablename__ = "test_clocks"
    __test__ = False  # not a pytest class, despite the name

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(MAX_DISPLAY_NAME))
    frozen_time: Mapped[datetime] = mapped_column(UtcDateTime)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)  # wall time
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)  # wall time
    revision: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_test_clocks_create_time_id", "create_time", "id"),)


class TestClockAccountRow(Base):
    __tablename__ = "test_clock_accounts"
    __test__ = False

    account_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    test_clock_id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), index=True)
    attach_time: Mapped[datetime] = mapped_column(UtcDateTime)  # wall time

    __table_args__ = (ForeignKeyConstraint(["test_clock_id"], ["test_clocks.id"], ondelete="CASCADE"),)
