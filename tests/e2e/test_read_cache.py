"""Two `tally serve` processes sharing one PostgreSQL and one Redis: a write on one replica is seen by
the next read on the other, although that replica had the old row cached (core/cache.py)."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from core.cache import PREFIX
from tests.e2e.harness import ACCOUNTS, call, run_tally, running_server, server_env
from tests.support import REDIS_URL, empty_postgres_database, unavailable

pytestmark = pytest.mark.postgres


@pytest.fixture
async def migrated_postgres(tmp_path: Path) -> AsyncIterator[str]:
    async with empty_postgres_database("tally_e2e_cache") as url:
        migrated = run_tally("migrate", server_env(tmp_path, TALLY_DATABASE_URL=url), cwd=tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        yield url


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


def cache_hits(http_addr: str) -> float:
    with urllib.request.urlopen(f"http://{http_addr}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = 'tally_cache_reads_total{kind="accounts",result="hit"}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted))


def test_a_write_on_one_replica_is_read_on_the_other(
    tmp_path: Path, migrated_postgres: str, redis_db: str
) -> None:
    envs = [
        server_env(tmp_path / name, TALLY_DATABASE_URL=migrated_postgres, TALLY_REDIS_URL=redis_db)
        for name in "ab"
    ]
    for env in envs:
        Path(env["TALLY_DATA_DIR"]).mkdir()
    client = redis.Redis.from_url(redis_db)
    account_id = ""
    try:
        with (
            running_server(envs[0], tmp_path / "a") as first,
            running_server(envs[1], tmp_path / "b") as second,
        ):
            created = call(
                first.addr,
                f"{ACCOUNTS}/CreateAccount",
                {
                    "account": {
                        "displayName": "Before",
                        "email": "replicas@example.test",
                        "currencyCode": "EUR",
                    }
                },
            )
            account_id = created["id"]
            get = {"id": account_id}
            for _ in range(2):  # cached by the second replica: a miss, then a hit
                assert call(second.addr, f"{ACCOUNTS}/GetAccount", get)["display_name"] == "Before"
            call(
                first.addr,
                f"{ACCOUNTS}/UpdateAccount",
                {
                    "account": {"id": account_id, "displayName": "After"},
                    "update_mask": {"paths": ["display_name"]},
                },
            )
            # The first replica's commit invalidated the shared entry: the second reads the write.
            assert call(second.addr, f"{ACCOUNTS}/GetAccount", get)["display_name"] == "After"
            assert call(first.addr, f"{ACCOUNTS}/GetAccount", get)["display_name"] == "After"
            assert call(second.addr, f"{ACCOUNTS}/GetAccount", get)["display_name"] == "After"
    finally:
        for key in client.scan_iter(match=f"{PREFIX}*{account_id}*" if account_id else f"{PREFIX}none"):
            client.delete(key)
        client.close()
