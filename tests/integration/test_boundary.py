"""Hostile input is refused cleanly at the boundary, with the same answer on SQLite and PostgreSQL:
control characters in any request string (public RPCs too), emails that would outgrow their
column once normalised or look like another, ids far too long to exist, and bytes that do not
parse as the request message. Each is INVALID_ARGUMENT (or NOT_FOUND) naming the field, with
small trailers, and nothing is stored."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from app.server import App
from core.principal import Role
from tally.account.v1 import account_pb2, account_pb2_grpc, auth_pb2, auth_pb2_grpc
from tests.integration.test_gateway import Gateway
from tests.support import channel_as, details, failing, mint

ACCOUNTS = "/tally.account.v1.AccountService"
LONG_ID = "acct_" + "x" * 7000
# gRPC's default limit for received metadata is 8 KiB; an error must stay far below it.
SMALL_TRAILERS = 2048


@pytest.fixture
async def anonymous(app: App) -> AsyncIterator[grpc.aio.Channel]:
    async with channel_as(app, None) as chan:
        yield chan


def account(**change: Any) -> account_pb2.Account:
    fields: dict[str, Any] = {"display_name": "Acme", "email": "billing@acme.test", "currency_code": "USD"}
    return account_pb2.Account(**{**fields, **change})


async def stored_accounts(accounts: account_pb2_grpc.AccountServiceStub) -> list[str]:
    listing = await accounts.ListAccounts(account_pb2.ListAccountsRequest(page_size=100, show_deleted=True))
    return [a.email for a in listing.accounts]


def trailer_bytes(error: grpc.aio.AioRpcError) -> int:
    return sum(len(key) + len(value) for key, value in error.trailing_metadata() or ())


async def refused(call: object, field: str) -> str:
    """The call fails INVALID_ARGUMENT naming `field`; returns the field's description."""
    error = await failing(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    found = details(error)
    assert field in found.violations, found.violations
    assert trailer_bytes(error) < SMALL_TRAILERS
    return found.violations[field]


async def test_a_nul_byte_in_an_email_is_refused_and_nothing_is_stored(
    accounts: account_pb2_grpc.AccountServiceStub,
) -> None:
    request = account_pb2.CreateAccountRequest(account=account(email="billing\0@acme.test"))
    assert "U+0000" in await refused(accounts.CreateAccount(request), "account.email")
    assert await stored_accounts(accounts) == []


async def test_control_characters_in_nested_and_map_fields_are_named_by_path(
    accounts: account_pb2_grpc.AccountServiceStub,
) -> None:
    request = account_pb2.CreateAccountRequest(account=account(metadata={"tier": "gold\x1b[0m"}))
    await refused(accounts.CreateAccount(request), "account.metadata['tier']")
    request = account_pb2.CreateAccountRequest(account=account())
    request.account.billing_address.region_code = "US"
    request.account.billing_address.address_lines.extend(["1 Main St", "\x85"])
    await refused(accounts.CreateAccount(request), "account.billing_address.address_lines[1]")
    assert await stored_accounts(accounts) == []


async def test_a_nul_byte_in_an_id_or_a_filter_is_refused(
    accounts: account_pb2_grpc.AccountServiceStub,
) -> None:
    await refused(accounts.GetAccount(account_pb2.GetAccountRequest(id="acct_\0")), "id")
    await refused(accounts.DeleteAccount(account_pb2.DeleteAccountRequest(id="acct_\0")), "id")
    listing = account_pb2.ListAccountsRequest(filter='email = "a\0@acme.test"')
    await refused(accounts.ListAccounts(listing), "filter")


async def test_public_rpcs_refuse_nul_bytes(anonymous: grpc.aio.Channel) -> None:
    auth = auth_pb2_grpc.AuthServiceStub(anonymous)
    await refused(auth.Login(auth_pb2.LoginRequest(email="a\0@acme.test", password="p" * 12)), "email")
    await refused(
        auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token="rt_\0.secret")), "refresh_token"
    )
    await refused(auth.Logout(auth_pb2.LogoutRequest(refresh_token="rt_x.se\0cret")), "refresh_token")
    issue = auth_pb2.IssueServiceTokenRequest(client_id="svc_\0", client_secret="s")
    await refused(auth.IssueServiceToken(issue), "client_id")


async def test_an_email_whose_normalised_form_outgrows_its_column_is_refused(
    accounts: account_pb2_grpc.AccountServiceStub, channel: grpc.aio.Channel
) -> None:
    email = "a@" + "ß" * 200 + ".de"
    request = account_pb2.CreateAccountRequest(account=account(email=email))
    assert "normalised" in await refused(accounts.CreateAccount(request), "account.email")
    user = auth_pb2.CreateUserRequest(
        user=auth_pb2.User(email=email, role=auth_pb2.User.ROLE_ADMIN), password="p" * 12
    )
    await refused(auth_pb2_grpc.AuthServiceStub(channel).CreateUser(user), "user.email")
    assert await stored_accounts(accounts) == []


async def test_a_zero_width_space_cannot_make_a_look_alike_second_account(
    accounts: account_pb2_grpc.AccountServiceStub,
) -> None:
    await accounts.CreateAccount(account_pb2.CreateAccountRequest(account=account()))
    twin = account_pb2.CreateAccountRequest(account=account(email="billing\u200b@acme.test"))
    assert "invisible" in await refused(accounts.CreateAccount(twin), "account.email")
    spoof = account_pb2.CreateAccountRequest(account=account(email="b@acme.test", display_name="Acme\u202e"))
    await refused(accounts.CreateAccount(spoof), "account.display_name")
    assert await stored_accounts(accounts) == ["billing@acme.test"]


async def test_a_7000_character_id_is_not_found_with_small_trailers(
    accounts: account_pb2_grpc.AccountServiceStub,
) -> None:
    for call in (
        accounts.GetAccount(account_pb2.GetAccountRequest(id=LONG_ID)),
        accounts.DeleteAccount(account_pb2.DeleteAccountRequest(id=LONG_ID)),
        accounts.UndeleteAccount(account_pb2.UndeleteAccountRequest(id=LONG_ID)),
    ):
        error = await failing(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert trailer_bytes(error) < SMALL_TRAILERS
        assert len(error.details()) < 200
        assert len(details(error).info.metadata["id"]) < 100


async def test_a_7000_character_id_is_not_found_for_a_customer_too(app: App) -> None:
    token = mint(app, Role.CUSTOMER, account_id="acct_own")
    async with channel_as(app, token) as chan:
        error = await failing(
            account_pb2_grpc.AccountServiceStub(chan).GetAccount(account_pb2.GetAccountRequest(id=LONG_ID))
        )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert trailer_bytes(error) < SMALL_TRAILERS


async def test_a_7000_character_id_over_rest_is_404_with_a_small_body(app: App) -> None:
    async with Gateway(app) as http:
        headers = {"Authorization": f"Bearer {mint(app)}"}
        async with http.get(f"/v1/accounts/{LONG_ID}", headers=headers) as response:
            body = await response.text()
            assert response.status == 404, body
    assert len(body) < 1000


async def test_a_nul_byte_over_rest_is_400_naming_the_field(app: App) -> None:
    async with Gateway(app) as http:
        headers = {"Authorization": f"Bearer {mint(app)}"}
        payload = {"displayName": "Acme", "email": "billing\u0000@acme.test", "currencyCode": "USD"}
        async with http.post("/v1/accounts", json=payload, headers=headers) as response:
            body = await response.json()
            assert response.status == 400, body
    violations = next(d for d in body["details"] if d["@type"].endswith("BadRequest"))["fieldViolations"]
    assert violations[0]["field"] == "account.email"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xff\xff\xff\xff", id="corrupt-wire-format"),
        pytest.param(b"\x0a\x02\xff\xfe", id="invalid-utf8-in-a-string"),
        pytest.param(b"\x0a\x10abc", id="truncated"),
    ],
)
async def test_bytes_that_do_not_parse_are_invalid_argument(
    channel: grpc.aio.Channel, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    raw = channel.unary_unary(f"{ACCOUNTS}/GetAccount", request_serializer=None, response_deserializer=None)
    with caplog.at_level(logging.WARNING):
        error = await failing(raw(payload))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert details(error).reason == "MALFORMED_MESSAGE"
    assert "Error" not in error.details()  # no Python exception class named
    warnings = [r for r in caplog.records if r.name == "tally.errors"]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert warnings[0].exc_info is None


async def test_an_unparsable_public_request_is_refused_before_auth(anonymous: grpc.aio.Channel) -> None:
    raw = anonymous.unary_unary(
        "/tally.account.v1.AuthService/Login", request_serializer=None, response_deserializer=None
    )
    error = await failing(raw(b"\x0a\x02\xc3\x28"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_server_still_serves_after_hostile_input(
    accounts: account_pb2_grpc.AccountServiceStub, channel: grpc.aio.Channel
) -> None:
    raw = channel.unary_unary(f"{ACCOUNTS}/GetAccount", request_serializer=None, response_deserializer=None)
    await failing(raw(b"\xff"))
    await failing(accounts.GetAccount(account_pb2.GetAccountRequest(id="\0")))
    created = await accounts.CreateAccount(account_pb2.CreateAccountRequest(account=account()))
    assert (await accounts.GetAccount(account_pb2.GetAccountRequest(id=created.id))).email == created.email


async def test_bytes_that_do_not_parse_in_a_request_stream_are_invalid_argument(
    anonymous: grpc.aio.Channel,
) -> None:
    raw = anonymous.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=None,
        response_deserializer=None,
    )
    call = raw(iter([b"\xff\xff\xff\xff"]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert details(caught.value).reason == "MALFORMED_MESSAGE"
