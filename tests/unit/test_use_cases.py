"""Account use cases against in-memory fakes, on a frozen clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from account_svc import use_cases
from account_svc.domain import AccountFields, AccountStatus, PostalAddress
from account_svc.use_cases import AccountDeps
from core.clock import FrozenClock
from core.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from core.pagination import PageTokens
from core.principal import Caller, Principal, Role
from tests.unit.fakes import FakeUnitOfWork, Store

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ADMIN = Caller(Principal("usr_admin", Role.ADMIN, frozenset({"*"})), "/test/Method")


def admin(request_id: str) -> Caller:
    return Caller(ADMIN.principal, ADMIN.method, request_id)


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def deps(store: Store, clock: FrozenClock) -> AccountDeps:
    return AccountDeps(
        new_uow=lambda: FakeUnitOfWork(store),
        new_reader=lambda: FakeUnitOfWork(store),
        clock=clock,
        page_tokens=PageTokens(b"0123456789abcdef"),
    )


def fields(**overrides: object) -> AccountFields:
    base = AccountFields(display_name="Acme Corp", email="billing@acme.test", currency_code="USD")
    return replace(base, **overrides)  # type: ignore[arg-type]


async def test_create_assigns_id_defaults_and_times(deps: AccountDeps, store: Store) -> None:
    account = await use_cases.create_account(deps, ADMIN, fields(metadata={"team": "core"}))

    assert account.id.startswith("acct_")
    assert account.status is AccountStatus.ACTIVE
    assert account.create_time == account.update_time == START
    assert account.delete_time is None
    assert store.accounts[account.id] == account


async def test_create_reports_every_bad_field_and_writes_nothing(deps: AccountDeps, store: Store) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await use_cases.create_account(
            deps,
            ADMIN,
            fields(display_name="x" * 201, email="not-an-email", currency_code="XYZ", phone="555"),
        )

    bad = {v.field for v in caught.value.violations}
    assert bad == {"account.display_name", "account.email", "account.currency_code", "account.phone"}
    assert store.accounts == {}
    assert store.commits == 0


async def test_duplicate_email_is_case_insensitive(deps: AccountDeps) -> None:
    await use_cases.create_account(deps, ADMIN, fields(email="Billing@Acme.test"))

    with pytest.raises(AlreadyExists) as caught:
        await use_cases.create_account(deps, ADMIN, fields(email="billing@ACME.TEST"))
    assert caught.value.reason == "EMAIL_TAKEN"


async def test_request_id_replays_first_response(deps: AccountDeps, store: Store) -> None:
    first = await use_cases.create_account(deps, admin("req-1"), fields())
    again = await use_cases.create_account(deps, admin("req-1"), fields())

    assert again == first
    assert len(store.accounts) == 1


async def test_request_id_with_different_request_is_rejected(deps: AccountDeps, store: Store) -> None:
    await use_cases.create_account(deps, admin("req-1"), fields())

    with pytest.raises(FailedPrecondition) as caught:
        await use_cases.create_account(deps, admin("req-1"), fields(email="other@acme.test"))
    assert caught.value.reason == "REQUEST_ID_REUSED"
    assert len(store.accounts) == 1


async def test_request_id_expires_after_retention(
    deps: AccountDeps, clock: FrozenClock, store: Store
) -> None:
    await use_cases.create_account(deps, admin("req-1"), fields())
    clock.advance(timedelta(hours=24, seconds=1))

    second = await use_cases.create_account(deps, admin("req-1"), fields(email="new@acme.test"))
    assert second.email == "new@acme.test"
    assert len(store.accounts) == 2


async def test_over_long_request_id_is_invalid(deps: AccountDeps) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await use_cases.create_account(deps, admin("k" * 129), fields())
    assert caught.value.violations[0].field == "request_id"


async def test_get_hides_deleted_unless_asked(deps: AccountDeps) -> None:
    account = await use_cases.create_account(deps, ADMIN, fields())
    await use_cases.delete_account(deps, ADMIN, account.id)

    with pytest.raises(NotFound):
        await use_cases.get_account(deps, ADMIN, account.id)
    shown = await use_cases.get_account(deps, ADMIN, account.id, show_deleted=True)
    assert shown.delete_time == START


async def test_get_unknown_and_empty_ids(deps: AccountDeps) -> None:
    with pytest.raises(NotFound):
        await use_cases.get_account(deps, ADMIN, "acct_doesnotexist")
    with pytest.raises(NotFound):
        await use_cases.get_account(deps, ADMIN, "x" * 10_000)
    with pytest.raises(InvalidArgument):
        await use_cases.get_account(deps, ADMIN, "")


async def test_update_changes_only_masked_fields(deps: AccountDeps, clock: FrozenClock) -> None:
    account = await use_cases.create_account(deps, ADMIN, fields(phone="+14155550123"))
    clock.advance(timedelta(minutes=5))

    updated = await use_cases.update_account(
        deps, ADMIN, account.id, fields(display_name="Acme Inc", phone=""), ["display_name"]
    )

    assert updated.display_name == "Acme Inc"
    assert updated.phone == "+14155550123"
    assert updated.update_time == START + timedelta(minutes=5)
    assert updated.create_time == START
    assert updated.etag != account.etag


async def test_update_with_star_replaces_everything(deps: AccountDeps) -> None:
    address = PostalAddress(region_code="DE", locality="Berlin", address_lines=("Hauptstr. 1",))
    account = await use_cases.create_account(
        deps, ADMIN, fields(billing_address=address, metadata={"a": "1"})
    )

    updated = await use_cases.update_account(
        deps,
        ADMIN,
        account.id,
        fields(display_name="Neu", currency_code="EUR", status=AccountStatus.SUSPENDED),
        ["*"],
    )

    assert (updated.display_name, updated.currency_code, updated.status) == (
        "Neu",
        "EUR",
        AccountStatus.SUSPENDED,
    )
    assert updated.billing_address is None
    assert updated.metadata == {}


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (["nickname"], "unknown field 'nickname'"),
        (["create_time"], "output only"),
        (["billing_address.locality"], "replaced as a whole"),
        ([], "names no field"),
    ],
)
async def test_update_rejects_bad_masks(deps: AccountDeps, mask: list[str], message: str) -> None:
    account = await use_cases.create_account(deps, ADMIN, fields())

    with pytest.raises(InvalidArgument) as caught:
        await use_cases.update_account(deps, ADMIN, account.id, fields(), mask)
    assert caught.value.violations[0].field == "update_mask"
    assert message in caught.value.message


async def test_update_with_stale_etag_is_aborted(deps: AccountDeps, store: Store) -> None:
    account = await use_cases.create_account(deps, ADMIN, fields())
    await use_cases.update_account(deps, ADMIN, account.id, fields(display_name="Second"), ["display_name"])

    with pytest.raises(Aborted):
        await use_cases.update_account(
            deps, ADMIN, account.id, fields(display_name="Third"), ["display_name"], etag=account.etag
        )
    assert store.accounts[account.id].display_name == "Second"


async def test_update_to_taken_email_fails_and_changes_nothing(deps: AccountDeps, store: Store) -> None:
    await use_cases.create_account(deps, ADMIN, fields(email="a@acme.test"))
    other = await use_cases.create_account(deps, ADMIN, fields(email="b@acme.test"))

    with pytest.raises(AlreadyExists):
        await use_cases.update_account(
            deps,
            ADMIN,
            other.id,
            fields(email="A@acme.test", display_name="Changed"),
            ["email", "display_name"],
        )
    assert store.accounts[other.id] == other


async def test_delete_then_undelete(deps: AccountDeps, clock: FrozenClock) -> None:
    account = await use_cases.create_account(deps, ADMIN, fields())
    deleted = await use_cases.delete_account(deps, ADMIN, account.id, etag=account.etag)
    assert deleted.delete_time == START

    with pytest.raises(NotFound):
        await use_cases.delete_account(deps, ADMIN, account.id)

    clock.advance(timedelta(hours=1))
    restored = await use_cases.undelete_account(deps, ADMIN, account.id)
    assert restored.delete_time is None
    assert restored.update_time == START + timedelta(hours=1)

    with pytest.raises(FailedPrecondition) as caught:
        await use_cases.undelete_account(deps, ADMIN, account.id)
    assert caught.value.reason == "ACCOUNT_NOT_DELETED"


async def test_deleted_email_can_be_reused_but_blocks_undelete(deps: AccountDeps) -> None:
    first = await use_cases.create_account(deps, ADMIN, fields())
    await use_cases.delete_account(deps, ADMIN, first.id)
    await use_cases.create_account(deps, ADMIN, fields())

    with pytest.raises(AlreadyExists):
        await use_cases.undelete_account(deps, ADMIN, first.id)


async def test_list_pages_in_creation_order(deps: AccountDeps, clock: FrozenClock) -> None:
    created = []
    for n in range(5):
        created.append(await use_cases.create_account(deps, ADMIN, fields(email=f"a{n}@acme.test")))
        clock.advance(timedelta(seconds=1))

    seen, token, pages = [], "", 0
    while True:
        page = await use_cases.list_accounts(deps, ADMIN, size=2, page_token=token)
        seen.extend(page.accounts)
        pages += 1
        token = page.next_page_token
        if not token:
            break

    assert [a.id for a in seen] == [a.id for a in created]
    assert pages == 3


async def test_list_filters_and_hides_deleted(deps: AccountDeps) -> None:
    a = await use_cases.create_account(deps, ADMIN, fields(email="a@acme.test"))
    b = await use_cases.create_account(
        deps, ADMIN, fields(email="b@acme.test", status=AccountStatus.SUSPENDED)
    )
    await use_cases.delete_account(deps, ADMIN, a.id)

    live = await use_cases.list_accounts(deps, ADMIN)
    assert [x.id for x in live.accounts] == [b.id]
    everything = await use_cases.list_accounts(deps, ADMIN, show_deleted=True)
    assert {x.id for x in everything.accounts} == {a.id, b.id}
    suspended = await use_cases.list_accounts(deps, ADMIN, filter_text="status = STATUS_SUSPENDED")
    assert [x.id for x in suspended.accounts] == [b.id]
    by_email = await use_cases.list_accounts(
        deps, ADMIN, filter_text='email = "A@ACME.test"', show_deleted=True
    )
    assert [x.id for x in by_email.accounts] == [a.id]


async def test_page_token_must_match_request(deps: AccountDeps) -> None:
    for n in range(3):
        await use_cases.create_account(deps, ADMIN, fields(email=f"a{n}@acme.test"))
    page = await use_cases.list_accounts(deps, ADMIN, size=1)

    with pytest.raises(InvalidArgument) as caught:
        await use_cases.list_accounts(deps, ADMIN, size=1, page_token=page.next_page_token, show_deleted=True)
    assert caught.value.violations[0].field == "page_token"

    tampered = page.next_page_token[:-2] + ("AA" if page.next_page_token[-2:] != "AA" else "BB")
    with pytest.raises(InvalidArgument):
        await use_cases.list_accounts(deps, ADMIN, size=1, page_token=tampered)
    with pytest.raises(InvalidArgument):
        await use_cases.list_accounts(deps, ADMIN, size=-1)
