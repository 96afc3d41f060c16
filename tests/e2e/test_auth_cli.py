"""End to end: bootstrap an admin with the CLI, log in, mint tokens, and share rate limits over Redis."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis

from tests.e2e.harness import (
    ACCOUNTS,
    GRPCURL_STATUS_EXIT_BASE,
    call,
    call_error,
    grpcurl,
    run_tally,
    running_server,
    server_env,
)
from tests.support import REDIS_URL, unavailable

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough password"


def dev_key_env(data_dir: Path) -> dict[str, str]:
    """The e2e environment without the HS256 secret: the server generates a development key."""
    env = server_env(data_dir)
    env.pop("TALLY_JWT_HS256_SECRET")
    return env


def http_get(base: str, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://{base}{path}", timeout=10) as response:
        return response.status, response.read().decode()


def test_bootstrap_admin_login_tokens_jwks_and_metrics(tmp_path: Path) -> None:
    env = dev_key_env(tmp_path)
    created = run_tally(
        "user",
        env,
        tmp_path,
        args=("create", "--email", "Root@Example.com", "--role", "admin", "--password-stdin"),
        input_text=PASSWORD + "\n",
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().startswith("usr_")
    assert PASSWORD not in created.stderr + created.stdout

    refused = run_tally("token", env, tmp_path, args=("--role", "customer"))
    assert refused.returncode == 2
    assert "--account" in refused.stderr

    with running_server(env, tmp_path) as server:
        addr = server.addr
        # No token: UNAUTHENTICATED, and health and reflection stay open.
        anonymous = grpcurl(addr, f"{ACCOUNTS}/ListAccounts", data={}, token=None)
        assert anonymous.returncode == GRPCURL_STATUS_EXIT_BASE + 16, anonymous.stderr
        assert grpcurl(addr, "list", token=None).returncode == 0

        login = grpcurl(
            addr,
            "tally.account.v1.AuthService/Login",
            data={"email": "root@example.com", "password": PASSWORD},
            token=None,
        )
        assert login.returncode == 0, login.stderr
        tokens = json.loads(login.stdout)
        assert tokens["token_type"] == "Bearer"
        account = json.loads(
            grpcurl(
                addr,
                f"{ACCOUNTS}/CreateAccount",
                data={"account": {"display_name": "Acme", "email": "ops@acme.test", "currency_code": "USD"}},
                token=tokens["access_token"],
            ).stdout
        )
        assert account["id"].startswith("acct_")

        minted = run_tally("token", env, tmp_path, args=("--role", "customer", "--account", account["id"]))
        assert minted.returncode == 0, minted.stderr
        customer = minted.stdout.strip()
        own = grpcurl(addr, f"{ACCOUNTS}/GetAccount", data={"id": account["id"]}, token=customer)
        assert own.returncode == 0, own.stderr
        other = grpcurl(addr, f"{ACCOUNTS}/GetAccount", data={"id": "acct_someoneelse"}, token=customer)
        assert other.returncode == GRPCURL_STATUS_EXIT_BASE + 5

        status, body = http_get(server.http_addr, "/.well-known/jwks.json")
        keys = json.loads(body)["keys"]
        assert status == 200
        assert [k["alg"] for k in keys] == ["ES256"]
        status, metrics = http_get(server.http_addr, "/metrics")
        assert status == 200
        assert 'method="tally.account.v1.AccountService/CreateAccount"' in metrics
        assert "tally_auth_failures_total" in metrics


@pytest.fixture
def redis_db() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis is not reachable at {REDIS_URL}: {exc}; set TALLY_TEST_REDIS_URL")
    finally:
        client.close()
    return REDIS_URL


def test_two_servers_share_one_redis_bucket(tmp_path: Path, redis_db: str) -> None:
    limits = json.dumps({"default": {"rate": 0.001, "burst": 4}})
    run = uuid.uuid4().hex[:8]  # buckets of this run's own on the shared Redis, removed afterwards
    envs = [server_env(tmp_path / name, TALLY_REDIS_URL=redis_db, TALLY_RATE_LIMITS=limits) for name in "ab"]
    for env in envs:
        Path(env["TALLY_DATA_DIR"]).mkdir()
    first_token, other_token = (
        run_tally(
            "token", envs[0], tmp_path, args=("--role", "admin", "--subject", f"e2e-{run}-{n}")
        ).stdout.strip()
        for n in (1, 2)
    )
    client = redis.Redis.from_url(redis_db)
    try:
        with (
            running_server(envs[0], tmp_path / "a") as first,
            running_server(envs[1], tmp_path / "b") as second,
        ):
            for addr in (first.addr, second.addr, first.addr, second.addr):
                result = grpcurl(addr, f"{ACCOUNTS}/ListAccounts", data={}, token=first_token)
                assert result.returncode == 0, result.stderr
            error = call_error(second.addr, f"{ACCOUNTS}/ListAccounts", {}, token=first_token)
            assert error.code == "ResourceExhausted"
            assert error.detail("google.rpc.RetryInfo")["retry_delay"]
            # Another principal has a bucket of its own.
            other = grpcurl(first.addr, f"{ACCOUNTS}/ListAccounts", data={}, token=other_token)
            assert other.returncode == 0, other.stderr
    finally:
        for key in client.scan_iter(f"tally:rl:*:cli:e2e-{run}-*"):
            client.delete(key)
        client.close()


def test_production_refuses_to_start_without_keys(tmp_path: Path) -> None:
    env = dev_key_env(tmp_path)
    env["TALLY_ENVIRONMENT"] = "production"
    result = run_tally("serve", env, tmp_path, timeout=30)
    assert result.returncode == 2, result.stderr  # a misconfiguration, like every bad setting
    naming = [line for line in result.stderr.splitlines() if "TALLY_JWT_KEYS_DIR" in line]
    assert len(naming) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "keys").exists()


def test_token_refuses_unknown_scopes_and_accounts(tmp_path: Path) -> None:
    env = server_env(tmp_path)
    unknown = run_tally(
        "token",
        env,
        tmp_path,
        args=("--role", "service", "--scope", "accounts:read", "--scope", "billing:teleport"),
    )
    assert unknown.returncode == 2, unknown.stderr
    assert "'billing:teleport'" in unknown.stderr
    assert "accounts:read" in unknown.stderr.partition("known scopes:")[2]  # and says what there is
    assert unknown.stdout == ""
    known = run_tally("token", env, tmp_path, args=("--role", "service", "--scope", "audit:read"))
    assert known.returncode == 0, known.stderr

    with running_server(env, tmp_path) as server:
        account = call(
            server.addr,
            f"{ACCOUNTS}/CreateAccount",
            {"account": {"display_name": "Gone", "email": "gone@example.com", "currency_code": "EUR"}},
        )
        live = run_tally("token", env, tmp_path, args=("--role", "customer", "--account", account["id"]))
        assert live.returncode == 0, live.stderr
        call(server.addr, f"{ACCOUNTS}/DeleteAccount", {"id": account["id"]})
        for missing in (account["id"], "acct_nosuchaccount"):
            refused = run_tally("token", env, tmp_path, args=("--role", "customer", "--account", missing))
            assert refused.returncode == 2, refused.stderr
            assert f"--account {missing!r}" in refused.stderr
            assert "Traceback" not in refused.stderr
            assert refused.stdout == ""
