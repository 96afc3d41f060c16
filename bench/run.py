"""Tally throughput and latency on loopback, next to a bare grpc.aio echo server (`make bench`).

One run: start the echo server (one on asyncio, one on uvloop) and measure it;
create a throw-away PostgreSQL database, `tally migrate` it, start `tally serve`
twice (TALLY_EVENT_LOOP=asyncio and =uvloop) and measure GetAccount and
CreateAccount; then, on uvloop, GetAccount through the full interceptor chain
(rate limits in Redis, spans exported) and with no interceptors at all
(bench/chain.py); then GetAccount over REST (the gateway, HTTP/1.1) against
over gRPC on one uvloop server (bench/rest.py); print the tables; stop every
process, drop the database and delete the bench's Redis keys, also on failure or
Ctrl-C; then every core (bench/cores.py): `tally serve --workers 2` against 1 on
the echo-like path, Tally's REST face against the hand-written FastAPI baseline on
1 and 2 workers, and 1,000 GetAccount/s offered open-loop from 500 streams; and
the ratios of issue 11 in one table. `--only NAME` runs one part. Every call carries a
bearer token minted by `tally token`. Every main measurement runs --rounds times,
the two event loops alternating in order (A B, B A, ...) so drift on the machine
does not favour one of them. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from types import FrameType

import chain
import cores
import h2load_runner
import pgdb
import processes
import report
import rest
import scenarios
from chain import ChainReport
from cores import CoresReport
from h2load_runner import H2loadError
from processes import (
    BenchError,
    Server,
    echo_served_total,
    migrate_tally,
    mint_token,
    start_echo,
    start_tally,
    tally_env,
)
from rest import RestReport
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


def mint_bench_token(bench: Bench) -> None:
    """`tally token --role admin --subject bench`, with the settings every tally process gets."""
    bench.data_dir.mkdir(exist_ok=True)
    bench.token = mint_token(tally_env(None, bench.data_dir), "bench")
    progress("minted an admin access token (subject cli:bench) with tally token")


def create_database(stack: ExitStack, data_dir: Path) -> pgdb.BenchDatabase:
    progress(f"creating a database on {pgdb.admin_url()}...")
    database = pgdb.create()
    stack.callback(drop_database, database)
    progress(f"database {database.name} created; running tally migrate...")
    migrate_tally(database, data_dir)
    return database


CORES_PARTS = {"workers", "baseline", "open-loop"}


def database_and_account(bench: Bench, stack: ExitStack) -> tuple[pgdb.BenchDatabase, str]:
    """For `--only`: a database and an account made over gRPC."""
    database = create_database(stack, bench.data_dir)
    progress("starting tally serve (uvloop) to create the account...")
    setup = start_tally(database, bench.data_dir, "uvloop", label="setup")
    stack.callback(setup.stop)
    account_id = scenarios.create_account(setup, bench.token)
    setup.stop()
    progress(f"created account {account_id} for GetAccount")
    return database, account_id


def measure_rest_only(bench: Bench, stack: ExitStack) -> RestReport:
    """`--only rest`: a database, an account made over gRPC, then the REST vs gRPC part alone."""
    database, account_id = database_and_account(bench, stack)
    return rest.measure_rest(bench, stack, database, bench.data_dir, account_id)


def measure_cores_only(bench: Bench, stack: ExitStack) -> CoresReport:
    """`--only workers|baseline|open-loop|cores`: those parts of bench/cores.py alone."""
    database, account_id = database_and_account(bench, stack)
    parts = CORES_PARTS if bench.options.only == "cores" else {bench.options.only}
    return cores.measure_cores(bench, stack, database, account_id, parts)


def measure_tally(bench: Bench, stack: ExitStack) -> tuple[ChainReport, RestReport, CoresReport]:
    data_dir = bench.data_dir
    database = create_database(stack, data_dir)
    servers = {}
    for loop in LOOPS:
        progress(f"starting tally serve (TALLY_EVENT_LOOP={loop})...")
        servers[loop] = start_tally(database, data_dir, loop)
        stack.callback(servers[loop].stop)
        progress(f"tally ({loop}) serving on {servers[loop].address}")
    account_id = scenarios.create_account(servers[LOOPS[0]], bench.token)
    progress(f"created account {account_id} for GetAccount")
    steps: list[Step] = [
        partial(scenarios.get_h2load, account_id=account_id),
        partial(scenarios.get_python, account_id=account_id),
        partial(scenarios.create_python, database=database),
    ]
    run_rounds(bench, servers, steps)
    for server in servers.values():
        server.stop()
    chain_report = chain.measure_chain(bench, stack, database, data_dir, account_id)
    rest_report = rest.measure_rest(bench, stack, database, data_dir, account_id)
    return chain_report, rest_report, cores.measure_cores(bench, stack, database, account_id, CORES_PARTS)


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
new rows in the accounts table.
Every call carries `authorization: Bearer <admin token from tally serve's settings>` (echo included);
tally serve here: every interceptor, rate limits in-process and never reached, spans created (as
sampled) and not exported."""


def print_report(
    bench: Bench,
    chain_report: ChainReport | None,
    rest_report: RestReport | None,
    cores_report: CoresReport | None,
) -> None:
    if chain_report is None:  # --only
        print()
        if rest_report is not None:
            print_rest_report(report.merge_rounds(bench.rest_results), rest_report, bench.options)
        if cores_report is not None:
            print_cores_report(report.merge_rounds(bench.cores_results), cores_report)
            print()
            print_targets(bench, cores_report)
        return
    assert rest_report is not None
    assert cores_report is not None
    rows = report.merge_rounds(bench.results)
    print()
    print(report.table(rows))
    print()
    print(NOTES)
    print()
    for line in report.loop_comparison(rows):
        print(line)
    print(report.loop_verdict(rows))
    print()
    print_chain_report(rows, report.merge_rounds(bench.chain_results), chain_report)
    print()
    print_rest_report(report.merge_rounds(bench.rest_results), rest_report, bench.options)
    print()
    print_cores_report(report.merge_rounds(bench.cores_results), cores_report)
    print()
    print_targets(bench, cores_report)


def print_rest_report(rows: list[report.Measurement], info: RestReport, options: Options) -> None:
    print(f"GetAccount over REST vs over gRPC (one tally serve on {rest.LOOP}, h2load for both):")
    grpc_row = report.find(rows, rest.GRPC, "GetAccount", "h2load", rest.LOOP)
    rest_row = report.find(rows, rest.REST, "GetAccount", "h2load", rest.LOOP)
    if grpc_row is None or rest_row is None:
        print("  not measured")
        return
    print()
    print(report.chain_table([(rest.GRPC, grpc_row), (rest.REST, rest_row)]))
    print()
    print(report.ratio_table([("REST ÷ gRPC", rest_row, grpc_row)]))
    print()
    print(
        f"""\
Server: `tally serve`, {info.server},
  {info.database}; every interceptor, rate limits in-process
  and never reached, spans created, not exported; {info.rounds} run(s) per protocol, alternating order.
gRPC: POST of the gRPC-framed request, {options.concurrency} streams in flight over
  {options.connections} HTTP/2 connections; successes = complete reply messages in the DATA bytes,
  checked with a gRPC client before and after.
REST: GET {rest.REST_PATH} over HTTP/1.1, {options.concurrency} connections with one request in flight
  each; reply {info.json_bytes} bytes of JSON; the gateway calls the same server over a loopback gRPC
  channel (whole interceptor chain); successes = h2load's 2xx count, checked with one urllib GET
  (JSON equal to the gRPC reply) before and after; without the token the gateway answered 401."""
    )


def print_chain_report(
    main_rows: list[report.Measurement], rows: list[report.Measurement], info: ChainReport
) -> None:
    print(f"GetAccount through the interceptor chain (h2load, servers on {chain.LOOP}):")
    if info.skipped:
        print(f"  not measured: {info.skipped}")
        return
    echo = report.find(main_rows, "echo", "Echo", "h2load", chain.LOOP)
    bare = report.find(rows, chain.BARE, "GetAccount", "h2load", chain.LOOP)
    full = report.find(rows, chain.FULL, "GetAccount", "h2load", chain.LOOP)
    if echo is None or bare is None or full is None:
        print("  not measured")
        return
    off = report.find(rows, chain.FULL_NO_CACHE, "GetAccount", "h2load", chain.LOOP)
    targets = [("echo (ceiling, main rounds)", echo), (chain.BARE, bare), (chain.FULL, full)]
    ratios = [
        ("full chain ÷ no interceptors", full, bare),
        ("full chain ÷ echo", full, echo),
        ("no interceptors ÷ echo", bare, echo),
    ]
    if off is not None:
        targets.append((chain.FULL_NO_CACHE, off))
        ratios += [("cache off ÷ no interceptors", off, bare), ("cache off ÷ echo", off, echo)]
    print()
    print(report.chain_table(targets))
    print()
    print(report.ratio_table(ratios))
    print()
    print(
        f"""\
{chain.FULL}: `tally serve` with Tracing, Observability, ErrorMapping, Auth, RateLimit;
  auth: an HS256 admin token (subject cli:{info.subject}) verified on every call;
  rate limit: token bucket in Redis ({info.redis_url}), limits far above the load so nothing is
  refused; tokens reserved from Redis in batches (TALLY_RATE_LIMIT_BATCH, default 64): the server made
  {info.limiter_calls:,} rate-limit calls to Redis for {info.ok_calls:,} OK GetAccount calls
  ({per_thousand(info.limiter_calls, info.ok_calls)} per 1,000); Redis ran {info.script_calls:,} EVALSHA/EVAL
  meanwhile (server-wide counter, other clients included); {info.fallbacks} fallback(s) to in-process
  buckets (a Redis call over 100 ms), {info.refused} refused;
  tracing: {tracing_text()}; OTEL_TRACES_EXPORTER=console: every sampled span (the RPC's and one per SQL
  statement) batched (background thread) and serialised to JSON on stdout, which goes to /dev/null{
            "; the batch queue overflowed, so some spans were dropped" if info.spans_dropped_logs else ""
        };
  access log: one JSON line per call at INFO to a log file; metrics on.
{chain.BARE}: bench/bare_tally.py, the same AccountServicer, dependencies and transport options
  on grpc.aio.server() with no interceptors (no auth: the same token header is sent and ignored).
Both on {info.database}
  (the database of the main rounds); {info.rounds} run(s) per target, alternating order.
echo: the uvloop h2load row of the main table, every run there pooled.
Each run is checked with a gRPC client before and after (the full chain with the token).
Cache: {
            "the full chain runs with TALLY_CACHE as its default (on with Redis); the cache-off row with "
            "TALLY_CACHE=off"
            if info.cache_setting
            else "TALLY_CACHE is not a setting of this Tally (no cache): no cache-off row; "
            "the full-chain row stands for both"
        }."""
    )
    for problem in chain.chain_problems(info):
        print(f"warning: {problem}")


def per_thousand(part: int, whole: int) -> str:
    return f"{1000 * part / whole:.1f}" if whole else "-"


def tracing_text() -> str:
    ratio = processes.TRACING.ratio
    if ratio >= 1:
        return "OTEL_TRACES_SAMPLER=parentbased_always_on (every call traced)"
    return f"OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG={ratio:g} (--trace-ratio)"


def print_cores_report(rows: list[report.Measurement], info: CoresReport) -> None:
    print(f"Every core (bench/cores.py, servers on {cores.LOOP}, {os.cpu_count()} CPUs):")
    one = report.find(rows, cores.workers_name(1), "Health/Check", "h2load", cores.LOOP)
    two = report.find(rows, cores.workers_name(2), "Health/Check", "h2load", cores.LOOP)
    if one is not None and two is not None:
        print()
        print(report.chain_table([(cores.workers_name(1), one), (cores.workers_name(2), two)]))
        print()
        print(report.ratio_table([("2 workers ÷ 1 worker", two, one)]))
        print()
        for name in (cores.workers_name(1), cores.workers_name(2)):
            print(f"  CPU during {name}: {info.cpu.get(name, '?')}")
        print(f"  calls per worker (--workers 2): {info.split.get(cores.workers_name(2), '?')}")
        print(
            f"  h2load: {cores.WORKER_CONNECTIONS} connections (the kernel gives each connection to one "
            "worker), one thread; PostgreSQL idle (Health/Check reads nothing)."
        )
    if info.skipped:
        print(f"  baseline and open loop not measured: {info.skipped}")
        return
    baseline_rows = [
        (name, row)
        for count in (1, 2)
        for name in (cores.rest_name(count), cores.baseline_name(count))
        if (
            row := report.find(
                rows, name, "GetAccount" if "tally" in name else "GET account", "h2load", cores.LOOP
            )
        )
    ]
    if baseline_rows:
        found = dict(baseline_rows)
        print()
        print(report.chain_table(baseline_rows))
        ratios = []
        for count in (1, 2):
            tally, base = found.get(cores.rest_name(count)), found.get(cores.baseline_name(count))
            if tally is not None and base is not None:
                ratios.append((f"tally REST ÷ baseline, --workers {count}", tally, base))
        for name in (cores.rest_name, cores.baseline_name):
            if name(1) in found and name(2) in found:
                ratios.append((f"{name(2)} ÷ {name(1)}", found[name(2)], found[name(1)]))
        print()
        print(report.ratio_table(ratios))
        print()
        for name, _ in baseline_rows:
            print(f"  CPU during {name}: {info.cpu.get(name, '?')}")
        print(
            "  GET /v1/accounts/<id> with the bearer token, h2load --h1, one request in flight per\n"
            "  connection; tally: the whole chain (rate limits in Redis, spans exported to /dev/null,\n"
            "  access log, metrics); baseline: bench/baseline_fastapi.py (FastAPI, PyJWT, Redis\n"
            "  INCR+EXPIRE window, SQLAlchemy ORM session.get, Pydantic model, one JSON access line),\n"
            "  uvicorn with uvloop and httptools."
        )
    loop = info.open_loop
    if loop is not None:
        print()
        print(
            f"Open loop: {loop.offered:,}/s GetAccount offered from {loop.streams} concurrent streams "
            f"({loop.streams} HTTP/2 connections, h2load --rps) for {loop.seconds:g} s against "
            "`tally serve --workers 2` (whole chain):"
        )
        print(
            f"  achieved {loop.achieved:,.0f}/s ({loop.replies:,} replies of {loop.started:,} calls "
            f"started), {loop.errors:,} errors, {loop.unfinished:,} still in flight at the end;\n"
            f"  p50 {loop.p50_ms:.1f} ms, "
            f"P95 {loop.p95_ms:.1f} ms, P99 {loop.p99_ms:.1f} ms"
        )
        print(f"  CPU: {loop.cpu}")
        print(f"  calls per worker: {info.split.get('open loop', '?')}")


def _ratio(
    rows: list[report.Measurement], top: tuple[str, str], bottom: tuple[str, str], loop: str
) -> float | None:
    a = report.find(rows, top[0], top[1], "h2load", loop)
    b = report.find(rows, bottom[0], bottom[1], "h2load", loop)
    return a.rps / b.rps if a is not None and b is not None and b.rps else None


def print_targets(bench: Bench, info: CoresReport) -> None:
    """Issue 11's figures and ratios, measured in this run, against its targets."""
    main = report.merge_rounds(bench.results)
    chained = report.merge_rounds(bench.chain_results)
    cored = report.merge_rounds(bench.cores_results)
    everything = main + chained + cored
    echo = ("echo", "Echo")
    bare, full = (chain.BARE, "GetAccount"), (chain.FULL, "GetAccount")
    off = (chain.FULL_NO_CACHE, "GetAccount")
    lines: list[tuple[str, float | None, float | None]] = []

    def rps(name: tuple[str, str], loop: str = chain.LOOP) -> None:
        row = report.find(everything, name[0], name[1], "h2load", loop)
        print(
            f"  {name[0]:<44} {name[1]:<13} {row.rps:>8,.0f} req/s"
            if row
            else f"  {name[0]:<44} not measured"
        )

    print("Issue 11, figures and ratios of this run (h2load, req/s):")
    for name in (echo, bare, full, off):
        rps(name)
    lines = [
        ("full chain ÷ no interceptors (>= 0.7)", _ratio(everything, full, bare, chain.LOOP), 0.7),
        ("full chain, cache on ÷ echo (>= 0.3)", _ratio(everything, full, echo, chain.LOOP), 0.3),
        ("full chain, cache off ÷ echo (>= 0.2)", _ratio(everything, off, echo, chain.LOOP), 0.2),
        (
            "--workers 2 ÷ 1, Health/Check (>= 1.6 on free cores)",
            _ratio(
                everything,
                (cores.workers_name(2), "Health/Check"),
                (cores.workers_name(1), "Health/Check"),
                cores.LOOP,
            ),
            1.6,
        ),
        (
            "tally REST ÷ FastAPI baseline, 1 worker (>= 1.5)",
            _ratio(
                everything,
                (cores.rest_name(1), "GetAccount"),
                (cores.baseline_name(1), "GET account"),
                cores.LOOP,
            ),
            1.5,
        ),
        (
            "tally REST ÷ FastAPI baseline, 2 workers (>= 1.5)",
            _ratio(
                everything,
                (cores.rest_name(2), "GetAccount"),
                (cores.baseline_name(2), "GET account"),
                cores.LOOP,
            ),
            1.5,
        ),
    ]
    for label, value, goal in lines:
        if value is None:
            print(f"  {label:<58} not measured")
        else:
            print(f"  {label:<58} {value:5.2f}x  {'met' if value >= (goal or 0) else 'not met'}")
    loop = info.open_loop
    if loop is not None:
        verdict = (
            "met"
            if loop.achieved >= 0.98 * loop.offered and loop.p95_ms < 200 and not loop.errors
            else "not met"
        )
        print(
            f"  open loop, {loop.offered:,}/s offered, {loop.streams} streams, --workers 2 (P95 < 200 ms):\n"
            f"    {loop.achieved:,.0f}/s achieved, P95 {loop.p95_ms:.1f} ms, P99 {loop.p99_ms:.1f} ms, "
            f"{loop.errors} errors  {verdict}"
        )


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
        "--chain-rounds",
        type=int,
        default=1,
        help="runs per target of the interceptor-chain part (default 1)",
    )
    parser.add_argument(
        "--rest-rounds",
        type=int,
        default=1,
        help="runs per protocol of the REST vs gRPC part (default 1)",
    )
    parser.add_argument(
        "--only",
        choices=["rest", "workers", "baseline", "open-loop", "cores"],
        default="",
        help="run only this part: rest (GetAccount over REST vs gRPC, about 20 s); workers (--workers 2 vs 1 "
        "on Health/Check); baseline (Tally REST vs the FastAPI baseline, 1 and 2 workers); open-loop "
        "(1,000 GetAccount/s offered, 500 streams, --workers 2); cores (those three)",
    )
    parser.add_argument(
        "--trace-ratio",
        type=float,
        default=0.1,
        help="the share of calls every tally process traces (parentbased_traceidratio, the production "
        "sampler; 1 traces every call; default 0.1)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 300 calls or 1.5 s per run, 16 in flight"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.trace_ratio <= 1:
        parser.error("--trace-ratio must be between 0 and 1")
    processes.TRACING.ratio = args.trace_ratio
    requests, seconds, concurrency = (300, 1.5, 16) if args.quick else (20_000, 5.0, 64)
    requests = args.requests or requests
    concurrency = args.concurrency or concurrency
    if min(requests, concurrency, args.connections, args.rounds, args.chain_rounds, args.rest_rounds) < 1:
        parser.error(
            "--requests, --concurrency, --connections, --rounds, --chain-rounds and --rest-rounds "
            "must be at least 1"
        )
    return Options(
        requests=requests,
        seconds=args.seconds or seconds,
        concurrency=concurrency,
        connections=args.connections,
        warmup=min(requests, 4 * concurrency),
        rounds=args.rounds,
        chain_rounds=args.chain_rounds,
        rest_rounds=args.rest_rounds,
        only=args.only,
    )


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


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
    print(f"bench: load average {load_average()} at the start", flush=True)
    print(
        f"bench: up to {options.requests} calls or {options.seconds:g} s per run, {options.rounds} rounds "
        f"(interceptor-chain part: {options.chain_rounds} per target; REST vs gRPC: "
        f"{options.rest_rounds} per protocol{', only this part' if options.only else ''}), "
        f"{options.concurrency} calls in flight over {options.connections} connections, 127.0.0.1 only",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="tally-bench-") as workdir, ExitStack() as stack:
        bench = Bench(options, Path(workdir), h2load)
        try:
            mint_bench_token(bench)
            chain_report: ChainReport | None = None
            rest_report: RestReport | None = None
            cores_report: CoresReport | None = None
            if options.only == "rest":
                rest_report = measure_rest_only(bench, stack)
            elif options.only:
                cores_report = measure_cores_only(bench, stack)
            else:
                measure_echo(bench, stack)
                chain_report, rest_report, cores_report = measure_tally(bench, stack)
        except (BenchError, H2loadError) as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; cleaning up", file=sys.stderr)
            return 130
    # Leaving the `with` stopped every server, dropped the database and deleted the Redis keys.
    print_report(bench, chain_report, rest_report, cores_report)
    print()
    print(f"load average at the end: {load_average()} ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
