"""Usage ingestion: unary CreateUsageRecord against the echo ceiling, batch and stream ingestion
against a raw asyncpg insert of the same rows, and the server's memory after many events.

One run, loopback only, bounded counts:

1. The echo server (bench/echo_server.py, uvloop) and `tally serve` (uvloop, the whole
   interceptor chain as bench/chain.py runs it: rate limits in Redis with reservations,
   parent-based ratio sampling at --trace-ratio with spans exported to the console and thrown
   away, the JSON access log) on a throw-away PostgreSQL database, migrated first.
2. Unary: h2load sends CreateUsageRecord (no event id: each call is a new event whose id the
   server assigns, so each is stored) and, the same way, Echo with a payload as long, 64 in
   flight over 4 connections. Successes are the new rows counted in usage_records, which must
   equal h2load's answered calls.
3. Batch and stream: bench/usage_load.py in its own process sends --events events with their
   own event ids (so each is deduplicated) as BatchCreateUsageRecords of 1,000 (4 in flight)
   and as 4 StreamUsageRecords calls; then the same number of rows goes into usage_records with
   asyncpg's executemany (1,000 rows a call and a transaction, 4 connections at once), no
   dedup, and then again with each row's event id into usage_event_ids as well (what a store
   that deduplicates across partitions writes at the least, nothing checked). Events/s of
   each, the ratios, and rows counted after each.
4. Memory: the server's resident set (VmRSS) before and after streaming --memory-events more
   events, sampled once a second meanwhile.

    PYTHONPATH=$PWD:$PWD/generated .venv/bin/python bench/usage.py [--events 200000] [--memory-events 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import chain
import grpc
import h2load_runner
import pgdb
import processes
from processes import BenchError, Server, migrate_tally, mint_token, start_echo, start_tally
from report import percentile
from scenarios import (
    ECHO_METHOD,
    Bench,
    Options,
    Target,
    create_account,
    prepare_h2load,
    progress,
    run_h2load,
    unary,
    warn,
)

from core import ids
from tally.billing.v1 import meter_pb2, usage_pb2

LOOP = "uvloop"
CREATE_USAGE = "/tally.billing.v1.UsageService/CreateUsageRecord"
CREATE_METER = "/tally.billing.v1.MeterService/CreateMeter"
SERVICE = "bench_calls"
RAW_CHUNK = 1000
RAW_CONNECTIONS = 4
BENCH_DIR = Path(__file__).resolve().parent


def create_meter(server: Server, token: str) -> str:
    meter = meter_pb2.Meter(
        code=SERVICE, display_name="Bench calls", aggregation=meter_pb2.Meter.AGGREGATION_SUM
    )
    body = meter_pb2.CreateMeterRequest(meter=meter).SerializeToString()
    try:
        reply = unary(server.address, CREATE_METER, body, token)
    except grpc.RpcError as exc:
        raise BenchError(f"CreateMeter failed: {exc.code().name}: {exc.details()}") from None
    return str(meter_pb2.Meter.FromString(reply).id)


def unary_body(account_id: str) -> bytes:
    request = usage_pb2.CreateUsageRecordRequest(account_id=account_id)
    request.usage_record.service = SERVICE
    request.usage_record.units_consumed.value = "1"
    return request.SerializeToString()


def rows(database: pgdb.BenchDatabase) -> int:
    return pgdb.count_rows(database, "usage_records")


def h2load_figures(result: h2load_runner.H2loadResult) -> dict[str, float]:
    latencies = sorted(result.latencies_ms)
    return {
        "rps": result.done / result.seconds if result.seconds else 0.0,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "done": result.done,
    }


def measure_unary(
    bench: Bench, echo: Server, tally: Server, database: pgdb.BenchDatabase, account_id: str
) -> dict[str, Any]:
    body = unary_body(account_id)
    progress(f"Echo via h2load, {len(body)}-byte payload like a CreateUsageRecordRequest...")
    echo_job = prepare_h2load(
        bench, Target(echo, LOOP, "usage"), ECHO_METHOD, b"x" * len(body), "usage-echo", bench.token
    )
    echo_result = run_h2load(bench, echo_job)
    progress("CreateUsageRecord via h2load (each call a new event)...")
    job = prepare_h2load(bench, Target(tally, LOOP, "usage"), CREATE_USAGE, body, "usage-create", bench.token)
    before = rows(database)
    result = run_h2load(bench, job)
    stored = rows(database) - before
    if stored != result.done:
        warn(f"h2load had {result.done} answers but {stored} new rows are in usage_records")
    return {"echo": h2load_figures(echo_result), "create": h2load_figures(result), "stored": stored}


def run_load(tally: Server, token: str, account_id: str, mode: str, events: int, tag: str) -> dict[str, Any]:
    command = [
        sys.executable,
        str(BENCH_DIR / "usage_load.py"),
        f"--target={tally.address}",
        f"--mode={mode}",
        f"--account-id={account_id}",
        f"--service={SERVICE}",
        f"--events={events}",
        f"--tag={tag}",
    ]
    env = {**os.environ, "TALLY_BENCH_TOKEN": token}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise BenchError(f"usage_load.py {mode} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    outcome: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if outcome["failed_calls"] or outcome["refused"]:
        warn(f"{mode}: failed calls {outcome['failed_calls']}, refused events {outcome['refused']}")
    return outcome


RAW_IDS_STATEMENT = (
    "INSERT INTO usage_event_ids (account_id, event_id, record_id, event_time, fingerprint, create_time)"
    " VALUES ($1, $2, $3, $4, $5, $6)"
)


async def raw_insert(
    database: pgdb.BenchDatabase, account_id: str, meter_id: str, events: int, *, tag: str, with_ids: bool
) -> float:
    """The same rows as the ingestion stores, by executemany, without any dedup; seconds taken.
    `with_ids`: each row's event id too (usage_event_ids, in the same transaction), the least a
    store that deduplicates across partitions writes, still without checking anything."""
    now = datetime.now(UTC)
    statement = (
        "INSERT INTO usage_records (account_id, event_time, id, meter_id, service, units, price_per_unit,"
        " properties, event_id, create_time) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8, $9)"
    )
    chunks = [range(start, min(start + RAW_CHUNK, events)) for start in range(0, events, RAW_CHUNK)]
    pending = iter(chunks)
    connections = [await asyncpg.connect(database.url) for _ in range(RAW_CONNECTIONS)]

    async def worker(connection: asyncpg.Connection) -> None:
        for chunk in pending:
            batch = [
                (
                    account_id,
                    now,
                    ids.new_ordered_id("usg", now),
                    meter_id,
                    SERVICE,
                    Decimal(1 + n % 7),
                    "{}",
                    f"{tag}-{n}",
                    now,
                )
                for n in chunk
            ]
            async with connection.transaction():
                await connection.executemany(statement, batch)
                if with_ids:
                    ids_rows = [(row[0], row[7], row[2], row[1], "0" * 64, now) for row in batch]
                    await connection.executemany(RAW_IDS_STATEMENT, ids_rows)

    began = time.perf_counter()
    try:
        await asyncio.gather(*(worker(connection) for connection in connections))
        return time.perf_counter() - began
    finally:
        for connection in connections:
            await connection.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def measure_memory(tally: Server, token: str, account_id: str, events: int) -> dict[str, Any]:
    pid = tally.process.pid
    before = rss_kib(pid)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append(rss_kib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    progress(f"streaming {events:,} events to watch the server's resident set...")
    try:
        outcome = run_load(tally, token, account_id, "stream", events, f"mem-{secrets.token_hex(3)}")
    finally:
        stop.set()
        sampler.join()
    after = rss_kib(pid)
    return {
        "before": before,
        "after": after,
        "max": max([*samples, after]),
        "samples": samples,
        "outcome": outcome,
    }


def events_per_second(outcome: dict[str, Any]) -> float:
    return (outcome["stored"] + outcome["replayed"]) / outcome["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events per batch/stream/raw run")
    parser.add_argument(
        "--memory-events", type=int, default=1_000_000, help="events streamed for the memory figure (0: skip)"
    )
    parser.add_argument("--requests", type=int, default=20_000, help="h2load calls per unary run at most")
    parser.add_argument("--seconds", type=float, default=5.0, help="and about this long")
    parser.add_argument(
        "--trace-ratio", type=float, default=0.1, help="parentbased_traceidratio of the server"
    )
    args = parser.parse_args()
    processes.TRACING.ratio = args.trace_ratio
    h2load = h2load_runner.find_h2load()
    if h2load is None:
        print(f"bench: {h2load_runner.H2LOAD_MISSING}", file=sys.stderr)
        return 2
    options = Options(
        requests=args.requests,
        seconds=args.seconds,
        concurrency=64,
        connections=4,
        warmup=256,
        rounds=1,
        chain_rounds=1,
    )
    print(
        f"bench/usage.py: load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the start",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="tally-usage-bench-") as workdir, ExitStack() as stack:
        bench = Bench(options, Path(workdir), h2load)
        try:
            bench.data_dir.mkdir()
            database = pgdb.create()
            stack.callback(pgdb.drop, database)
            progress(f"database {database.name}: migrating...")
            migrate_tally(database, bench.data_dir)
            echo = start_echo(LOOP, bench.workdir)
            stack.callback(echo.stop)
            redis_url = chain.redis_url()
            tally = start_tally(
                database, bench.data_dir, LOOP, label="usage", redis_url=redis_url, traces_exporter="console"
            )
            stack.callback(tally.stop)
            bench.token = mint_token(
                processes.tally_env(database, bench.data_dir, LOOP), f"bench-usage-{secrets.token_hex(4)}"
            )
            account_id = create_account(tally, bench.token)
            meter_id = create_meter(tally, bench.token)
            unary_figures = measure_unary(bench, echo, tally, database, account_id)
            loads: dict[str, dict[str, Any]] = {}
            for mode in ("batch", "stream"):
                progress(f"{mode}: {args.events:,} events with their own ids via bench/usage_load.py...")
                before = rows(database)
                loads[mode] = run_load(
                    tally, bench.token, account_id, mode, args.events, f"{mode}-{secrets.token_hex(3)}"
                )
                loads[mode]["rows"] = rows(database) - before
            progress(
                f"raw asyncpg executemany of {args.events:,} rows "
                f"({RAW_CONNECTIONS} connections, {RAW_CHUNK} a call)..."
            )
            before = rows(database)
            raw_seconds = asyncio.run(
                raw_insert(database, account_id, meter_id, args.events, tag="raw", with_ids=False)
            )
            raw_rows = rows(database) - before
            progress(f"raw again with each row's event id (usage_event_ids), {args.events:,} rows...")
            raw_ids_seconds = asyncio.run(
                raw_insert(database, account_id, meter_id, args.events, tag="raw-ids", with_ids=True)
            )
            memory = (
                measure_memory(tally, bench.token, account_id, args.memory_events)
                if args.memory_events
                else None
            )
        except (BenchError, h2load_runner.H2loadError) as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
    raw_rates = (args.events / raw_seconds, args.events / raw_ids_seconds)
    print_report(args, unary_figures, loads, raw_rates, raw_rows, memory)
    print(
        f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs)"
    )
    return 0


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def print_report(
    args: argparse.Namespace,
    unary_figures: dict[str, Any],
    loads: dict[str, dict[str, Any]],
    raw_rates: tuple[float, float],
    raw_rows: int,
    memory: dict[str, Any] | None,
) -> None:
    echo, create = unary_figures["echo"], unary_figures["create"]
    ratio = create["rps"] / echo["rps"] if echo["rps"] else 0.0
    print("\nUnary (h2load, 64 in flight over 4 connections, servers on uvloop):")
    print(
        f"  echo               {echo['rps']:8,.0f} calls/s  "
        f"p50 {echo['p50']:7.2f} ms  p99 {echo['p99']:7.2f} ms"
    )
    print(
        f"  CreateUsageRecord  {create['rps']:8,.0f} calls/s  "
        f"p50 {create['p50']:7.2f} ms  p99 {create['p99']:7.2f} ms"
        f"  ({unary_figures['stored']:,} rows stored for {create['done']:,} answers)"
    )
    print(
        f"  CreateUsageRecord ÷ echo: {ratio:.2f}x (>= 0.5: {met(ratio >= 0.5)}); "
        f"p99 < 50 ms: {met(create['p99'] < 50)}"
    )
    raw_rate, raw_ids_rate = raw_rates
    print(f"\nBatch and stream ({args.events:,} events each, every event with its own id):")
    for mode, outcome in loads.items():
        rate = events_per_second(outcome)
        print(
            f"  {mode:6} {rate:10,.0f} events/s  "
            f"({outcome['stored']:,} stored, {outcome['replayed']:,} replays, "
            f"{outcome['rows']:,} new rows, {outcome['seconds']:.1f} s)"
            f"  ÷ raw {rate / raw_rate:.2f}x (>= 0.6: {met(rate / raw_rate >= 0.6)}); "
            f">= 25,000/s: {met(rate >= 25_000)}"
        )
    print(f"  raw    {raw_rate:10,.0f} rows/s    (asyncpg executemany, no dedup, {raw_rows:,} new rows)")
    print(
        f"  raw+id {raw_ids_rate:10,.0f} rows/s    (the same with each row's event id, nothing checked;"
        f" batch {events_per_second(loads['batch']) / raw_ids_rate:.2f}x, "
        f"stream {events_per_second(loads['stream']) / raw_ids_rate:.2f}x of it)"
    )
    if memory is not None:
        print(
            f"\nMemory: VmRSS {memory['before'] / 1024:.1f} MiB "
            f"before streaming {args.memory_events:,} events, "
            f"{memory['max'] / 1024:.1f} MiB at most during, {memory['after'] / 1024:.1f} MiB after "
            f"({events_per_second(memory['outcome']):,.0f} events/s)"
        )


if __name__ == "__main__":
    sys.exit(main())
