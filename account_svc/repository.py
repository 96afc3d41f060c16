"""SQL for accounts. Repositories read and write through the unit of work's session; they never commit."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import JSON, Index, Integer, String, and_, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from account_svc.domain import (
    Account,
    AccountFilter,
    AccountStatus,
    address_from_dict,
    address_to_dict,
    email_key,
)
from core.db import Base, UtcDateTime
from core.errors import AlreadyExists

LIVE_EMAIL_INDEX = "uq_accounts_live_email"


class AccountRow(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254))
    email_key: Mapped[str] = mapped_column(String(254))
    phone: Mapped[str] = mapped_column(String(16))
    billing_address: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    currency_code: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSON)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)
    delete_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revision: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        # Email is unique among live accounts only: a deleted account's address can be reused.
        Index(
            LIVE_EMAIL_INDEX,
            "email_key",
            unique=True,
            postgresql_where=text("delete_time IS NULL"),
            sqlite_where=text("delete_time IS NULL"),
        ),
        Index("ix_accounts_create_time_id", "create_time", "id"),
    )


def _to_domain(row: AccountRow) -> Account:
    address = row.billing_address
    return Account(
        id=row.id,
        display_name=row.display_name,
        email=row.email,
        phone=row.phone,
        billing_address=address_from_dict(address) if address else None,
        currency_code=row.currency_code,
        status=AccountStatus(row.status),
        metadata=dict(row.metadata_),
        create_time=row.create_time,
        update_time=row.update_time,
        delete_time=row.delete_time,
        revision=row.revision,
    )


def _copy_into(row: AccountRow, account: Account) -> None:
    address = account.billing_address
    row.display_name = account.display_name
    row.email = account.email
    row.email_key = account.email_key
    row.phone = account.phone
    row.billing_address = address_to_dict(address) if address else None
    row.currency_code = account.currency_code
    row.status = account.status.value
    row.metadata_ = dict(account.metadata)
    row.create_time = account.create_time
    row.update_time = account.update_time
    row.delete_time = account.delete_time
    row.revision = account.revision


def email_taken() -> AlreadyExists:
    return AlreadyExists(
        "another live account already uses this email address",
        reason="EMAIL_TAKEN",
        metadata={"field": "account.email"},
    )


class AccountRepository(Protocol):
    async def get(self, account_id: str, *, for_update: bool = False) -> Account | None: ...

    async def email_in_use(self, email: str, *, excluding: str | None = None) -> bool: ...

    async def add(self, account: Account) -> None: ...

    async def save(self, account: Account) -> None: ...

    async def list(
        self, query: AccountFilter, *, show_deleted: bool, after: tuple[datetime, str] | None, limit: int
    ) -> list[Account]: ...


class SqlAccountRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def get(self, account_id: str, *, for_update: bool = False) -> Account | None:
        row = await self._session.get(AccountRow, account_id, with_for_update=for_update)
        return _to_domain(row) if row is not None else None

    async def email_in_use(self, email: str, *, excluding: str | None = None) -> bool:
        statement = select(AccountRow.id).where(
            AccountRow.email_key == email_key(email), AccountRow.delete_time.is_(None)
        )
        if excluding is not None:
            statement = statement.where(AccountRow.id != excluding)
        return (await self._session.execute(statement.limit(1))).first() is not None

    async def _flush(self) -> None:
        try:
            await self._session.flush()
        except IntegrityError as exc:
            # The live-email index is the last word when two writers race past email_in_use().
            if LIVE_EMAIL_INDEX in str(exc.orig) or "accounts.email_key" in str(exc.orig):
                raise email_taken() from exc
            raise

    async def add(self, account: Account) -> None:
        row = AccountRow(id=account.id)
        _copy_into(row, account)
        self._session.add(row)
        await self._flush()

    async def save(self, account: Account) -> None:
        row = await self._session.get(AccountRow, account.id)
        if row is None:
            raise LookupError(account.id)
        _copy_into(row, account)
        await self._flush()

    async def list(
        self, query: AccountFilter, *, show_deleted: bool, after: tuple[datetime, str] | None, limit: int
    ) -> list[Account]:
        statement = select(AccountRow).order_by(AccountRow.create_time, AccountRow.id).limit(limit)
        if not show_deleted:
            statement = statement.where(AccountRow.delete_time.is_(None))
        if query.email is not None:
            statement = statement.where(AccountRow.email_key == email_key(query.email))
        if query.status is not None:
            statement = statement.where(AccountRow.status == query.status.value)
        if query.only_id is not None:
            statement = statement.where(AccountRow.id == query.only_id)
        if after is not None:
            time, last_id = after
            statement = statement.where(
                or_(
                    AccountRow.create_time > time,
                    and_(AccountRow.create_time == time, AccountRow.id > last_id),
                )
            )
        rows = (await self._session.execute(statement)).scalars().all()
        return [_to_domain(row) for row in rows]
