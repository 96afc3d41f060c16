"""SQL for accounts: the adapter for `account_svc.ports.AccountRepository`. It reads and writes
through the unit of work's session and never commits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import JSON, Index, Integer, String, Table, bindparam, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from account_svc.domain import (
    MAX_DISPLAY_NAME,
    MAX_EMAIL,
    MAX_TIME_ZONE,
    Account,
    AccountFilter,
    AccountStatus,
    address_from_dict,
    address_to_dict,
    email_key,
    email_taken,
)
from core import ids
from core.db import Base, UtcDateTime
from core.pagination import keyset_after

LIVE_EMAIL_INDEX = "uq_accounts_live_email"


class AccountRow(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(ids.MAX_LENGTH), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(MAX_DISPLAY_NAME))
    email: Mapped[str] = mapped_column(String(MAX_EMAIL))
    email_key: Mapped[str] = mapped_column(String(MAX_EMAIL))
    phone: Mapped[str] = mapped_column(String(16))
    billing_address: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    currency_code: Mapped[str] = mapped_column(String(3))
    billing_time_zone: Mapped[str] = mapped_column(String(MAX_TIME_ZONE), server_default="UTC")
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
        billing_time_zone=row.billing_time_zone,
        status=AccountStatus(row.status),
        metadata=dict(row.metadata_),
        create_time=row.create_time,
        update_time=row.update_time,
        delete_time=row.delete_time,
        revision=row.revision,
    )


def _from_columns(row: Mapping[str, Any]) -> Account:
    """An account from a row of the table's columns (by column name: `metadata`, not `metadata_`)."""
    address = row["billing_address"]
    return Account(
        id=row["id"],
        display_name=row["display_name"],
        email=row["email"],
        phone=row["phone"],
        billing_address=address_from_dict(address) if address else None,
        currency_code=row["currency_code"],
        billing_time_zone=row["billing_time_zone"],
        status=AccountStatus(row["status"]),
        metadata=dict(row["metadata"]),
        create_time=_utc(row["create_time"]),
        update_time=_utc(row["update_time"]),
        delete_time=_utc(row["delete_time"]) if row["delete_time"] is not None else None,
        revision=row["revision"],
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# The read by primary key, the hottest read there is. The ORM's session.get (identity map,
# instance state, attribute events) costs several times the statement; a Core select compiled
# once (SQLAlchemy caches its compiled form) skips all that, and on PostgreSQL the same SQL goes
# straight to asyncpg, which prepares it once per connection (bench/read_path.py has the figures).
_TABLE = cast(Table, AccountRow.__table__)
_BY_ID = select(_TABLE).where(_TABLE.c.id == bindparam("id"))
_COLUMNS = ", ".join(f'"{column.name}"' for column in _TABLE.columns)
_PG_BY_ID = f"SELECT {_COLUMNS} FROM accounts WHERE id = $1"  # noqa: S608 (the table's own column names)


def _columns(account: Account) -> dict[str, Any]:
    """Every column but the id, as written by add() and save()."""
    address = account.billing_address
    return {
        "display_name": account.display_name,
        "email": account.email,
        "email_key": account.email_key,
        "phone": account.phone,
        "billing_address": address_to_dict(address) if address else None,
        "currency_code": account.currency_code,
        "billing_time_zone": account.billing_time_zone,
        "status": account.status.value,
        "metadata_": dict(account.metadata),
        "create_time": account.create_time,
        "update_time": account.update_time,
        "delete_time": account.delete_time,
        "revision": account.revision,
    }


@contextmanager
def _live_email_unique() -> Iterator[None]:
    """EMAIL_TAKEN from the live-email index: its last word when two writers race past email_in_use()."""
    try:
        yield
    except IntegrityError as exc:
        if LIVE_EMAIL_INDEX in str(exc.orig) or "accounts.email_key" in str(exc.orig):
            raise email_taken() from exc
        raise


class SqlAccountRepository:
    def __init__(self, session: AsyncSession):
        self._session = session

    async def get(self, account_id: str, *, for_update: bool = False) -> Account | None:
        if for_update:
            row = await self._session.get(AccountRow, account_id, with_for_update=True)
            return _to_domain(row) if row is not None else None
        connection = await self._session.connection()
        options = connection.sync_connection.get_execution_options() if connection.sync_connection else {}
        if options.get("isolation_level") == "AUTOCOMMIT" and connection.dialect.name == "postgresql":
            # A reader (no transaction to take part in): the driver itself. Its JSON and
            # timestamptz codecs are the ones SQLAlchemy registered on the connection.
            raw = await connection.get_raw_connection()
            try:
                record = await raw.driver_connection.fetchrow(_PG_BY_ID, account_id)  # type: ignore[union-attr]
            except Exception:  # noqa: S110 (asked again below, through SQLAlchemy)
                # A driver error (a dead connection, a restarted server): SQLAlchemy's execution
                # meets it again, invalidates the pool as it should and raises what core.db classifies.
                pass
            else:
                return _from_columns(record) if record is not None else None
        found = (await connection.execute(_BY_ID, {"id": account_id})).mappings().first()
        return _from_columns(dict(found)) if found is not None else None

    async def email_in_use(self, email: str, *, excluding: str | None = None) -> bool:
        statement = select(AccountRow.id).where(
            AccountRow.email_key == email_key(email), AccountRow.delete_time.is_(None)
        )
        if excluding is not None:
            statement = statement.where(AccountRow.id != excluding)
        return (await self._session.execute(statement.limit(1))).first() is not None

    async def add(self, account: Account) -> None:
        self._session.add(AccountRow(id=account.id, **_columns(account)))
        with _live_email_unique():
            await self._session.flush()

    async def save(self, account: Account) -> None:
        # One UPDATE, without reading the row again: the use case read (and locked) it already.
        statement = (
            update(AccountRow)
            .where(AccountRow.id == account.id)
            .values(**_columns(account))
            .execution_options(synchronize_session=False)
        )
        with _live_email_unique():
            result = await self._session.execute(statement)
        if int(getattr(result, "rowcount", 0)) != 1:
            raise LookupError(account.id)

    async def list(
        self, query: AccountFilter, *, show_deleted: bool, after: tuple[datetime, str] | None, limit: int
    ) -> list[Account]:
        statement = keyset_after(select(AccountRow), AccountRow.create_time, AccountRow.id, after).limit(
            limit
        )
        if not show_deleted:
            statement = statement.where(AccountRow.delete_time.is_(None))
        if query.email is not None:
            statement = statement.where(AccountRow.email_key == email_key(query.email))
        if query.status is not None:
            statement = statement.where(AccountRow.status == query.status.value)
        if query.only_id is not None:
            statement = statement.where(AccountRow.id == query.only_id)
        rows = (await self._session.execute(statement)).scalars().all()
        return [_to_domain(row) for row in rows]
