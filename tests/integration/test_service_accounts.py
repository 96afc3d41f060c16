"""CreateServiceAccount through the real server, on each backend: a replay within the idempotency
window returns the same secret, kept sealed under the server's key; scopes must be known ones."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from pydantic import SecretStr
from sqlalchemy import select, update

from app.server import App
from core.idempotency import IdempotencyKeyRow
from core.settings import Settings
from tally.account.v1 import auth_pb2, auth_pb2_grpc
from tests.support import channel_as, details, failing, mint, serving

SCOPE = "CreateServiceAccount:test:admin"  # the idempotency scope of an admin minted by mint()


def create_request(
    request_id: str, scopes: tuple[str, ...] = ("accounts:read",)
) -> auth_pb2.CreateServiceAccountRequest:
    return auth_pb2.CreateServiceAccountRequest(
        service_account=auth_pb2.ServiceAccount(display_name="usage ingester", scopes=list(scopes)),
        request_id=request_id,
    )


@pytest.fixture
async def auth(channel: grpc.aio.Channel) -> auth_pb2_grpc.AuthServiceStub:
    return auth_pb2_grpc.AuthServiceStub(channel)


async def stored_reply(app: App, request_id: str) -> str:
    async with app.components.platform.readers() as session:
        response = await session.scalar(
            select(IdempotencyKeyRow.response).where(
                IdempotencyKeyRow.scope == SCOPE, IdempotencyKeyRow.key == request_id
            )
        )
    assert response is not None, "no stored reply"
    return response


async def store_reply(app: App, request_id: str, response: str) -> None:
    async with app.components.platform.writers() as session:
        await session.execute(
            update(IdempotencyKeyRow)
            .where(IdempotencyKeyRow.scope == SCOPE, IdempotencyKeyRow.key == request_id)
            .values(response=response)
        )
        await session.commit()


async def test_a_replay_returns_the_same_secret(app: App, auth: auth_pb2_grpc.AuthServiceStub) -> None:
    first = await auth.CreateServiceAccount(create_request("svc-replay-1"))
    replay = await auth.CreateServiceAccount(create_request("svc-replay-1"))

    assert first.client_secret
    assert replay.client_secret == first.client_secret
    assert replay.service_account == first.service_account
    listed = await auth.ListServiceAccounts(auth_pb2.ListServiceAccountsRequest())
    assert [account.id for account in listed.service_accounts] == [first.service_account.id]
    # The replayed secret is the account's real one.
    async with channel_as(app, None) as anonymous:
        issued = await auth_pb2_grpc.AuthServiceStub(anonymous).IssueServiceToken(
            auth_pb2.IssueServiceTokenRequest(
                client_id=replay.service_account.id, client_secret=replay.client_secret
            )
        )
    assert issued.scope == "accounts:read"


async def test_the_stored_reply_keeps_the_secret_sealed(
    app: App, auth: auth_pb2_grpc.AuthServiceStub
) -> None:
    created = await auth.CreateServiceAccount(create_request("svc-sealed-1"))
    row = await stored_reply(app, "svc-sealed-1")

    assert created.client_secret not in row
    stored = json.loads(row)
    assert stored["service_account"]["id"] == created.service_account.id
    assert stored["client_secret_sealed"].startswith("v1.")


async def test_a_tampered_reply_fails_cleanly(app: App, auth: auth_pb2_grpc.AuthServiceStub) -> None:
    created = await auth.CreateServiceAccount(create_request("svc-tampered-1"))
    stored = json.loads(await stored_reply(app, "svc-tampered-1"))
    sealed = stored["client_secret_sealed"]
    middle = len(sealed) - 10  # inside the ciphertext, past the version and key id
    stored["client_secret_sealed"] = (
        sealed[:middle] + ("A" if sealed[middle] != "A" else "B") + sealed[middle + 1 :]
    )
    await store_reply(app, "svc-tampered-1", json.dumps(stored))

    error = await failing(auth.CreateServiceAccount(create_request("svc-tampered-1")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    found = details(error)
    assert found.reason == "REPLAY_UNREADABLE"
    assert found.info.metadata["service_account_id"] == created.service_account.id
    assert created.service_account.id in (error.details() or "")


async def test_a_reply_moved_to_another_request_id_does_not_open(
    app: App, auth: auth_pb2_grpc.AuthServiceStub
) -> None:
    await auth.CreateServiceAccount(create_request("svc-moved-a"))
    await auth.CreateServiceAccount(create_request("svc-moved-b"))
    await store_reply(app, "svc-moved-b", await stored_reply(app, "svc-moved-a"))

    error = await failing(auth.CreateServiceAccount(create_request("svc-moved-b")))
    assert details(error).reason == "REPLAY_UNREADABLE"


@pytest.fixture
async def rotated_app(settings: Settings) -> AsyncIterator[App]:
    """The same database served under another TALLY_SECRET_KEY."""
    rotated = settings.model_copy(update={"secret_key": SecretStr("another-server-key-0123456789abcdef")})
    async with serving(rotated) as application:
        yield application


async def test_a_replay_after_the_key_changed_says_so(
    app: App, auth: auth_pb2_grpc.AuthServiceStub, rotated_app: App
) -> None:
    created = await auth.CreateServiceAccount(create_request("svc-rotated-1"))
    async with channel_as(rotated_app, mint(rotated_app)) as channel:
        error = await failing(
            auth_pb2_grpc.AuthServiceStub(channel).CreateServiceAccount(create_request("svc-rotated-1"))
        )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(error).reason == "REPLAY_KEY_CHANGED"
    assert "TALLY_SECRET_KEY" in (error.details() or "")
    assert created.service_account.id in (error.details() or "")


@pytest.mark.parametrize("unknown", ["billing:teleport", "*", "accounts:reads"])
async def test_unknown_scopes_are_refused_by_name(auth: auth_pb2_grpc.AuthServiceStub, unknown: str) -> None:
    error = await failing(auth.CreateServiceAccount(create_request("", ("accounts:read", unknown))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = details(error).violations["service_account.scopes"]
    assert repr(unknown) in violation
    listed = await auth.ListServiceAccounts(auth_pb2.ListServiceAccountsRequest())
    assert list(listed.service_accounts) == []


async def test_every_scope_a_policy_names_can_be_granted(
    app: App, auth: auth_pb2_grpc.AuthServiceStub
) -> None:
    known = app.components.identity.known_scopes
    assert {
        "accounts:read",
        "accounts:write",
        "accounts:delete",
        "audit:read",
        "service_accounts:write",
    } <= known
    created = await auth.CreateServiceAccount(create_request("", tuple(sorted(known))))
    assert sorted(created.service_account.scopes) == sorted(known)
