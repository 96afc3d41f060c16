"""Authentication and authorisation through the real server and interceptor chain, on each backend."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy
from google.protobuf import field_mask_pb2

from account_svc.identity.sessions import SessionCache
from account_svc.identity.tokens import TokenIssuer
from account_svc.repository import AccountRow
from app.modules import SERVICES
from app.server import App
from core.clock import FrozenClock
from core.principal import Principal, Role
from interceptors.policy import PolicyTable
from tally.account.v1 import account_pb2, account_pb2_grpc, auth_pb2, auth_pb2_grpc
from tally.audit.v1 import audit_pb2, audit_pb2_grpc
from tests.support import FakeMonotonic, channel_as, details, failing, mint, reason

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def admin(app: App) -> AsyncIterator[grpc.aio.Channel]:
    async with channel_as(app, mint(app)) as channel:
        yield channel


@pytest.fixture
async def anonymous(app: App) -> AsyncIterator[grpc.aio.Channel]:
    async with channel_as(app, None) as channel:
        yield channel


async def make_account(channel: grpc.aio.Channel, email: str) -> account_pb2.Account:
    return await account_pb2_grpc.AccountServiceStub(channel).CreateAccount(
        account_pb2.CreateAccountRequest(
            account=account_pb2.Account(display_name=email, email=email, currency_code="USD")
        )
    )


def test_every_registered_rpc_declares_a_policy() -> None:
    table = PolicyTable.from_services(SERVICES)
    methods = [f"/{service.full_name}/{method.name}" for service in SERVICES for method in service.methods]
    assert methods, "no services registered"
    assert [m for m in methods if table.get(m) is None] == []
    assert table.get("/tally.account.v1.AccountService/NoSuchMethod") is None


def _unsigned(header: dict[str, str], claims: dict[str, object]) -> str:
    def part(value: dict[str, object] | dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda app: None, id="missing"),
        pytest.param(lambda app: "garbage", id="garbage"),
        pytest.param(lambda app: "a.b.c", id="three-dots"),
        pytest.param(
            lambda app: _unsigned(
                {"alg": "none", "typ": "at+jwt", "kid": app.components.keyring.signing_key.kid},
                {"sub": "x", "role": "admin", "iss": "tally", "aud": "tally", "iat": 1, "exp": 9_999_999_999},
            ),
            id="alg-none",
        ),
        pytest.param(
            lambda app: (
                TokenIssuer(
                    app.components.keyring,
                    "tally",
                    "tally",
                    FrozenClock(datetime.now(UTC) - timedelta(hours=2)),
                )
                .issue(Principal("usr_x", Role.ADMIN, frozenset({"*"})), 60)
                .token
            ),
            id="expired",
        ),
        pytest.param(
            lambda app: (
                TokenIssuer(app.components.keyring, "someone-else", "tally", app.components.clock)
                .issue(Principal("usr_x", Role.ADMIN, frozenset({"*"})), 60)
                .token
            ),
            id="wrong-issuer",
        ),
        pytest.param(
            lambda app: (
                TokenIssuer(app.components.keyring, "tally", "other-api", app.components.clock)
                .issue(Principal("usr_x", Role.ADMIN, frozenset({"*"})), 60)
                .token
            ),
            id="wrong-audience",
        ),
        pytest.param(lambda app: mint(app)[:-4] + "AAAA", id="bad-signature"),
        pytest.param(lambda app: "x" * 10_000, id="oversized"),  # over the 8 KiB cap, under gRPC's 16 KiB
    ],
)
async def test_bad_tokens_are_unauthenticated(app: App, make_token: object) -> None:
    token = make_token(app)  # type: ignore[operator]
    async with channel_as(app, token) as channel:
        error = await failing(
            account_pb2_grpc.AccountServiceStub(channel).ListAccounts(account_pb2.ListAccountsRequest())
        )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    assert token is None or token[:24] not in error.details()  # the token is never echoed back


async def test_customer_sees_only_its_own_account(app: App, admin: grpc.aio.Channel) -> None:
    mine = await make_account(admin, "a@customer.test")
    theirs = await make_account(admin, "b@customer.test")
    async with channel_as(app, mint(app, Role.CUSTOMER, account_id=mine.id)) as channel:
        stub = account_pb2_grpc.AccountServiceStub(channel)
        assert (await stub.GetAccount(account_pb2.GetAccountRequest(id=mine.id))).id == mine.id
        listing = await stub.ListAccounts(account_pb2.ListAccountsRequest())
        assert [a.id for a in listing.accounts] == [mine.id]

        # Another account's id: NOT_FOUND, exactly as for an id that does not exist.
        for call in (
            stub.GetAccount(account_pb2.GetAccountRequest(id=theirs.id)),
            stub.GetAccount(account_pb2.GetAccountRequest(id="acct_doesnotexist")),
            stub.UpdateAccount(
                account_pb2.UpdateAccountRequest(
                    account=account_pb2.Account(id=theirs.id, display_name="pwned")
                )
            ),
        ):
            assert (await failing(call)).code() == grpc.StatusCode.NOT_FOUND

        # Methods customers may not call at all, whatever the id.
        for call in (
            stub.DeleteAccount(account_pb2.DeleteAccountRequest(id=mine.id)),
            stub.UndeleteAccount(account_pb2.UndeleteAccountRequest(id=mine.id)),
            stub.CreateAccount(
                account_pb2.CreateAccountRequest(
                    account=account_pb2.Account(display_name="x", email="x@y.test", currency_code="USD")
                )
            ),
        ):
            assert (await failing(call)).code() == grpc.StatusCode.PERMISSION_DENIED

        # Its own fields: yes; billing terms: no.
        renamed = await stub.UpdateAccount(
            account_pb2.UpdateAccountRequest(account=account_pb2.Account(id=mine.id, display_name="Mine Inc"))
        )
        assert renamed.display_name == "Mine Inc"
        error = await failing(
            stub.UpdateAccount(
                account_pb2.UpdateAccountRequest(
                    account=account_pb2.Account(id=mine.id, currency_code="EUR"),
                    update_mask=field_mask_pb2.FieldMask(paths=["currency_code"]),
                )
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason(error) == "FIELD_NOT_WRITABLE"

    untouched = await account_pb2_grpc.AccountServiceStub(admin).GetAccount(
        account_pb2.GetAccountRequest(id=theirs.id)
    )
    assert untouched.display_name == theirs.display_name


async def test_customer_and_scope_limits_on_admin_methods(app: App) -> None:
    customer = mint(app, Role.CUSTOMER, account_id="acct_x")
    reader = mint(app, Role.SERVICE, scopes=frozenset({"accounts:read"}))
    for token in (customer, reader):
        async with channel_as(app, token) as channel:
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            audit = audit_pb2_grpc.AuditServiceStub(channel)
            for call in (
                auth.CreateUser(
                    auth_pb2.CreateUserRequest(user=auth_pb2.User(email="e@x.test"), password="p" * 12)
                ),
                auth.GetUser(auth_pb2.GetUserRequest(id="usr_x")),
                auth.CreateServiceAccount(
                    auth_pb2.CreateServiceAccountRequest(
                        service_account=auth_pb2.ServiceAccount(display_name="x", scopes=["a:b"])
                    )
                ),
                auth.ListServiceAccounts(auth_pb2.ListServiceAccountsRequest()),
                auth.DeleteServiceAccount(auth_pb2.DeleteServiceAccountRequest(id="svc_x")),
                audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest()),
            ):
                error = await failing(call)
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (token, error)

    async with channel_as(app, reader) as channel:
        stub = account_pb2_grpc.AccountServiceStub(channel)
        await stub.ListAccounts(account_pb2.ListAccountsRequest())
        error = await failing(
            stub.CreateAccount(
                account_pb2.CreateAccountRequest(
                    account=account_pb2.Account(display_name="x", email="x@y.test", currency_code="USD")
                )
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason(error) == "SCOPE_MISSING"


async def _user_with_login(app: App, admin: grpc.aio.Channel, role: int, account_id: str = "") -> str:
    email = f"user-{role}-{account_id or 'admin'}@staff.test"
    await auth_pb2_grpc.AuthServiceStub(admin).CreateUser(
        auth_pb2.CreateUserRequest(
            user=auth_pb2.User(email=email, role=role, account_id=account_id),  # type: ignore[arg-type]
            password=PASSWORD,
        )
    )
    return email


async def test_login_refresh_rotation_reuse_and_logout(
    app: App, admin: grpc.aio.Channel, anonymous: grpc.aio.Channel
) -> None:
    account = await make_account(admin, "owner@customer.test")
    email = await _user_with_login(app, admin, auth_pb2.User.ROLE_CUSTOMER, account.id)
    auth = auth_pb2_grpc.AuthServiceStub(anonymous)

    for bad in (
        auth_pb2.LoginRequest(email=email, password="wrong password!"),
        auth_pb2.LoginRequest(email="nobody@x.test", password=PASSWORD),
    ):
        error = await failing(auth.Login(bad))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(error) == "LOGIN_FAILED"

    first = await auth.Login(auth_pb2.LoginRequest(email=email.upper(), password=PASSWORD))
    assert first.token_type == "Bearer"
    assert first.refresh_token
    async with channel_as(app, first.access_token) as channel:
        own = await account_pb2_grpc.AccountServiceStub(channel).GetAccount(
            account_pb2.GetAccountRequest(id=account.id)
        )
        assert own.id == account.id

    second = await auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=first.refresh_token))
    assert second.refresh_token != first.refresh_token

    # The first refresh token was used: presenting it again ends the whole session.
    error = await failing(auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=first.refresh_token)))
    assert reason(error) == "REFRESH_TOKEN_REUSED"
    error = await failing(auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=second.refresh_token)))
    assert reason(error) == "SESSION_REVOKED"
    async with channel_as(app, second.access_token) as channel:
        error = await failing(
            account_pb2_grpc.AccountServiceStub(channel).GetAccount(
                account_pb2.GetAccountRequest(id=account.id)
            )
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    # A fresh login, then logout: its refresh token and its access tokens stop working.
    third = await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
    await auth.Logout(auth_pb2.LogoutRequest(refresh_token=third.refresh_token))
    error = await failing(auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=third.refresh_token)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    async with channel_as(app, third.access_token) as channel:
        error = await failing(
            account_pb2_grpc.AccountServiceStub(channel).GetAccount(
                account_pb2.GetAccountRequest(id=account.id)
            )
        )
        assert reason(error) == "SESSION_REVOKED"


async def test_ending_a_session_refuses_its_cached_access_tokens_at_once(
    app: App, admin: grpc.aio.Channel, anonymous: grpc.aio.Channel
) -> None:
    """Logout and refresh-token reuse tell this replica's session cache after they commit, so an
    access token it has just seen live stops working now, not when its cache entry runs out."""
    account = await make_account(admin, "cached@customer.test")
    email = await _user_with_login(app, admin, auth_pb2.User.ROLE_CUSTOMER, account.id)
    auth = auth_pb2_grpc.AuthServiceStub(anonymous)
    get = account_pb2.GetAccountRequest(id=account.id)

    async def refused_at_once(access_token: str, end_session: Callable[[], Awaitable[object]]) -> None:
        async with channel_as(app, access_token) as channel:
            stub = account_pb2_grpc.AccountServiceStub(channel)
            await stub.GetAccount(get)  # the cache now holds the session as live
            await end_session()
            error = await failing(stub.GetAccount(get))
            assert reason(error) == "SESSION_REVOKED"

    login = await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
    logout = auth_pb2.LogoutRequest(refresh_token=login.refresh_token)
    await refused_at_once(login.access_token, lambda: auth.Logout(logout))

    login = await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
    refresh = auth_pb2.RefreshTokenRequest(refresh_token=login.refresh_token)
    rotated = await auth.RefreshToken(refresh)
    await refused_at_once(rotated.access_token, lambda: failing(auth.RefreshToken(refresh)))


async def test_service_account_client_credentials(
    app: App, admin: grpc.aio.Channel, anonymous: grpc.aio.Channel
) -> None:
    admin_auth = auth_pb2_grpc.AuthServiceStub(admin)
    created = await admin_auth.CreateServiceAccount(
        auth_pb2.CreateServiceAccountRequest(
            service_account=auth_pb2.ServiceAccount(display_name="usage ingester", scopes=["accounts:read"])
        )
    )
    assert created.client_secret
    auth = auth_pb2_grpc.AuthServiceStub(anonymous)
    issued = await auth.IssueServiceToken(
        auth_pb2.IssueServiceTokenRequest(
            client_id=created.service_account.id, client_secret=created.client_secret
        )
    )
    assert issued.scope == "accounts:read"
    assert not issued.refresh_token
    async with channel_as(app, issued.access_token) as channel:
        stub = account_pb2_grpc.AccountServiceStub(channel)
        await stub.ListAccounts(account_pb2.ListAccountsRequest())
        error = await failing(stub.DeleteAccount(account_pb2.DeleteAccountRequest(id="acct_x")))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    error = await failing(
        auth.IssueServiceToken(
            auth_pb2.IssueServiceTokenRequest(
                client_id=created.service_account.id,
                client_secret=created.client_secret,
                scopes=["accounts:write"],
            )
        )
    )
    assert reason(error) == "SCOPE_NOT_GRANTED"
    error = await failing(
        auth.IssueServiceToken(
            auth_pb2.IssueServiceTokenRequest(client_id=created.service_account.id, client_secret="nope")
        )
    )
    assert reason(error) == "CLIENT_CREDENTIALS_INVALID"

    await admin_auth.DeleteServiceAccount(auth_pb2.DeleteServiceAccountRequest(id=created.service_account.id))
    error = await failing(
        auth.IssueServiceToken(
            auth_pb2.IssueServiceTokenRequest(
                client_id=created.service_account.id, client_secret=created.client_secret
            )
        )
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_audit_events_follow_changes_and_roll_back_with_them(app: App, admin: grpc.aio.Channel) -> None:
    accounts = account_pb2_grpc.AccountServiceStub(admin)
    audit = audit_pb2_grpc.AuditServiceStub(admin)
    created = await accounts.CreateAccount(
        account_pb2.CreateAccountRequest(
            account=account_pb2.Account(display_name="Audited", email="audit@x.test", currency_code="USD"),
            request_id="audit-create-1",
        )
    )
    await accounts.UpdateAccount(
        account_pb2.UpdateAccountRequest(account=account_pb2.Account(id=created.id, display_name="Renamed"))
    )
    # Failing changes leave no event: a stale etag, and a duplicate email.
    await failing(accounts.DeleteAccount(account_pb2.DeleteAccountRequest(id=created.id, etag=created.etag)))
    await failing(
        accounts.CreateAccount(
            account_pb2.CreateAccountRequest(
                account=account_pb2.Account(display_name="Dup", email="AUDIT@x.test", currency_code="USD")
            )
        )
    )

    events = (
        await audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(resource_id=created.id))
    ).audit_events
    assert [e.action for e in events] == ["update", "create"]
    update, create = events
    assert create.actor == "test:admin"
    assert create.actor_role == "admin"
    assert create.request_id == "audit-create-1"
    assert create.method == "/tally.account.v1.AccountService/CreateAccount"
    assert create.changes["email"]["after"] == "audit@x.test"
    assert dict(update.changes) == {"display_name": {"before": "Audited", "after": "Renamed"}}
    everything = (await audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest())).audit_events
    assert {e.resource_id for e in everything} == {created.id}


async def test_access_log_names_the_principal_and_never_the_token(
    app: App, admin: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="tally.access")
    token = mint(app)
    async with channel_as(app, token) as channel:
        await account_pb2_grpc.AccountServiceStub(channel).ListAccounts(account_pb2.ListAccountsRequest())
    records = [r for r in caplog.records if getattr(r, "method", "").endswith("/ListAccounts")]
    assert records, [r.getMessage() for r in caplog.records]
    assert records[-1].principal == "test:admin"  # type: ignore[attr-defined]
    assert all(token not in str(vars(r)) for r in caplog.records)


# --- what a customer may learn, and what deleting its account ends ---------------------------------


async def _customer_session(
    app: App, admin: grpc.aio.Channel, anonymous: grpc.aio.Channel, account_email: str
) -> tuple[account_pb2.Account, str, auth_pb2.TokenResponse]:
    """A new account, its customer user's email, and a login of that user."""
    account = await make_account(admin, account_email)
    email = await _user_with_login(app, admin, auth_pb2.User.ROLE_CUSTOMER, account.id)
    login = await auth_pb2_grpc.AuthServiceStub(anonymous).Login(
        auth_pb2.LoginRequest(email=email, password=PASSWORD)
    )
    return account, email, login


async def test_a_customer_cannot_learn_whether_an_email_is_taken(app: App, admin: grpc.aio.Channel) -> None:
    mine = await make_account(admin, "mine@customer.test")
    await make_account(admin, "theirs@customer.test")

    def change_email(account_id: str, email: str) -> account_pb2.UpdateAccountRequest:
        return account_pb2.UpdateAccountRequest(
            account=account_pb2.Account(id=account_id, email=email),
            update_mask=field_mask_pb2.FieldMask(paths=["email"]),
        )

    async with channel_as(app, mint(app, Role.CUSTOMER, account_id=mine.id)) as channel:
        stub = account_pb2_grpc.AccountServiceStub(channel)
        answers = []
        for email in ("THEIRS@customer.test", "unused@customer.test"):
            error = await failing(stub.UpdateAccount(change_email(mine.id, email)))
            answers.append((error.code(), error.details(), reason(error), details(error).info.metadata))
        assert answers[0] == answers[1]
        assert answers[0][:3] == (
            grpc.StatusCode.PERMISSION_DENIED,
            "customers cannot change email",
            "FIELD_NOT_WRITABLE",
        )
        # Its own address, sent back with another change, is no change of email.
        renamed = await stub.UpdateAccount(
            account_pb2.UpdateAccountRequest(
                account=account_pb2.Account(id=mine.id, display_name="Mine Inc", email="mine@customer.test")
            )
        )
        assert (renamed.display_name, renamed.email) == ("Mine Inc", "mine@customer.test")

    staff = account_pb2_grpc.AccountServiceStub(admin)
    error = await failing(staff.UpdateAccount(change_email(mine.id, "THEIRS@customer.test")))
    assert (error.code(), reason(error)) == (grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN")
    moved = await staff.UpdateAccount(change_email(mine.id, "unused@customer.test"))
    assert moved.email == "unused@customer.test"


async def test_deleting_an_account_ends_its_sessions_and_refuses_logins_until_undeleted(
    app: App, admin: grpc.aio.Channel, anonymous: grpc.aio.Channel
) -> None:
    account, email, session = await _customer_session(app, admin, anonymous, "deleted@customer.test")
    auth = auth_pb2_grpc.AuthServiceStub(anonymous)
    accounts = account_pb2_grpc.AccountServiceStub(admin)
    get = account_pb2.GetAccountRequest(id=account.id, show_deleted=True)
    async with channel_as(app, session.access_token) as channel:
        own = account_pb2_grpc.AccountServiceStub(channel)
        await own.GetAccount(get)  # this replica's session cache now holds the session as live

        await accounts.DeleteAccount(account_pb2.DeleteAccountRequest(id=account.id))

        # Its access token stops working at once, on this replica.
        error = await failing(own.GetAccount(get))
        assert (error.code(), reason(error)) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")
    refresh = auth_pb2.RefreshTokenRequest(refresh_token=session.refresh_token)
    error = await failing(auth.RefreshToken(refresh))
    assert (error.code(), reason(error)) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")

    # Login fails exactly as a wrong password does: nothing says the account is deleted.
    deleted_login = await failing(auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD)))
    wrong_password = await failing(
        auth.Login(auth_pb2.LoginRequest(email=email, password="not the password"))
    )
    assert (deleted_login.code(), deleted_login.details(), reason(deleted_login)) == (
        wrong_password.code(),
        wrong_password.details(),
        reason(wrong_password),
    )
    assert reason(deleted_login) == "LOGIN_FAILED"

    # Undeleted: logins work again; the sessions it ended stay ended.
    await accounts.UndeleteAccount(account_pb2.UndeleteAccountRequest(id=account.id))
    again = await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
    async with channel_as(app, again.access_token) as channel:
        assert (await account_pb2_grpc.AccountServiceStub(channel).GetAccount(get)).id == account.id
    async with channel_as(app, session.access_token) as channel:
        error = await failing(account_pb2_grpc.AccountServiceStub(channel).GetAccount(get))
        assert reason(error) == "SESSION_REVOKED"
    assert reason(await failing(auth.RefreshToken(refresh))) == "SESSION_REVOKED"
    # The other users and sessions were not touched.
    await auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=again.refresh_token))


async def test_other_replicas_refuse_a_deleted_accounts_session_within_the_cache_lifetime(
    app: App, admin: grpc.aio.Channel, anonymous: grpc.aio.Channel
) -> None:
    """Another replica's cache is not told of the delete; it reads the ended session again once its
    entry is `live_for` old."""
    account, _, session = await _customer_session(app, admin, anonymous, "replica@customer.test")
    session_id = app.components.verifier.verify(session.access_token).session_id
    assert session_id
    monotonic = FakeMonotonic()
    elsewhere = SessionCache(
        app.components.identity.new_reader, app.components.clock, live_for=5, monotonic=monotonic
    )
    assert await elsewhere.is_live(session_id)
    await account_pb2_grpc.AccountServiceStub(admin).DeleteAccount(
        account_pb2.DeleteAccountRequest(id=account.id)
    )
    assert await elsewhere.is_live(session_id)  # its entry is younger than live_for
    monotonic.advance(5.01)
    assert not await elsewhere.is_live(session_id)


async def test_a_session_that_outlived_its_accounts_deletion_cannot_be_refreshed(
    app: App, admin: grpc.aio.Channel, anonymous: grpc.aio.Channel
) -> None:
    """A session left live by a delete made before deletes ended sessions (or racing one)."""
    account, _, session = await _customer_session(app, admin, anonymous, "legacy@customer.test")
    auth = auth_pb2_grpc.AuthServiceStub(anonymous)
    async with app.engine.begin() as connection:
        await connection.execute(
            sqlalchemy.update(AccountRow)
            .where(AccountRow.id == account.id)
            .values(delete_time=datetime.now(UTC))
        )
    error = await failing(
        auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=session.refresh_token))
    )
    assert (error.code(), reason(error)) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")
