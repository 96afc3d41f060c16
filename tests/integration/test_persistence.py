"""Repositories, the unit of work and idempotency keys against real databases (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from account_svc.domain import Account, AccountFilter, AccountStatus, PostalAddress
from account_svc.repository import AccountRow
from account_svc.sql_unit_of_work import SqlAccountsUnitOfWork
from app import migrate
from core import db, ids
from core.errors import AlreadyExists
from core.idempotency import StoredKey

T0 = datetime(2026, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)


def make_account(n: int = 0, *, email: str | None = None, created: datetime = T0) -> Account:
    return Account(
        id=ids.new_id("acct"),
        display_name=f"Customer {n}",
        email=email or f"c{n}@example.test",
        phone="",
        billing_address=PostalAddress(region_code="GB", address_lines=("1 High St", "Flat 2")),
        currency_code="GBP",
        billing_time_zone="UTC",
        status=AccountStatus.ACTIVE,
        metadata={"n": str(n)},
        create_time=created,
        update_time=created,
        delete_time=None,
        revision=1,
    )


def uow(engine: AsyncEngine) -> SqlAccountsUnitOfWork:
    return SqlAccountsUnitOfWork(db.session_factory(engine))


async def count_accounts(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(AccountRow))).scalar_one())


async def test_round_trip_keeps_every_field(engine: AsyncEngine) -> None:
    account = make_account(1)
    async with uow(engine) as work:
        await work.accounts.add(account)
        await work.commit()

    async with uow(engine) as work:
        loaded = await work.accounts.get(account.id)
    assert loaded == account
    assert loaded is not None and loaded.create_time.tzinfo is not None


async def test_without_commit_nothing_is_written(engine: AsyncEngine) -> None:
    async with uow(engine) as work:
        await work.accounts.add(make_account(1))
        await work.idempotency.claim("CreateAccount", "k1", "f" * 64, T0)
    assert await count_accounts(engine) == 0
    async with uow(engine) as work:
        assert await work.idempotency.find("CreateAccount", "k1", T0) is None


async def test_error_inside_unit_of_work_rolls_back(engine: AsyncEngine) -> None:
    with pytest.raises(RuntimeError):
        async with uow(engine) as work:
            await work.accounts.add(make_account(1))
            raise RuntimeError("boom")
    assert await count_accounts(engine) == 0


async def test_live_email_unique_index_is_final_word(engine: AsyncEngine) -> None:
    async with uow(engine) as work:
        await work.accounts.add(make_account(1, email="Same@Example.test"))
        await work.commit()

    with pytest.raises(AlreadyExists):
        async with uow(engine) as work:
            await work.accounts.add(make_account(2, email="same@example.TEST"))
    assert await count_accounts(engine) == 1


async def test_deleted_accounts_free_their_email(engine: AsyncEngine) -> None:
    first = make_account(1, email="reuse@example.test")
    async with uow(engine) as work:
        await work.accounts.add(first)
        await work.commit()
    second = make_account(2, email="reuse@example.test")
    async with uow(engine) as work:
        await work.accounts.save(Account(**{**first.__dict__, "delete_time": T0}))
        assert not await work.accounts.email_in_use("reuse@example.test")
        await work.accounts.add(second)
        assert await work.accounts.email_in_use("REUSE@example.test")
        assert not await work.accounts.email_in_use("reuse@example.test", excluding=second.id)
        await work.commit()
    assert await count_accounts(engine) == 2


async def test_keyset_listing_is_stable_with_equal_timestamps(engine: AsyncEngine) -> None:
    accounts = [make_account(n, created=T0 + timedelta(microseconds=n // 3)) for n in range(9)]
    async with uow(engine) as work:
        for account in accounts:
            await work.accounts.add(account)
        await work.commit()

    expected = sorted(accounts, key=lambda a: (a.create_time, a.id))
    seen: list[Account] = []
    after = None
    async with uow(engine) as work:
        while True:
            page = await work.accounts.list(AccountFilter(), show_deleted=False, after=after, limit=4)
            seen.extend(page)
            if len(page) < 4:
                break
            after = (page[-1].create_time, page[-1].id)
    assert [a.id for a in seen] == [a.id for a in expected]


async def test_idempotency_key_claim_conflict_and_expiry(engine: AsyncEngine) -> None:
    async with uow(engine) as work:
        assert await work.idempotency.claim("CreateAccount", "k1", "a" * 64, T0)
        await work.idempotency.complete("CreateAccount", "k1", {"id": "acct_1"})
        await work.commit()

    async with uow(engine) as work:
        assert not await work.idempotency.claim("CreateAccount", "k1", "b" * 64, T0)
        stored = await work.idempotency.find("CreateAccount", "k1", T0)
        assert stored is not None and stored == StoredKey("a" * 64, {"id": "acct_1"})
        # The same key in another scope is a different key.
        assert await work.idempotency.claim("DeleteAccount", "k1", "c" * 64, T0)
        # After retention the key may be claimed again, and starts over without a response.
        later = T0 + timedelta(hours=25)
        assert await work.idempotency.find("CreateAccount", "k1", later) is None
        assert await work.idempotency.claim("CreateAccount", "k1", "d" * 64, later)
        assert await work.idempotency.find("CreateAccount", "k1", later) == StoredKey("d" * 64, None)
        await work.commit()

    with pytest.raises(RuntimeError, match="without claim"):
        async with uow(engine) as work:
            await work.idempotency.complete("CreateAccount", "never-claimed", {"id": "acct_2"})


async def test_schema_check_and_idempotent_upgrade(engine: AsyncEngine) -> None:
    await migrate.check_current(engine)
    before, after = await migrate.upgrade(engine)
    assert before == after == migrate.head_revision()


async def test_migrations_match_the_models(engine: AsyncEngine) -> None:
    """The schema the migrations build is the schema the models describe (nothing forgotten)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    import account_svc.identity.repository
    import core.audit  # noqa: F401
    from billing_svc.usage.partitions import is_partition
    from core.db import Base

    assert account_svc.identity.repository.UserRow.__tablename__ in Base.metadata.tables

    def declared(name: str | None, kind: str, parents: dict[str, str | None]) -> bool:
        # The partitions of usage_records are made at run time (billing_svc.usage.partitions),
        # not declared by a model; their parent table is compared like any other.
        table = name if kind == "table" else parents.get("table_name")
        return table is None or not is_partition(table)

    def differences(connection: object) -> list[object]:
        opts = {"compare_type": True, "include_name": declared}
        context = MigrationContext.configure(connection, opts=opts)  # type: ignore[arg-type]
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        diff = await connection.run_sync(differences)
    assert diff == []
