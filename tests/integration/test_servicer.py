"""The account service through a real in-process gRPC server on port 0, on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from app.server import App
from interceptors.errors import ErrorMappingInterceptor
from tally.account.v1 import account_pb2, account_pb2_grpc
from tally.account.v1.account_pb2_grpc import AccountServiceStub
from tests.support import details

Account = account_pb2.Account


def new_account(n: int = 0, **overrides: object) -> Account:
    values: dict[str, object] = {
        "display_name": f"Customer {n}",
        "email": f"c{n}@example.test",
        "currency_code": "USD",
    }
    values.update(overrides)
    return Account(**values)  # type: ignore[arg-type]


async def create(stub: AccountServiceStub, n: int = 0, **overrides: object) -> Account:
    return await stub.CreateAccount(account_pb2.CreateAccountRequest(account=new_account(n, **overrides)))


async def test_create_get_update_delete_undelete(accounts: AccountServiceStub) -> None:
    created = await create(
        accounts,
        1,
        phone="+4930123456",
        metadata={"crm": "42"},
        billing_address={"region_code": "DE", "locality": "Berlin", "address_lines": ["Hauptstr. 1"]},
    )
    assert created.id.startswith("acct_")
    assert created.status == Account.STATUS_ACTIVE
    assert created.create_time == created.update_time
    assert not created.HasField("delete_time")

    fetched = await accounts.GetAccount(account_pb2.GetAccountRequest(id=created.id))
    assert fetched == created

    updated = await accounts.UpdateAccount(
        account_pb2.UpdateAccountRequest(
            account=Account(id=created.id, display_name="Renamed", phone="+4930999999"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    assert updated.display_name == "Renamed"
    assert updated.phone == "+4930123456"
    assert updated.billing_address.locality == "Berlin"
    assert updated.etag != created.etag

    deleted = await accounts.DeleteAccount(account_pb2.DeleteAccountRequest(id=created.id, etag=updated.etag))
    assert deleted.HasField("delete_time")
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await accounts.GetAccount(account_pb2.GetAccountRequest(id=created.id))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    shown = await accounts.GetAccount(account_pb2.GetAccountRequest(id=created.id, show_deleted=True))
    assert shown.delete_time == deleted.delete_time

    restored = await accounts.UndeleteAccount(account_pb2.UndeleteAccountRequest(id=created.id))
    assert not restored.HasField("delete_time")
    assert (await accounts.GetAccount(account_pb2.GetAccountRequest(id=created.id))).display_name == "Renamed"


async def test_bad_input_names_every_field(accounts: AccountServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(accounts, display_name="x" * 201, email="nope", currency_code="ABC")

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = details(caught.value)
    info, violations = found.info, found.violations
    assert info.reason == "INVALID_ARGUMENT"
    assert set(violations) == {"account.display_name", "account.email", "account.currency_code"}
    assert "ISO 4217" in violations["account.currency_code"]


async def test_unknown_enum_value_is_rejected(accounts: AccountServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(accounts, status=7)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "account.status" in details(caught.value).violations


async def test_unknown_update_mask_path(accounts: AccountServiceStub) -> None:
    created = await create(accounts)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.UpdateAccount(
            account_pb2.UpdateAccountRequest(
                account=Account(id=created.id, display_name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name", "shoe_size"]),
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "shoe_size" in details(caught.value).violations["update_mask"]


async def test_empty_mask_updates_populated_fields(accounts: AccountServiceStub) -> None:
    created = await create(accounts, phone="+14155550123")
    updated = await accounts.UpdateAccount(
        account_pb2.UpdateAccountRequest(account=Account(id=created.id, currency_code="EUR"))
    )
    assert (updated.currency_code, updated.display_name, updated.phone) == (
        "EUR",
        "Customer 0",
        "+14155550123",
    )


async def test_duplicate_email_and_not_found(accounts: AccountServiceStub) -> None:
    await create(accounts, 1, email="dup@example.test")
    with pytest.raises(grpc.aio.AioRpcError) as duplicate:
        await create(accounts, 2, email="DUP@example.test")
    assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(duplicate.value).info.reason == "EMAIL_TAKEN"

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await accounts.GetAccount(account_pb2.GetAccountRequest(id="acct_00000000000000000000000000"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert details(missing.value).info.reason == "ACCOUNT_NOT_FOUND"


async def test_stale_etag_is_aborted(accounts: AccountServiceStub) -> None:
    created = await create(accounts)
    await accounts.UpdateAccount(
        account_pb2.UpdateAccountRequest(account=Account(id=created.id, phone="+15550001111"))
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.DeleteAccount(account_pb2.DeleteAccountRequest(id=created.id, etag=created.etag))
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert details(caught.value).info.reason == "ETAG_MISMATCH"


async def test_request_id_replay_and_reuse(accounts: AccountServiceStub) -> None:
    request = account_pb2.CreateAccountRequest(account=new_account(5), request_id="7d2f-retry")
    first = await accounts.CreateAccount(request)
    second = await accounts.CreateAccount(request)
    assert second == first

    request.account.display_name = "Something else"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.CreateAccount(request)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(caught.value).info.reason == "REQUEST_ID_REUSED"
    listing = await accounts.ListAccounts(account_pb2.ListAccountsRequest())
    assert [a.id for a in listing.accounts] == [first.id]


async def test_pagination_over_grpc(accounts: AccountServiceStub) -> None:
    created = [await create(accounts, n) for n in range(7)]
    await accounts.DeleteAccount(account_pb2.DeleteAccountRequest(id=created[3].id))

    ids, token = [], ""
    while True:
        page = await accounts.ListAccounts(account_pb2.ListAccountsRequest(page_size=3, page_token=token))
        assert len(page.accounts) <= 3
        ids += [a.id for a in page.accounts]
        token = page.next_page_token
        if not token:
            break
    assert ids == [a.id for a in created if a.id != created[3].id]

    first = await accounts.ListAccounts(account_pb2.ListAccountsRequest(page_size=2))
    with pytest.raises(grpc.aio.AioRpcError) as mismatch:
        await accounts.ListAccounts(
            account_pb2.ListAccountsRequest(
                page_size=2, page_token=first.next_page_token, filter="status = ACTIVE"
            )
        )
    assert mismatch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in details(mismatch.value).violations


async def test_health_and_reflection(app: App, channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tally.account.v1.AccountService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name async for reply in replies for s in reply.list_services_response.service}
    assert {"tally.account.v1.AccountService", "grpc.health.v1.Health"} <= names


async def test_oversized_message_is_refused(accounts: AccountServiceStub) -> None:
    huge = new_account(metadata={"blob": "x" * (5 * 1024 * 1024)})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await accounts.CreateAccount(account_pb2.CreateAccountRequest(account=huge))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


class _Exploding(account_pb2_grpc.AccountServiceServicer):
    """A servicer whose bug must not leak to callers."""

    async def GetAccount(self, request: object, context: object) -> Account:
        raise RuntimeError("SELECT password FROM secrets")


@pytest.fixture
async def exploding_channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()])
    account_pb2_grpc.add_AccountServiceServicer_to_server(_Exploding(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(0)


async def test_internal_errors_do_not_leak(exploding_channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await AccountServiceStub(exploding_channel).GetAccount(account_pb2.GetAccountRequest(id="acct_x"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error"
    assert "SELECT" not in str(caught.value.trailing_metadata())
    assert details(caught.value).info.reason == "INTERNAL"
