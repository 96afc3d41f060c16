"""An account's billing time zone over gRPC and REST, on each backend: set, defaulted, refused, updated."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import select

from account_svc.repository import AccountRow
from app.server import App
from tally.account.v1 import account_pb2
from tally.account.v1.account_pb2_grpc import AccountServiceStub
from tests.integration.test_gateway import Gateway, bearer, call, detail
from tests.support import details, failing, mint

Account = account_pb2.Account


def _account(n: int, **overrides: object) -> Account:
    values: dict[str, object] = {
        "display_name": f"Zoned {n}",
        "email": f"zone{n}@example.test",
        "currency_code": "USD",
        **overrides,
    }
    return Account(**values)  # type: ignore[arg-type]


async def _stored_zone(app: App, account_id: str) -> str:
    """What billing reads (account_svc/directory.py reads this column), not what the API echoes."""
    async with app.components.platform.readers() as session:
        statement = select(AccountRow.billing_time_zone).where(AccountRow.id == account_id)
        return str((await session.execute(statement)).scalar_one())


async def test_time_zone_is_stored_defaulted_and_updated(app: App, accounts: AccountServiceStub) -> None:
    new_york = await accounts.CreateAccount(
        account_pb2.CreateAccountRequest(account=_account(1, billing_time_zone="America/New_York"))
    )
    assert new_york.billing_time_zone == "America/New_York"
    assert await _stored_zone(app, new_york.id) == "America/New_York"

    plain = await accounts.CreateAccount(account_pb2.CreateAccountRequest(account=_account(2)))
    assert plain.billing_time_zone == "UTC"
    assert await _stored_zone(app, plain.id) == "UTC"

    moved = await accounts.UpdateAccount(
        account_pb2.UpdateAccountRequest(
            account=Account(id=plain.id, billing_time_zone="Asia/Kolkata", display_name="ignored"),
            update_mask=field_mask_pb2.FieldMask(paths=["billing_time_zone"]),
        )
    )
    assert (moved.billing_time_zone, moved.display_name) == ("Asia/Kolkata", "Zoned 2")
    assert await _stored_zone(app, plain.id) == "Asia/Kolkata"

    # Named in the mask but empty: back to the default, as the contract says of an empty zone.
    reset = await accounts.UpdateAccount(
        account_pb2.UpdateAccountRequest(
            account=Account(id=new_york.id),
            update_mask=field_mask_pb2.FieldMask(paths=["billing_time_zone"]),
        )
    )
    assert reset.billing_time_zone == "UTC"
    got = await accounts.GetAccount(account_pb2.GetAccountRequest(id=new_york.id))
    assert got.billing_time_zone == "UTC"


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "america/new_york", "../../../etc/passwd"])
async def test_bad_time_zone_is_refused_naming_the_field(accounts: AccountServiceStub, zone: str) -> None:
    error = await failing(
        accounts.CreateAccount(account_pb2.CreateAccountRequest(account=_account(3, billing_time_zone=zone)))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(details(error).violations) == {"account.billing_time_zone"}

    created = await accounts.CreateAccount(account_pb2.CreateAccountRequest(account=_account(4)))
    error = await failing(
        accounts.UpdateAccount(
            account_pb2.UpdateAccountRequest(account=Account(id=created.id, billing_time_zone=zone))
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(details(error).violations) == {"account.billing_time_zone"}
    unchanged = await accounts.GetAccount(account_pb2.GetAccountRequest(id=created.id))
    assert unchanged.billing_time_zone == "UTC" and unchanged.etag == created.etag


async def test_time_zone_change_is_audited(accounts: AccountServiceStub, channel: grpc.aio.Channel) -> None:
    from tally.audit.v1 import audit_pb2, audit_pb2_grpc

    created = await accounts.CreateAccount(account_pb2.CreateAccountRequest(account=_account(5)))
    await accounts.UpdateAccount(
        account_pb2.UpdateAccountRequest(account=Account(id=created.id, billing_time_zone="Europe/Berlin"))
    )
    listing = await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(resource_id=created.id)
    )
    update = next(event for event in listing.audit_events if event.action == "update")
    changes = dict(update.changes)
    assert dict(changes["billing_time_zone"]) == {"before": "UTC", "after": "Europe/Berlin"}


@pytest.fixture
async def http(app: App) -> AsyncIterator[aiohttp.ClientSession]:
    async with Gateway(app) as session:
        yield session


async def test_time_zone_over_rest(app: App, http: aiohttp.ClientSession) -> None:
    admin = bearer(mint(app))
    body = {"displayName": "Rest", "email": "rest@example.test", "currencyCode": "EUR"}
    created, _ = await call(
        http, "POST", "/v1/accounts", 200, json={**body, "billingTimeZone": "Europe/Paris"}, headers=admin
    )
    assert created["billingTimeZone"] == "Europe/Paris"

    defaulted, _ = await call(
        http, "POST", "/v1/accounts", 200, json={**body, "email": "rest2@example.test"}, headers=admin
    )
    assert defaulted["billingTimeZone"] == "UTC"

    patched, _ = await call(
        http,
        "PATCH",
        f"/v1/accounts/{defaulted['id']}?updateMask=billingTimeZone",
        200,
        json={"billingTimeZone": "America/New_York", "displayName": "not in the mask"},
        headers=admin,
    )
    assert (patched["billingTimeZone"], patched["displayName"]) == ("America/New_York", "Rest")

    refused, _ = await call(
        http,
        "PATCH",
        f"/v1/accounts/{created['id']}",
        400,
        json={"billingTimeZone": "Europe/Atlantis"},
        headers=admin,
    )
    fields = {v["field"] for v in detail(refused, "BadRequest")["fieldViolations"]}
    assert fields == {"account.billing_time_zone"}
