"""Account use cases that decide what a customer may learn or keep: its email, its sessions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from account_svc import use_cases
from account_svc.domain import AccountFields
from account_svc.use_cases import AccountDeps
from core.clock import FrozenClock
from core.errors import AlreadyExists, TallyError
from core.pagination import PageTokens
from core.principal import Caller, Principal, Role
from tests.unit.fakes import FakeUnitOfWork, Store

ADMIN = Caller(Principal("usr_admin", Role.ADMIN, frozenset({"*"})), "/test/Method")


def customer(account_id: str) -> Caller:
    principal = Principal("usr_c", Role.CUSTOMER, frozenset({"accounts:write"}), account_id)
    return Caller(principal, "/test/Method")


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def ended() -> list[str]:
    return []


@pytest.fixture
def deps(store: Store, ended: list[str]) -> AccountDeps:
    return AccountDeps(
        new_uow=lambda: FakeUnitOfWork(store),
        new_reader=lambda: FakeUnitOfWork(store),
        clock=FrozenClock(datetime(2026, 1, 1, tzinfo=UTC)),
        page_tokens=PageTokens(b"0123456789abcdef"),
        on_session_revoked=ended.append,
    )


async def make(deps: AccountDeps, email: str) -> str:
    fields = AccountFields(display_name=email, email=email, currency_code="USD")
    return (await use_cases.create_account(deps, ADMIN, fields)).id


async def refusal(deps: AccountDeps, caller: Caller, account_id: str, email: str) -> tuple[str, str, str]:
    with pytest.raises(TallyError) as caught:
        await use_cases.update_account(deps, caller, account_id, AccountFields(email=email), ["email"])
    error = caught.value
    return type(error).__name__, error.reason, str(error)


async def test_a_customer_cannot_tell_a_taken_email_from_a_free_one(deps: AccountDeps, store: Store) -> None:
    mine = await make(deps, "a@acme.test")
    await make(deps, "b@acme.test")
    before = dict(store.accounts)
    taken = await refusal(deps, customer(mine), mine, "B@acme.test")
    free = await refusal(deps, customer(mine), mine, "nobody-has-this@acme.test")
    assert taken == free == ("PermissionDenied", "FIELD_NOT_WRITABLE", "customers cannot change email")
    assert store.accounts == before


async def test_a_customer_may_send_its_own_address_back(deps: AccountDeps) -> None:
    """The same address (compared as uniqueness compares it, so its case may change)."""
    mine = await make(deps, "a@acme.test")
    fields = AccountFields(display_name="Renamed", email="A@ACME.test")
    updated = await use_cases.update_account(deps, customer(mine), mine, fields, ["display_name", "email"])
    assert (updated.display_name, updated.email) == ("Renamed", "A@ACME.test")


async def test_billing_staff_still_learn_that_an_email_is_taken(deps: AccountDeps) -> None:
    mine = await make(deps, "a@acme.test")
    await make(deps, "b@acme.test")
    with pytest.raises(AlreadyExists) as caught:
        await use_cases.update_account(deps, ADMIN, mine, AccountFields(email="b@acme.test"), ["email"])
    assert caught.value.reason == "EMAIL_TAKEN"
    moved = await use_cases.update_account(deps, ADMIN, mine, AccountFields(email="c@acme.test"), ["email"])
    assert moved.email == "c@acme.test"


async def test_deleting_an_account_ends_its_users_sessions_after_commit(
    deps: AccountDeps, store: Store, ended: list[str]
) -> None:
    mine = await make(deps, "a@acme.test")
    other = await make(deps, "b@acme.test")
    store.sessions = {"ses_1": (mine, ""), "ses_2": (mine, "logout"), "ses_3": (other, "")}
    await use_cases.delete_account(deps, ADMIN, mine)
    assert store.sessions == {
        "ses_1": (mine, "account_deleted"),
        "ses_2": (mine, "logout"),
        "ses_3": (other, ""),
    }
    assert ended == ["ses_1"]
    await use_cases.undelete_account(deps, ADMIN, mine)
    assert store.sessions["ses_1"] == (mine, "account_deleted")  # undelete brings back logins, not sessions


async def test_a_failed_delete_ends_no_session(deps: AccountDeps, store: Store, ended: list[str]) -> None:
    mine = await make(deps, "a@acme.test")
    store.sessions = {"ses_1": (mine, "")}
    with pytest.raises(TallyError):
        await use_cases.delete_account(deps, ADMIN, mine, etag="stale")
    assert store.sessions == {"ses_1": (mine, "")}
    assert ended == []
    await use_cases.delete_account(deps, ADMIN, mine)
    assert store.sessions == {"ses_1": (mine, "account_deleted")}
    assert ended == ["ses_1"]
