"""End to end: `tally serve --workers 2`, a supervisor and two worker processes sharing the ports.

Both workers answer calls (each connection goes to one of them; /metrics tells which process
answered in its X-Tally-Pid header, and counts that process's calls), REST ones through their
own gRPC server; SIGTERM drains them all and the supervisor exits 0; a worker killed with
SIGKILL is replaced and serving goes on; a port in use is refused, with one worker or several,
even when its holder set SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.harness import (
    RunningServer,
    admin_token,
    launched_server,
    parse_log_line,
    run_tally,
    server_env,
    stop_gracefully,
    tally_command,
)
from tests.support import eventually

pytestmark = pytest.mark.e2e

EXIT_SECONDS = 40.0
HEALTH_CHECK = re.compile(
    r'^tally_rpc_requests_total\{code="OK",method="grpc.health.v1.Health/Check"\} (\S+)$', re.MULTILINE
)


@contextmanager
def workers(tmp_path: Path, count: int = 2) -> Iterator[tuple[RunningServer, list[int]]]:
    """`tally serve --workers COUNT` on the embedded database, started; and its worker pids."""
    command = [*tally_command(), "serve", "--workers", str(count)]
    with launched_server(server_env(tmp_path), tmp_path, command) as server:
        server.wait_for_marker(deadline_seconds=60)
        line = next(e for e in map(parse_log_line, server.lines) if e and "workers" in e)
        pids = line["workers"]
        assert isinstance(pids, list)
        assert len(set(pids)) == count, line
        yield server, pids


def scrape(server: RunningServer) -> tuple[int, float]:
    """(pid of the process that answered, the health checks it answered) from one GET /metrics on a
    new connection."""
    with urllib.request.urlopen(f"http://{server.http_addr}/metrics", timeout=10) as response:
        body = response.read().decode()
        pid = int(response.headers["X-Tally-Pid"])
    match = HEALTH_CHECK.search(body)
    return pid, float(match.group(1)) if match else 0.0


def health_check(server: RunningServer) -> int:
    """One Health/Check on a channel (so a connection) of its own."""
    with grpc.insecure_channel(server.addr) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return int(reply.status)


async def answers_by_pid(server: RunningServer, pids: list[int]) -> dict[int, float]:
    """Each worker's count of health checks, scraping until every pid in `pids` has answered."""
    seen: dict[int, float] = {}

    async def every_worker_answered() -> bool:
        pid, checks = await asyncio.to_thread(scrape, server)
        seen[pid] = checks
        return set(pids) <= set(seen)

    await eventually(every_worker_answered, within=30, what=f"/metrics answered by each of {pids}")
    return seen


async def test_both_workers_serve_and_sigterm_drains_them_all(tmp_path: Path) -> None:
    with workers(tmp_path) as (server, pids):
        calls = 40
        for _ in range(calls):
            assert await asyncio.to_thread(health_check, server) == health_pb2.HealthCheckResponse.SERVING
        answered = await answers_by_pid(server, pids)
        assert set(answered) == set(pids), answered
        # The kernel spreads 40 connections over both listening sockets (all on one: odds of 2^-39).
        assert all(answered[pid] > 0 for pid in pids), answered
        assert sum(answered.values()) == calls, answered

        code = stop_gracefully(server, signal.SIGTERM, EXIT_SECONDS)
        messages = server.log_messages()
        assert code == 0, server.stderr
        assert messages.count("stopped") == 2, messages
        for index, pid in enumerate(pids):
            assert f"worker {index} (pid {pid}) exited with code 0" in messages, messages
        assert "stopped: all 2 workers drained" in messages


async def test_a_killed_worker_is_restarted_and_serving_goes_on(tmp_path: Path) -> None:
    with workers(tmp_path) as (server, pids):
        victim, survivor = pids
        os.kill(victim, signal.SIGKILL)
        replacement: list[int] = []

        async def restarted() -> bool:
            for entry in map(parse_log_line, list(server.lines)):
                if entry and entry.get("msg", "").startswith("worker 0 started") and entry["pid"] != victim:
                    replacement.append(int(entry["pid"]))
                    return True
            return False

        await eventually(restarted, within=30, what="the supervisor to start a new worker 0")
        assert any(
            f"worker 0 (pid {victim}) exited unexpectedly with code -9" in m for m in server.log_messages()
        )
        new = replacement[0]
        # Serving resumes on both: the replacement and the survivor answer /metrics (and so accept).
        answered = await answers_by_pid(server, [new, survivor])
        assert victim not in answered or answered[victim] == 0
        assert await asyncio.to_thread(health_check, server) == health_pb2.HealthCheckResponse.SERVING
        assert server.proc.poll() is None, "the supervisor must survive a worker's death"
        assert stop_gracefully(server, signal.SIGTERM, EXIT_SECONDS) == 0, server.stderr


@pytest.mark.parametrize("count", ["1", "2"])
def test_a_port_in_use_is_refused_even_if_its_holder_shares_it(tmp_path: Path, count: str) -> None:
    """SO_REUSEPORT on the holder would let a sharing bind through: the check binds without it."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        result = run_tally(
            "serve", server_env(tmp_path, TALLY_GRPC_ADDR=address), tmp_path, args=("--workers", count)
        )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on {address} (TALLY_GRPC_ADDR)" in result.stderr
    assert "address already in use" in result.stderr
    assert not (tmp_path / "tally.db").exists(), "the database was migrated before the bind failed"


def rest_and_grpc_counts(server: RunningServer) -> tuple[int, float, float]:
    """(pid, REST GETs of an account answered 404, GetAccount calls answered NOT_FOUND) of the worker
    that answers this GET /metrics."""
    with urllib.request.urlopen(f"http://{server.http_addr}/metrics", timeout=10) as response:
        body = response.read().decode()
        pid = int(response.headers["X-Tally-Pid"])

    def total(prefix: str, *parts: str) -> float:
        return sum(
            float(line.rpartition(" ")[2])
            for line in body.splitlines()
            if line.startswith(prefix) and all(part in line for part in parts)
        )

    rest = total("tally_http_requests_total{", 'route="/v1/accounts/{id}"', 'status="404"')
    grpc_calls = total("tally_rpc_requests_total{", "AccountService/GetAccount", 'code="NOT_FOUND"')
    return pid, rest, grpc_calls


def rest_get_missing_account(server: RunningServer) -> int:
    request = urllib.request.Request(
        f"http://{server.http_addr}/v1/accounts/acct_missing",
        headers={"Authorization": f"Bearer {admin_token()}"},
    )
    try:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310 (http://127.0.0.1 only)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


async def test_each_worker_answers_its_rest_calls_through_its_own_grpc_server(tmp_path: Path) -> None:
    """The gateway of a worker calls its own gRPC server (a private loopback port), not the shared
    port, where its one connection could land on the other worker."""
    with workers(tmp_path) as (server, pids):
        for _ in range(30):
            assert await asyncio.to_thread(rest_get_missing_account, server) == 404
        counts: dict[int, tuple[float, float]] = {}

        async def every_worker_answered() -> bool:
            pid, rest, grpc_calls = await asyncio.to_thread(rest_and_grpc_counts, server)
            counts[pid] = (rest, grpc_calls)
            return set(pids) <= set(counts)

        await eventually(every_worker_answered, within=30, what=f"/metrics answered by each of {pids}")
        assert sum(rest for rest, _ in counts.values()) == 30, counts
        for pid, (rest, grpc_calls) in counts.items():
            assert rest == grpc_calls, f"worker {pid}: {rest} REST GETs but {grpc_calls} GetAccount calls"
