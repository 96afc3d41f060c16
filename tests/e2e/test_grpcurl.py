"""End to end: `tally serve` as a real process, driven over the network by grpcurl.

One server on the embedded default (SQLite in a temporary data directory)
serves most tests in this module; shutdown, start-up errors and PostgreSQL get
processes of their own. grpcurl prints responses with the proto field names
(`display_name`, not `displayName`), so the assertions use those.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    ACCOUNTS,
    SERVING_MARKER,
    RunningServer,
    admin_token,
    assert_status,
    call,
    call_error,
    grpcurl,
    grpcurl_path,
    launched_server,
    parse_log_line,
    run_tally,
    running_server,
    server_env,
    stop_gracefully,
)
from tests.support import empty_postgres_database

pytestmark = pytest.mark.e2e

CREATE = f"{ACCOUNTS}/CreateAccount"
GET = f"{ACCOUNTS}/GetAccount"
LIST = f"{ACCOUNTS}/ListAccounts"
UPDATE = f"{ACCOUNTS}/UpdateAccount"
DELETE = f"{ACCOUNTS}/DeleteAccount"
UNDELETE = f"{ACCOUNTS}/UndeleteAccount"
HEALTH = "grpc.health.v1.Health/Check"
EVENTS = "tally.billing.v1.EventService"
STRIPE_EVENTS = "tally.billing.v1.GatewayEventService/ReceiveStripeEvent"
STRIPE_SECRET = "whsec_grpcurl"
# grpcurl 1.8.6 reads google.protobuf.FieldMask as a plain message ({"paths": [...]}), not as the
# canonical proto3 JSON string, and passes the paths through unchanged: so they are proto field names.
DISPLAY_NAME_MASK = {"paths": ["display_name"]}


def unique_email(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}@example.com"


def new_account(label: str, **extra: Any) -> dict[str, Any]:
    return {"display_name": f"{label} Ltd", "email": unique_email(label), "currency_code": "EUR", **extra}


def timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One `tally serve` on SQLite for the module (the autouse env cleaner does not reach module scope,
    so server_env() builds the environment without the caller's TALLY_* variables)."""
    grpcurl_path()
    data_dir = tmp_path_factory.mktemp("tally-data")
    env = server_env(data_dir, TALLY_STRIPE_WEBHOOK_SECRET=STRIPE_SECRET)
    with running_server(env, cwd=data_dir) as running:
        yield running


@pytest.fixture
def addr(server: RunningServer) -> str:
    assert server.proc.poll() is None, f"the shared server died:\n{server.stderr}"
    return server.addr


# --- Stripe's webhooks over gRPC: the body as HttpBody, the signature as metadata, no token ------------


def test_a_stripe_event_over_grpcurl_needs_its_signature_and_no_token(addr: str) -> None:
    payload = json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": "charge.refunded",
            "data": {"object": {}},
        }
    ).encode()
    stamp = int(time.time())
    digest = hmac.new(STRIPE_SECRET.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
    body = {"content_type": "application/json", "data": base64.b64encode(payload).decode()}
    signed = (f"stripe-signature: t={stamp},v1={digest}",)
    answers = []
    for _ in range(2):  # Stripe redelivers: the second is a duplicate
        result = grpcurl(addr, STRIPE_EVENTS, data=body, token=None, headers=signed)
        assert result.returncode == 0, result.stderr
        answers.append(json.loads(result.stdout)["outcome"])
    assert answers == ["ignored", "duplicate"]  # a type Tally does not act on, recorded
    forged = grpcurl(
        addr, STRIPE_EVENTS, data=body, token=None, headers=(f"stripe-signature: t={stamp},v1=00",)
    )
    assert forged.returncode != 0 and "InvalidArgument" in forged.stderr, forged.stderr
    assert "WEBHOOK_SIGNATURE_INVALID" in forged.stderr


# --- start-up, reflection, health ----------------------------------------------------------------------


def test_startup_logs_are_json_and_name_the_embedded_database(server: RunningServer) -> None:
    entries = [parse_log_line(line) for line in server.lines]
    assert entries, "no log lines"
    assert all(entry is not None for entry in entries), f"non-JSON log lines:\n{server.stderr}"
    serving = [e for e in entries if e and str(e["msg"]).startswith(SERVING_MARKER)]
    assert len(serving) == 1
    assert "SQLite" in serving[0]["msg"]
    host, _, port = server.addr.rpartition(":")
    assert host == "127.0.0.1"
    assert int(port) > 0


def test_reflection_lists_services(addr: str) -> None:
    result = grpcurl(addr, "list")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {
        ACCOUNTS,
        EVENTS,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    } <= services


def test_reflection_v1_answers_grpcurl(addr: str) -> None:
    """grpcurl 1.8 reflects over v1alpha; here it describes the v1 service and calls it, no token."""
    described = grpcurl(addr, "describe", "grpc.reflection.v1.ServerReflection", token=None)
    assert described.returncode == 0, described.stderr
    assert (
        "rpc ServerReflectionInfo ( stream .grpc.reflection.v1.ServerReflectionRequest )" in described.stdout
    )
    result = grpcurl(
        addr,
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        data={"list_services": ""},
        token=None,
    )
    assert result.returncode == 0, result.stderr
    listed = {service["name"] for service in json.loads(result.stdout)["list_services_response"]["service"]}
    assert {
        ACCOUNTS,
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= listed


def test_reflection_describes_service_and_message(addr: str) -> None:
    service = grpcurl(addr, "describe", ACCOUNTS)
    assert service.returncode == 0, service.stderr
    for rpc in (
        "CreateAccount",
        "GetAccount",
        "ListAccounts",
        "UpdateAccount",
        "DeleteAccount",
        "UndeleteAccount",
    ):
        assert f"rpc {rpc} (" in service.stdout, service.stdout

    message = grpcurl(addr, "describe", "tally.account.v1.Account")
    assert message.returncode == 0, message.stderr
    assert "tally.account.v1.Account is a message" in message.stdout
    for declaration in (
        "string id = 1",
        "string display_name = 2",
        "string email = 3",
        "string currency_code = 6",
        ".tally.account.v1.Account.Status status = 7",
        "map<string, string> metadata = 8",
        ".google.protobuf.Timestamp delete_time = 11",
        "string etag = 12",
    ):
        assert declaration in message.stdout, message.stdout


def test_health_check_serving(addr: str) -> None:
    assert call(addr, HEALTH) == {"status": "SERVING"}
    assert call(addr, HEALTH, {"service": ACCOUNTS}) == {"status": "SERVING"}


def test_events_are_listed_and_watched(addr: str) -> None:
    """EventService by reflection: a meter's event listed, then watched until grpcurl's deadline,
    which the watch ends with OK after its closing heartbeat."""
    described = grpcurl(addr, "describe", EVENTS)
    assert described.returncode == 0, described.stderr
    assert "rpc ListEvents (" in described.stdout
    assert "rpc WatchEvents ( .tally.billing.v1.WatchEventsRequest ) returns ( stream" in described.stdout
    meter = call(
        addr,
        "tally.billing.v1.MeterService/CreateMeter",
        {
            "meter": {
                "code": f"m-{uuid.uuid4().hex[:8]}",
                "display_name": "Calls",
                "aggregation": "AGGREGATION_SUM",
            }
        },
    )
    listed = call(addr, f"{EVENTS}/ListEvents", {"resource_id": meter["id"]})
    assert [(e["type"], e["payload"]["code"]) for e in listed["events"]] == [("meter.created", meter["code"])]
    # grpcurl's own deadline (its flags go before the address, so not through `grpcurl()`).
    watch = [
        str(grpcurl_path()),
        "-plaintext",
        "-max-time",
        "1.5",
        "-H",
        f"authorization: Bearer {admin_token()}",
    ]
    watch += [
        "-d",
        json.dumps({"start": "START_OLDEST", "resource_id": meter["id"]}),
        addr,
        f"{EVENTS}/WatchEvents",
    ]
    watched = subprocess.run(watch, capture_output=True, text=True, timeout=30, check=False)
    assert watched.returncode == 0, watched.stderr
    messages, text, decoder = [], watched.stdout.strip(), json.JSONDecoder()
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].strip()
    assert [m.get("event", {}).get("id") for m in messages] == [None, listed["events"][0]["id"], None]
    assert messages[-1]["cursor"] == messages[1]["cursor"]


# --- the account lifecycle -----------------------------------------------------------------------------


def test_account_lifecycle(addr: str) -> None:
    draft = new_account("lifecycle", phone="+14155550123", metadata={"plan": "pro"})
    created = call(addr, CREATE, {"account": draft})
    account_id = created["id"]
    assert account_id.startswith("acct_")
    assert created["display_name"] == draft["display_name"]
    assert created["email"] == draft["email"]
    assert created["phone"] == "+14155550123"
    assert created["currency_code"] == "EUR"
    assert created["metadata"] == {"plan": "pro"}
    assert created["status"] == "STATUS_ACTIVE"
    assert created["create_time"] == created["update_time"]
    assert "delete_time" not in created
    assert created["etag"]

    assert call(addr, GET, {"id": account_id}) == created

    listed = call(addr, LIST, {"page_size": 1000})
    assert created in listed["accounts"]
    by_email = call(addr, LIST, {"filter": f'email = "{draft["email"].upper()}"'})
    assert by_email["accounts"] == [created]

    # Only the masked field changes: the email sent alongside it is ignored.
    updated = call(
        addr,
        UPDATE,
        {
            "account": {
                "id": account_id,
                "display_name": "Renamed Ltd",
                "email": unique_email("ignored"),
                "etag": created["etag"],
            },
            "update_mask": DISPLAY_NAME_MASK,
        },
    )
    assert updated["id"] == account_id
    assert updated["display_name"] == "Renamed Ltd"
    assert updated["email"] == draft["email"]
    assert updated["metadata"] == {"plan": "pro"}
    assert updated["create_time"] == created["create_time"]
    assert timestamp(updated["update_time"]) > timestamp(created["update_time"])
    assert updated["etag"] != created["etag"]
    assert call(addr, GET, {"id": account_id}) == updated

    deleted = call(addr, DELETE, {"id": account_id, "etag": updated["etag"]})
    assert deleted["id"] == account_id
    assert "delete_time" in deleted
    assert timestamp(deleted["delete_time"]) >= timestamp(updated["update_time"])
    assert_status(call_error(addr, GET, {"id": account_id}), "NotFound", "ACCOUNT_NOT_FOUND")
    assert call(addr, GET, {"id": account_id, "show_deleted": True}) == deleted
    assert by_email_ids(addr, draft["email"]) == []
    assert by_email_ids(addr, draft["email"], show_deleted=True) == [account_id]

    restored = call(addr, UNDELETE, {"id": account_id})
    assert restored["id"] == account_id
    assert "delete_time" not in restored
    assert restored["display_name"] == "Renamed Ltd"
    assert call(addr, GET, {"id": account_id}) == restored
    assert by_email_ids(addr, draft["email"]) == [account_id]

    again = call_error(addr, UNDELETE, {"id": account_id})
    assert_status(again, "FailedPrecondition", "ACCOUNT_NOT_DELETED")


def by_email_ids(addr: str, email: str, *, show_deleted: bool = False) -> list[str]:
    page = call(addr, LIST, {"filter": f'email = "{email}"', "show_deleted": show_deleted})
    return [account["id"] for account in page.get("accounts", [])]


def test_update_with_stale_etag_is_aborted(addr: str) -> None:
    created = call(addr, CREATE, {"account": new_account("etag")})
    call(
        addr,
        UPDATE,
        {"account": {"id": created["id"], "display_name": "First"}, "update_mask": DISPLAY_NAME_MASK},
    )
    stale = call_error(
        addr,
        UPDATE,
        {
            "account": {"id": created["id"], "display_name": "Second", "etag": created["etag"]},
            "update_mask": DISPLAY_NAME_MASK,
        },
    )
    assert_status(stale, "Aborted", "ETAG_MISMATCH")
    assert call(addr, GET, {"id": created["id"]})["display_name"] == "First"


def test_list_pages_cover_every_account_once(addr: str) -> None:
    created = [call(addr, CREATE, {"account": new_account(f"page{i}")})["id"] for i in range(5)]
    everything = [a["id"] for a in call(addr, LIST, {"page_size": 1000})["accounts"]]
    assert set(created) <= set(everything)

    walked: list[str] = []
    token = ""
    for _ in range(len(everything) + 1):
        page = call(addr, LIST, {"page_size": 2, "page_token": token})
        accounts = page.get("accounts", [])
        assert len(accounts) <= 2
        walked += [a["id"] for a in accounts]
        token = page.get("next_page_token", "")
        if not token:
            break
    assert walked == everything


def test_tampered_page_token_is_invalid(addr: str) -> None:
    for i in range(2):
        call(addr, CREATE, {"account": new_account(f"token{i}")})
    token = call(addr, LIST, {"page_size": 1})["next_page_token"]
    middle = len(token) // 2  # a character in the middle carries all six of its bits
    tampered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    error = call_error(addr, LIST, {"page_size": 1, "page_token": tampered})
    assert_status(error, "InvalidArgument", "INVALID_ARGUMENT")
    assert [v["field"] for v in error.detail("google.rpc.BadRequest")["field_violations"]] == ["page_token"]

    other_query = call_error(addr, LIST, {"page_size": 1, "page_token": token, "show_deleted": True})
    assert_status(other_query, "InvalidArgument", "INVALID_ARGUMENT")


# --- errors --------------------------------------------------------------------------------------------


def test_invalid_create_names_every_bad_field(addr: str) -> None:
    error = call_error(
        addr, CREATE, {"account": {"display_name": "Bad", "email": "not-an-email", "currency_code": "XYZ"}}
    )
    assert_status(error, "InvalidArgument", "INVALID_ARGUMENT")
    assert "Code: InvalidArgument" in error.stderr
    violations = error.detail("google.rpc.BadRequest")["field_violations"]
    assert {v["field"] for v in violations} == {"account.email", "account.currency_code"}
    assert all(v["description"] for v in violations)
    assert "account.email" in error.message
    assert "account.currency_code" in error.message


def test_get_unknown_account_is_not_found(addr: str) -> None:
    error = call_error(addr, GET, {"id": "acct_doesnotexist"})
    assert_status(error, "NotFound", "ACCOUNT_NOT_FOUND")
    assert error.detail("google.rpc.ErrorInfo")["metadata"] == {"id": "acct_doesnotexist"}


def test_duplicate_email_already_exists(addr: str) -> None:
    first = new_account("dup")
    first_id = call(addr, CREATE, {"account": first})["id"]
    clash = {**new_account("dup-again"), "email": first["email"].upper()}
    error = call_error(addr, CREATE, {"account": clash})
    assert_status(error, "AlreadyExists", "EMAIL_TAKEN")
    assert error.detail("google.rpc.ErrorInfo")["metadata"] == {"field": "account.email"}
    assert by_email_ids(addr, first["email"]) == [first_id]


def test_request_id_replays_the_first_response(addr: str) -> None:
    request: dict[str, Any] = {"account": new_account("replay"), "request_id": f"req-{uuid.uuid4().hex}"}
    first = call(addr, CREATE, request)
    second = call(addr, CREATE, request)
    assert second == first
    assert by_email_ids(addr, request["account"]["email"]) == [first["id"]]

    changed = {**request, "account": {**request["account"], "display_name": "Something Else"}}
    error = call_error(addr, CREATE, changed)
    assert_status(error, "FailedPrecondition", "REQUEST_ID_REUSED")
    assert by_email_ids(addr, request["account"]["email"]) == [first["id"]]


# --- process behaviour: shutdown and settings errors ---------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown(tmp_path: Path, sig: signal.Signals) -> None:
    grace = 5.0
    env = server_env(tmp_path, TALLY_SHUTDOWN_GRACE_SECONDS=str(grace))
    with running_server(env, cwd=tmp_path) as own:
        assert call(own.addr, HEALTH) == {"status": "SERVING"}
        code = stop_gracefully(own, sig, timeout=grace + 10)
        messages = own.log_messages()
        assert code == 0, own.stderr
        assert any(m.startswith("shutting down") for m in messages), own.stderr
        assert messages[-1] == "stopped", own.stderr
        assert grpcurl(own.addr, "list").returncode != 0, "the port still answers after shutdown"


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        ("serve", "TALLY_GRPC_ADDR", "nonsense"),
        ("serve", "TALLY_DATABASE_URL", "mysql://x/y"),
        ("migrate", "TALLY_DATABASE_URL", "mysql://x/y"),
    ],
)
def test_invalid_setting_exits_2_naming_it(tmp_path: Path, command: str, variable: str, value: str) -> None:
    result = run_tally(command, server_env(tmp_path, **{variable: value}), cwd=tmp_path, timeout=30)
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "tally.db").exists()


@pytest.mark.parametrize("variable", ["TALLY_GRPC_ADDR", "TALLY_HTTP_ADDR"])
def test_busy_port_exits_2_with_one_line_naming_the_setting(tmp_path: Path, variable: str) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = run_tally("serve", server_env(tmp_path, **{variable: f"127.0.0.1:{port}"}), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    naming = [line for line in result.stderr.splitlines() if variable in line]
    assert len(naming) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port} ({variable})" in naming[0]
    assert "Traceback" not in result.stderr
    assert "cannot reach" not in result.stderr
    assert "tally serving gRPC on" not in result.stderr


def test_second_server_on_the_same_port_is_refused(tmp_path: Path) -> None:
    """gRPC sets SO_REUSEPORT by default: without ("grpc.so_reuseport", 0) a second `tally serve` would
    bind the port of a running one and the kernel would split clients between the two."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    with running_server(server_env(first_dir), cwd=tmp_path) as first:
        second_env = server_env(second_dir, TALLY_GRPC_ADDR=first.addr)
        with launched_server(second_env, cwd=tmp_path) as second:
            addr, _ = second.wait_for_start_or_exit()
            assert addr is None, f"a second server is serving on {addr}, the port of the first"
            assert second.wait_exit(timeout=10) == 2
            assert f"cannot listen on {first.addr} (TALLY_GRPC_ADDR)" in second.stderr


# --- PostgreSQL ----------------------------------------------------------------------------------------


@pytest.fixture
async def empty_postgres_url() -> AsyncIterator[str]:
    """A new database with no schema at all, dropped afterwards."""
    async with empty_postgres_database("tally_e2e") as url:
        yield url


@pytest.mark.postgres
def test_postgres_needs_tally_migrate_then_serves(empty_postgres_url: str, tmp_path: Path) -> None:
    env = server_env(tmp_path, TALLY_DATABASE_URL=empty_postgres_url)

    refused = run_tally("serve", env, cwd=tmp_path)
    assert refused.returncode == 1, refused.stderr
    assert "tally migrate" in refused.stderr
    assert "tally serving gRPC on" not in refused.stderr

    migrated = run_tally("migrate", env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert "schema migrated from empty to" in migrated.stderr

    again = run_tally("migrate", env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "schema already at revision" in again.stderr

    with running_server(env, cwd=tmp_path) as own:
        serving = [m for m in own.log_messages() if m.startswith(SERVING_MARKER)]
        assert len(serving) == 1
        assert "(database: PostgreSQL at " in serving[0]
        draft = new_account("pg")
        created = call(own.addr, CREATE, {"account": draft})
        assert created["email"] == draft["email"]
        assert call(own.addr, GET, {"id": created["id"]}) == created
        assert stop_gracefully(own, signal.SIGTERM, timeout=30) == 0, own.stderr


@pytest.mark.postgres
def test_postgres_migrated_database_serves_idempotent_creates(postgres_url: str, tmp_path: Path) -> None:
    env = server_env(tmp_path, TALLY_DATABASE_URL=postgres_url)
    with running_server(env, cwd=tmp_path) as own:
        request: dict[str, Any] = {
            "account": new_account("pg-replay"),
            "request_id": f"req-{uuid.uuid4().hex}",
        }
        first = call(own.addr, CREATE, request)
        assert call(own.addr, CREATE, request) == first
        error = call_error(own.addr, CREATE, {**request, "account": new_account("pg-other")})
        assert_status(error, "FailedPrecondition", "REQUEST_ID_REUSED")
        duplicate = call_error(
            own.addr, CREATE, {"account": {**new_account("x"), "email": request["account"]["email"]}}
        )
        assert_status(duplicate, "AlreadyExists", "EMAIL_TAKEN")
