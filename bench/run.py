"""Tally throughput and latency on loopback, next to a bare grpc.aio echo server (`make bench`).

One run: start the echo server (one on asyncio, one on uvloop) and measure it;
create a throw-away PostgreSQL database, `tally migrate` it, start `tally serve`
twice (TALLY_EVENT_LOOP=asyncio and =uvloop) and measure GetAccount and
CreateAccount; print one table; stop every process and drop the database, also
on failure or Ctrl-C. Every measurement runs --rounds times, the two event
loops alternating in order (A B, B A, ...) so drift on the machine does not
favour one of them. See bench/README.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from types import FrameType

import h2load_runner
import pgdb
import report
import scenarios
from h2load_runner import H2loadError
from processes import BenchError, Server, echo_served_total, migrate_tally, start_echo, start_tally
from scenarios import Bench, Options, Target, progress

LOOPS = ("asyncio", "uvloop")

Step = Callable[[Bench, Target], None]


def run_rounds(bench: Bench, servers: dict[str, Server], steps: list[Step]) -> None:
    """Every step on every loop, --rounds times; the loop order flips each round."""
    rounds = bench.options.rounds
    for number in range(rounds):
        order = LOOPS if number % 2 == 0 else LOOPS[::-1]
        for step in steps:
            for loop in order:
                step(bench, Target(servers[loop], loop, f"round {number + 1}/{rounds}"))


def measure_echo(bench: Bench, stack: ExitStack) -> None:
    servers = {}
    for loop in LOOPS:
        progress(f"starting echo server ({loop})...")
        servers[loop] = start_echo(loop, bench.workdir)
        stack.callback(servers[loop].stop)
    run_rounds(bench, servers, [scenarios.echo_h2load, scenarios.echo_python])
    for loop, server in servers.items():
        server.stop()
        progress(f"echo server ({loop}) stopped; it reported {echo_served_total(server)} calls served in all")


def measure_tally(bench: Bench, stack: ExitStack) -> None:
    progress(f"creating a database on {pgdb.admin_url()}...")
    database = pgdb.create()
    stack.callback(drop_database, database)
    progress(f"database {database.name} created; running tally migrate...")
    data_dir = bench.workdir / "tally-data"
    data_dir.mkdir()
    migrate_tally(database, data_dir)
    servers = {}
    for loop in LOOPS:
        progress(f"starting tally serve (TALLY_EVENT_LOOP={loop})...")
        servers[loop] = start_tally(database, data_dir, loop)
        stack.callback(servers[loop].stop)
        progress(f"tally ({loop}) serving on {servers[loop].address}")
    account_id = scenarios.create_account(servers[LOOPS[0]])
    progress(f"created account {account_id} for GetAccount")
    steps: list[Step] = [
        partial(scenarios.get_h2load, account_id=account_id),
        partial(scenarios.get_python, account_id=account_id),
        partial(scenarios.create_python, database=database),
    ]
    run_rounds(bench, servers, steps)
    for server in servers.values():
        server.stop()


@contextmanager
def ignoring_interrupts() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def drop_database(database: pgdb.BenchDatabase) -> None:
    with ignoring_interrupts():
        pgdb.drop(database)
    progress(f"database {database.name} dropped")


NOTES = """\
req/s: answered calls ÷ timed seconds, all rounds pooled; p50/p99 over every timed call of all rounds.
÷echo: Tally ÷ the echo server on the same event loop, driven by the same generator.
h2load cannot see grpc-status: Tally GetAccount successes are complete reply messages in the response
DATA bytes, and the same request succeeded with a gRPC client before and after every run.
python: closed loop in one process (uvloop), warm-up calls not counted; CreateAccount successes are
new rows in the accounts table."""


def print_report(bench: Bench) -> None:
    rows = report.merge_rounds(bench.results)
    print()
    print(report.table(rows))
    print()
    print(NOTES)
    print()
    for line in report.loop_comparison(rows):
        print(line)
    print(report.loop_verdict(rows))


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--requests", type=int, help="at most this many timed calls per run (default 20000)")
    parser.add_argument("--seconds", type=float, help="and for at most about this long (default 5)")
    parser.add_argument("--concurrency", type=int, help="calls in flight (default 64)")
    parser.add_argument(
        "--connections", type=int, default=4, help="HTTP/2 connections per generator (default 4)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs of each measurement per event loop (default 2)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 300 calls or 1.5 s per run, 16 in flight"
    )
    args = parser.parse_args(argv)
    requests, seconds, concurrency = (300, 1.5, 16) if args.quick else (20_000, 5.0, 64)
    requests = args.requests or requests
    concurrency = args.concurrency or concurrency
    if min(requests, concurrency, args.connections, args.rounds) < 1:
        parser.error("--requests, --concurrency, --connections and --rounds must be at least 1")
    return Options(
        requests=requests,
        seconds=args.seconds or seconds,
        concurrency=concurrency,
        connections=args.connections,
        warmup=min(requests, 4 * concurrency),
        rounds=args.rounds,
    )


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    h2load = h2load_runner.find_h2load()
    if h2load is None:
        print(f"bench: {h2load_runner.H2LOAD_MISSING}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    print(
        f"bench: up to {options.requests} calls or {options.seconds:g} s per run, {options.rounds} rounds, "
        f"{options.concurrency} calls in flight over {options.connections} connections, 127.0.0.1 only",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="tally-bench-") as workdir, ExitStack() as stack:
        bench = Bench(options, Path(workdir), h2load)
        try:
            measure_echo(bench, stack)
            measure_tally(bench, stack)
        except (BenchError, H2loadError) as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; cleaning up", file=sys.stderr)
            return 130
    # Leaving the `with` stopped every server and dropped the database.
    print_report(bench)
    return 0


if __name__ == "__main__":
    sys.exit(main())
