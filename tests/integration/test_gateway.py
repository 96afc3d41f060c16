"""The REST gateway over real HTTP, before the real gRPC server and interceptor chain, on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from yarl import URL

from app.http import HttpServer
from app.modules import SERVICES
from app.server import App, build
from core.principal import Role
from core.settings import RateLimit, Settings
from gateway.app import gateway_routes
from tests.support import cheap_passwords, mint

ORIGIN = "https://portal.example"
MAX_BODY = 64 * 1024
PASSWORD = "correct horse battery staple"


class Gateway:
    """An HttpServer serving the gateway, with a channel to `app`'s gRPC port."""

    def __init__(self, app: App) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        routes = gateway_routes(SERVICES, self.channel, cors_origins=[ORIGIN], max_body_bytes=MAX_BODY)
        self.server = HttpServer("127.0.0.1:0", metrics=app.metrics, jwks=lambda: {}, routes=routes)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> aiohttp.ClientSession:
        await self.server.start()
        self.session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{self.server.port}")
        return self.session

    async def __aexit__(self, *_: object) -> None:
        if self.session is not None:
            await self.session.close()
        await self.server.stop()
        await self.channel.close()


@pytest.fixture
async def http(app: App) -> AsyncIterator[aiohttp.ClientSession]:
    async with Gateway(app) as session:
        yield session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    http: aiohttp.ClientSession, method: str, path: str | URL, expect: int, **kwargs: Any
) -> tuple[Any, aiohttp.ClientResponse]:
    async with http.request(method, path, **kwargs) as response:
        text = await response.text()
        assert response.status == expect, (method, path, response.status, text)
        assert response.headers.get("X-Request-Id")
        data = await response.json(content_type=None) if text else None
        return data, response


def detail(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for item in body["details"]:
        if item["@type"] == f"type.googleapis.com/google.rpc.{kind}":
            return item
    raise AssertionError(f"no {kind} in {body}")


async def test_every_account_and_auth_method(app: App, http: aiohttp.ClientSession) -> None:
    admin = bearer(mint(app))
    account_json = {"displayName": "Acme", "email": "billing@acme.test", "currencyCode": "USD"}
    created, _ = await call(http, "POST", "/v1/accounts", 200, json=account_json, headers=admin)
    assert created["id"].startswith("acct_") and created["status"] == "STATUS_ACTIVE"
    account_id = created["id"]

    got, _ = await call(http, "GET", f"/v1/accounts/{account_id}", 200, headers=admin)
    assert got == created
    listing, _ = await call(
        http, "GET", "/v1/accounts?pageSize=10&filter=status%20%3D%20ACTIVE", 200, headers=admin
    )
    assert [a["id"] for a in listing["accounts"]] == [account_id]

    patched, _ = await call(
        http, "PATCH", f"/v1/accounts/{account_id}", 200, json={"phone": "+14155550123"}, headers=admin
    )
    assert patched["phone"] == "+14155550123" and patched["displayName"] == "Acme"
    deleted, _ = await call(http, "DELETE", f"/v1/accounts/{account_id}", 200, headers=admin)
    assert "deleteTime" in deleted
    await call(http, "GET", f"/v1/accounts/{account_id}", 404, headers=admin)
    shown, _ = await call(http, "GET", f"/v1/accounts/{account_id}?show_deleted=true", 200, headers=admin)
    assert shown["id"] == account_id
    restored, _ = await call(http, "POST", f"/v1/accounts/{account_id}:undelete", 200, headers=admin)
    assert "deleteTime" not in restored

    user = {"email": "owner@acme.test", "role": "ROLE_CUSTOMER", "accountId": account_id}
    created_user, _ = await call(
        http, "POST", "/v1/users", 200, json={"user": user, "password": PASSWORD}, headers=admin
    )
    got_user, _ = await call(http, "GET", f"/v1/users/{created_user['id']}", 200, headers=admin)
    assert got_user["role"] == "ROLE_CUSTOMER"

    login = {"email": "owner@acme.test", "password": PASSWORD}
    tokens, _ = await call(http, "POST", "/v1/auth:login", 200, json=login)
    assert tokens["tokenType"] == "Bearer" and int(tokens["expiresIn"]) > 0
    refreshed, _ = await call(
        http, "POST", "/v1/auth:refresh", 200, json={"refreshToken": tokens["refreshToken"]}
    )
    own, _ = await call(
        http, "GET", f"/v1/accounts/{account_id}", 200, headers=bearer(refreshed["accessToken"])
    )
    assert own["id"] == account_id
    assert await call(http, "POST", "/v1/auth:logout", 200, json={"refresh_token": refreshed["refreshToken"]})

    service, _ = await call(
        http,
        "POST",
        "/v1/serviceAccounts",
        200,
        json={"displayName": "ingester", "scopes": ["accounts:read"]},
        headers=admin,
    )
    client_id = service["serviceAccount"]["id"]
    issued, _ = await call(
        http,
        "POST",
        "/v1/auth:token",
        200,
        json={"clientId": client_id, "clientSecret": service["clientSecret"]},
    )
    assert issued["scope"] == "accounts:read"
    listed, _ = await call(http, "GET", "/v1/serviceAccounts", 200, headers=admin)
    assert [s["id"] for s in listed["serviceAccounts"]] == [client_id]
    disabled, _ = await call(http, "DELETE", f"/v1/serviceAccounts/{client_id}", 200, headers=admin)
    assert "deleteTime" in disabled

    events, _ = await call(http, "GET", f"/v1/auditEvents?resourceId={account_id}", 200, headers=admin)
    assert [e["action"] for e in events["auditEvents"]] == ["undelete", "delete", "update", "create"]


async def test_errors_carry_status_details_and_http_codes(app: App, http: aiohttp.ClientSession) -> None:
    admin = bearer(mint(app))
    invalid, _ = await call(
        http,
        "POST",
        "/v1/accounts",
        400,
        json={"displayName": "", "email": "x", "currencyCode": "USD"},
        headers=admin,
    )
    assert invalid["code"] == 3
    assert detail(invalid, "ErrorInfo")["domain"] == "tally"
    assert {v["field"] for v in detail(invalid, "BadRequest")["fieldViolations"]} >= {"account.display_name"}

    missing, _ = await call(http, "GET", "/v1/accounts/acct_doesnotexist", 404, headers=admin)
    assert missing["code"] == 5

    anonymous, response = await call(http, "GET", "/v1/accounts", 401)
    assert anonymous["code"] == 16
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    _, response = await call(http, "GET", "/v1/accounts", 401, headers=bearer("garbage"))
    assert response.headers["WWW-Authenticate"].startswith("Bearer")

    customer = bearer(mint(app, Role.CUSTOMER, account_id="acct_x"))
    forbidden, _ = await call(http, "DELETE", "/v1/accounts/acct_x", 403, headers=customer)
    assert forbidden["code"] == 7 and detail(forbidden, "ErrorInfo")["reason"]


async def test_gateway_made_errors(app: App, http: aiohttp.ClientSession) -> None:
    admin = bearer(mint(app))
    unknown, _ = await call(http, "GET", "/v1/accounts?colour=red", 400, headers=admin)
    assert detail(unknown, "BadRequest")["fieldViolations"][0]["field"] == "colour"
    body, _ = await call(http, "POST", "/v1/accounts", 400, json={"account": {}}, headers=admin)
    assert "account" in body["message"]  # unknown field "account" inside the account
    body, _ = await call(http, "POST", "/v1/accounts", 400, data=b"{not json", headers=admin)
    assert detail(body, "BadRequest")["fieldViolations"][0]["field"] == "body"

    not_allowed, response = await call(http, "PUT", "/v1/accounts", 405, headers=admin)
    assert response.headers["Allow"] == "GET, POST" and not_allowed["code"] == 12
    no_route, _ = await call(http, "GET", "/v1/nothing/here", 404, headers=admin)
    assert detail(no_route, "ErrorInfo")["reason"] == "ROUTE_NOT_FOUND"
    bad_escape, _ = await call(http, "GET", URL("/v1/accounts/%zz", encoded=True), 400, headers=admin)
    assert detail(bad_escape, "BadRequest")["fieldViolations"][0]["field"] == "path"

    too_big = {"displayName": "x" * MAX_BODY, "email": "big@x.test", "currencyCode": "USD"}
    large, _ = await call(http, "POST", "/v1/accounts", 413, json=too_big, headers=admin)
    assert detail(large, "ErrorInfo")["reason"] == "BODY_TOO_LARGE"


async def test_idempotency_key_replays_and_refuses_a_different_body(
    app: App, http: aiohttp.ClientSession
) -> None:
    headers = {**bearer(mint(app)), "Idempotency-Key": "create-acme-1"}
    account = {"displayName": "Acme", "email": "idem@acme.test", "currencyCode": "USD"}
    first, _ = await call(http, "POST", "/v1/accounts", 200, json=account, headers=headers)
    again, _ = await call(http, "POST", "/v1/accounts", 200, json=account, headers=headers)
    assert again["id"] == first["id"]
    changed, _ = await call(
        http, "POST", "/v1/accounts", 409, json={**account, "phone": "+14155550123"}, headers=headers
    )
    assert changed["code"] == 9  # FAILED_PRECONDITION: a conflict with the state, 409 over HTTP


async def test_patch_without_mask_changes_only_the_fields_sent(app: App, http: aiohttp.ClientSession) -> None:
    admin = bearer(mint(app))
    account = {
        "displayName": "Acme",
        "email": "patch@acme.test",
        "currencyCode": "USD",
        "phone": "+14155550123",
    }
    created, _ = await call(http, "POST", "/v1/accounts", 200, json=account, headers=admin)
    # An empty phone clears it: the mask names it although its value is the default.
    patched, _ = await call(
        http,
        "PATCH",
        f"/v1/accounts/{created['id']}",
        200,
        json={"displayName": "Acme Two", "phone": "", "etag": created["etag"], "id": created["id"]},
        headers=admin,
    )
    assert patched["displayName"] == "Acme Two" and "phone" not in patched
    assert patched["email"] == "patch@acme.test" and patched["currencyCode"] == "USD"
    # An explicit update_mask wins over the body's keys.
    masked, _ = await call(
        http,
        "PATCH",
        f"/v1/accounts/{created['id']}?updateMask=display_name",
        200,
        json={"displayName": "Acme Three", "email": "other@acme.test"},
        headers=admin,
    )
    assert masked["displayName"] == "Acme Three" and masked["email"] == "patch@acme.test"
    conflict, _ = await call(
        http, "PATCH", f"/v1/accounts/{created['id']}", 400, json={"id": "acct_other"}, headers=admin
    )
    assert detail(conflict, "BadRequest")["fieldViolations"][0]["field"] == "account.id"


async def test_headers_and_cors(app: App, http: aiohttp.ClientSession) -> None:
    _, response = await call(
        http,
        "OPTIONS",
        "/v1/accounts/acct_x",
        204,
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "PATCH"},
    )
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert set(response.headers["Access-Control-Allow-Methods"].split(", ")) == {
        "GET",
        "PATCH",
        "DELETE",
        "OPTIONS",
    }
    assert "Idempotency-Key" in response.headers["Access-Control-Allow-Headers"]
    await call(
        http,
        "OPTIONS",
        "/v1/accounts",
        403,
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    _, response = await call(
        http,
        "GET",
        "/v1/accounts",
        200,
        headers={**bearer(mint(app)), "Origin": ORIGIN, "X-Request-Id": "req-42"},
    )
    assert response.headers["X-Request-Id"] == "req-42"
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-Id" in response.headers["Access-Control-Expose-Headers"]
    _, response = await call(http, "GET", "/v1/accounts", 200, headers=bearer(mint(app)))
    assert "Access-Control-Allow-Origin" not in response.headers
    await call(http, "GET", "/v1/accounts", 400, headers={**bearer(mint(app)), "Grpc-Timeout": "soon"})
    await call(http, "GET", "/v1/accounts", 200, headers={**bearer(mint(app)), "Grpc-Timeout": "5S"})


async def test_rate_limited_answers_429_with_retry_after(settings: Settings) -> None:
    limited = settings.model_copy(update={"rate_limits": {"default": RateLimit(rate=0.01, burst=2)}})
    app = await build(limited, passwords=cheap_passwords())
    await app.start()
    try:
        async with Gateway(app) as http:
            admin = bearer(mint(app))
            for _ in range(2):
                await call(http, "GET", "/v1/accounts", 200, headers=admin)
            body, response = await call(http, "GET", "/v1/accounts", 429, headers=admin)
            assert body["code"] == 8
            assert int(response.headers["Retry-After"]) >= 1
            detail(body, "RetryInfo")
    finally:
        await app.stop(grace=0)


async def test_tally_serve_answers_rest_with_proto_names_when_asked(settings: Settings) -> None:
    """tally serve serves the gateway on TALLY_HTTP_ADDR; TALLY_GATEWAY_PROTO_NAMES picks the names."""
    from app.server import build
    from tests.support import cheap_passwords, mint

    application = await build(
        settings.model_copy(update={"gateway_proto_names": True}), passwords=cheap_passwords()
    )
    await application.start()
    try:
        headers = {"Authorization": f"Bearer {mint(application)}"}
        base = f"http://127.0.0.1:{application.http_port}"
        async with aiohttp.ClientSession() as session:
            body = {"displayName": "Names Ltd", "email": "names@example.test", "currencyCode": "USD"}
            async with session.post(f"{base}/v1/accounts", json=body, headers=headers) as response:
                assert response.status == 200
                created = await response.json()
    finally:
        await application.stop(grace=0)
    assert created["display_name"] == "Names Ltd"
    assert "displayName" not in created
