"""The billing catalog over REST: meters and plans through the gateway, on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from app.server import App
from tests.integration.test_catalog import mark_in_use
from tests.integration.test_gateway import Gateway, bearer, call, detail
from tests.support import mint


@pytest.fixture
async def http(app: App) -> AsyncIterator[aiohttp.ClientSession]:
    async with Gateway(app) as session:
        yield session


async def test_meters_over_rest(app: App, http: aiohttp.ClientSession) -> None:
    admin = bearer(mint(app))
    body = {
        "code": "api_calls",
        "displayName": "API calls",
        "unitLabel": "call",
        "aggregation": "AGGREGATION_SUM",
    }
    created, _ = await call(http, "POST", "/v1/meters", 200, json=body, headers=admin)
    assert created["id"].startswith("mtr_") and created["aggregation"] == "AGGREGATION_SUM"
    got, _ = await call(http, "GET", f"/v1/meters/{created['id']}", 200, headers=admin)
    assert got == created

    # A client sending the meter back whole changes what it changed: the code is the same.
    patched, _ = await call(
        http,
        "PATCH",
        f"/v1/meters/{created['id']}",
        200,
        json={**created, "displayName": "Requests"},
        headers=admin,
    )
    assert patched["displayName"] == "Requests" and patched["unitLabel"] == "call"
    renamed, _ = await call(
        http, "PATCH", f"/v1/meters/{created['id']}", 400, json={"code": "other"}, headers=admin
    )
    assert detail(renamed, "BadRequest")["fieldViolations"][0]["field"] == "meter.code"

    archived, _ = await call(http, "POST", f"/v1/meters/{created['id']}:archive", 200, headers=admin)
    assert "archiveTime" in archived
    listing, _ = await call(http, "GET", "/v1/meters", 200, headers=admin)
    assert listing.get("meters", []) == []
    listing, _ = await call(http, "GET", "/v1/meters?showArchived=true&pageSize=10", 200, headers=admin)
    assert [m["id"] for m in listing["meters"]] == [created["id"]]

    taken, _ = await call(http, "POST", "/v1/meters", 409, json=body, headers=admin)
    assert detail(taken, "ErrorInfo")["reason"] == "METER_CODE_TAKEN"


async def test_plans_over_rest(app: App, http: aiohttp.ClientSession) -> None:
    admin = bearer(mint(app))
    meter, _ = await call(
        http,
        "POST",
        "/v1/meters",
        200,
        json={"code": "api_calls", "displayName": "API calls", "aggregation": "AGGREGATION_COUNT"},
        headers=admin,
    )
    plan = {
        "code": "pro-monthly",
        "displayName": "Pro",
        "currencyCode": "EUR",
        "billingInterval": {"unit": "UNIT_MONTH"},
        "baseFee": {"currencyCode": "EUR", "amountMinor": "2900"},
        "meteredCharges": [
            {
                "meterId": meter["id"],
                "price": {
                    "graduated": {
                        "tiers": [
                            {"upTo": {"value": "1000"}, "unitPrice": {"value": "0"}},
                            {"unitPrice": {"value": "0.000125000000"}},
                        ]
                    }
                },
            }
        ],
        "features": [{"code": "sso", "enabled": True}],
    }
    headers = {**admin, "Idempotency-Key": "create-pro"}
    created, _ = await call(http, "POST", "/v1/plans", 200, json=plan, headers=headers)
    again, _ = await call(http, "POST", "/v1/plans", 200, json=plan, headers=headers)
    assert again == created
    assert created["version"] == 1
    tiers = created["meteredCharges"][0]["price"]["graduated"]["tiers"]
    assert tiers[1]["unitPrice"] == {"value": "0.000125000000"} and "upTo" not in tiers[1]

    got, _ = await call(http, "GET", f"/v1/plans/{created['id']}", 200, headers=admin)
    assert got == created

    # PATCH without a mask: the fields in the body. Sending the plan back whole is fine.
    patched, _ = await call(
        http, "PATCH", f"/v1/plans/{created['id']}", 200, json={**created, "trialDays": 14}, headers=admin
    )
    assert patched["trialDays"] == 14 and patched["version"] == 1

    await mark_in_use(app, created["id"], 1)
    repriced, _ = await call(
        http,
        "PATCH",
        f"/v1/plans/{created['id']}",
        200,
        json={"baseFee": {"currencyCode": "EUR", "amountMinor": "3900"}, "etag": patched["etag"]},
        headers=admin,
    )
    assert repriced["version"] == 2 and repriced["trialDays"] == 14
    first, _ = await call(http, "GET", f"/v1/plans/{created['id']}?version=1", 200, headers=admin)
    assert first["baseFee"]["amountMinor"] == "2900"
    stale, _ = await call(
        http,
        "PATCH",
        f"/v1/plans/{created['id']}",
        409,
        json={"description": "x", "etag": patched["etag"]},
        headers=admin,
    )
    assert detail(stale, "ErrorInfo")["reason"] == "ETAG_MISMATCH"

    bad = {**plan, "code": "other", "baseFee": {"currencyCode": "USD", "amountMinor": "1"}}
    refused, _ = await call(http, "POST", "/v1/plans", 400, json=bad, headers=admin)
    assert [v["field"] for v in detail(refused, "BadRequest")["fieldViolations"]] == [
        "plan.base_fee.currency_code"
    ]

    archived, _ = await call(http, "POST", f"/v1/plans/{created['id']}:archive", 200, json={}, headers=admin)
    assert "archiveTime" in archived and archived["version"] == 2
    listing, _ = await call(http, "GET", "/v1/plans?showArchived=true", 200, headers=admin)
    assert [(p["id"], p["version"]) for p in listing["plans"]] == [(created["id"], 2)]
    listing, _ = await call(http, "GET", "/v1/plans", 200, headers=admin)
    assert listing.get("plans", []) == []

    events, _ = await call(http, "GET", f"/v1/auditEvents?resourceId={created['id']}", 200, headers=admin)
    assert [e["action"] for e in events["auditEvents"]] == ["archive", "update", "update", "create"]
