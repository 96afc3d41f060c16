"""GetAccount through Tally's whole interceptor chain, next to the same call with no interceptors.

Two more servers on uvloop, on the bench database the main rounds used:

* full chain: `tally serve` with every interceptor (tracing, observability, error
  mapping, auth, rate limit, deadline), its rate-limit buckets in Redis
  (TALLY_REDIS_URL, database 14 by default, override with TALLY_BENCH_REDIS_URL) and
  tracing exported: OTEL_TRACES_EXPORTER=console, with the server's stdout, where the
  spans are written, sent to /dev/null. The token's subject is unique to the run, and
  its buckets are deleted from Redis before and after.
* no interceptors: bench/bare_tally.py, the same AccountServicer and dependencies on a
  grpc.aio server with no interceptors at all.

Both are driven by h2load with the same body file and the same flags (the bearer token
included; the bare server ignores it), and compared with the echo ceiling measured via
h2load on uvloop in the main rounds. The report counts, from the full-chain server's
/metrics and Redis's own command counters, how many rate-limit round trips the calls cost: the
limiter reserves tokens in batches (TALLY_RATE_LIMIT_BATCH), so far fewer than one per call.
"""

from __future__ import annotations

import os
import secrets
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import pgdb
import redis
from processes import (
    BenchError,
    Server,
    log_lines_containing,
    mint_token,
    start_bare_tally,
    start_tally,
    tally_env,
)
from scenarios import (
    GET_METHOD,
    Bench,
    Target,
    check_get,
    get_request_body,
    measure_get_h2load,
    progress,
    unary,
    warn,
)

from interceptors.rate_limit import DEFAULT_KEY_PREFIX

LOOP = "uvloop"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
FULL = "tally, full chain"
FULL_NO_CACHE = "tally, full chain, cache off"
BARE = "tally, no interceptors"
BODY_LABEL = "chain-get"  # one body file for both targets
REDIS_DOWN_LOG = "Redis for rate limits failed"  # interceptors.rate_limit: fell back to local buckets
SPANS_DROPPED_LOG = "Queue full, dropping"  # the OpenTelemetry batch processor dropped spans


def redis_url() -> str:
    return os.environ.get("TALLY_BENCH_REDIS_URL") or DEFAULT_REDIS_URL


@dataclass
class ChainReport:
    """What the chain part did besides timing: its set-up and the checks on the full chain."""

    redis_url: str
    rounds: int = 0
    skipped: str = ""  # why the part did not run, if it did not
    subject: str = ""
    database: str = ""
    ok_calls: int = 0  # OK GetAccount calls, from the full-chain server's /metrics
    script_calls: int = 0  # EVALSHA + EVAL that Redis ran meanwhile (its server-wide counters)
    limiter_calls: int = 0  # the full-chain server's rate-limit round trips to Redis (its /metrics)
    fallbacks: int = 0  # times the limiter lost Redis and used in-process buckets
    refused: int = 0  # calls the limiter refused
    bucket_keys: int = 0  # rate-limit keys of the subject found in Redis after the runs
    redis_down_logs: int = 0
    spans_dropped_logs: int = 0
    cache_setting: bool = False  # TALLY_CACHE exists: the cache-off target ran


def cache_setting_exists() -> bool:
    """TALLY_CACHE (on|off|auto) is a setting of this Tally: the full chain runs with it off too."""
    from core.settings import Settings

    return "cache" in Settings.model_fields


class BenchKeys:
    """The rate-limit buckets of one token subject in the bench's Redis database."""

    def __init__(self, url: str, subject: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        # interceptors.rate_limit keys buckets `{prefix}:{group}:{principal subject}`.
        self.pattern = f"{DEFAULT_KEY_PREFIX}:*:cli:{subject}"

    def keys(self) -> list[bytes]:
        return list(self.client.scan_iter(match=self.pattern, count=1000))

    def flush(self) -> int:
        keys = self.keys()
        return int(self.client.delete(*keys)) if keys else 0

    def flush_quietly(self) -> None:
        """For clean-up on the way out: never raises."""
        try:
            self.flush()
        except redis.RedisError as exc:
            warn(f"could not delete the bench's rate-limit keys ({self.pattern}) from Redis: {exc}")

    def script_calls(self) -> int:
        stats = self.client.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric == name and all(f'{key}="{val}"' in label_text for key, val in labels.items()):
            total += float(value)
    return total


def read_metrics(server: Server) -> str:
    with urllib.request.urlopen(f"http://{server.http_address}/metrics", timeout=10) as response:
        return str(response.read().decode())


def check_setup(
    full: Server, bare: Server, database: pgdb.BenchDatabase, account_id: str, token: str
) -> None:
    """Both serve the bench database and the account; only the full chain asks for a token."""
    for server in (full, bare):
        if database.name not in server.database:
            raise BenchError(f"{server.name} serves {server.database!r}, not the bench database")
    body = get_request_body(account_id)
    if check_get(full, body, account_id, token) != check_get(bare, body, account_id, token):
        raise BenchError("the full chain and the bare server answer GetAccount differently")
    check_get(bare, body, account_id, "")  # no interceptors: no token needed
    try:
        unary(full.address, GET_METHOD, body)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
            raise BenchError(f"GetAccount without a token: {exc.code().name}, not UNAUTHENTICATED") from None
    else:
        raise BenchError("the full chain answered GetAccount without a token: is auth on?")


def measure_chain(
    bench: Bench, stack: ExitStack, database: pgdb.BenchDatabase, data_dir: Path, account_id: str
) -> ChainReport:
    """Start the two servers, measure GetAccount on each --chain-rounds times, check, stop them."""
    report = ChainReport(redis_url=redis_url(), rounds=bench.options.chain_rounds)
    report.subject = f"bench-chain-{secrets.token_hex(4)}"
    keys = BenchKeys(report.redis_url, report.subject)
    stack.callback(keys.client.close)
    try:
        keys.client.ping()
        keys.flush()
    except redis.RedisError as exc:
        report.skipped = f"Redis at {report.redis_url} is unreachable ({exc})"
        warn(f"interceptor-chain part skipped: {report.skipped}")
        return report
    stack.callback(keys.flush_quietly)
    env = tally_env(database, data_dir, LOOP, redis_url=report.redis_url, traces_exporter="console")
    token = mint_token(env, report.subject)
    progress(f"starting bench/bare_tally.py (no interceptors, {LOOP})...")
    bare = start_bare_tally(database, data_dir, LOOP)
    stack.callback(bare.stop)
    # Before the full chain answers anything, so that every call it rate-limits is counted.
    script_calls_before = keys.script_calls()
    progress(
        f"starting tally serve with the full chain ({LOOP}, Redis {report.redis_url}, spans exported)..."
    )
    full = start_tally(
        database, data_dir, LOOP, label="chain", redis_url=report.redis_url, traces_exporter="console"
    )
    stack.callback(full.stop)
    progress(f"no interceptors on {bare.address}, full chain on {full.address}; both on {database.name}")
    check_setup(full, bare, database, account_id, token)
    report.database = full.database
    servers = {BARE: bare, FULL: full}
    report.cache_setting = cache_setting_exists()
    if report.cache_setting:
        progress(f"starting tally serve with the full chain and TALLY_CACHE=off ({LOOP})...")
        servers[FULL_NO_CACHE] = start_tally(
            database,
            data_dir,
            LOOP,
            label="chain-no-cache",
            redis_url=report.redis_url,
            traces_exporter="console",
            extra_env={"TALLY_CACHE": "off"},
        )
        stack.callback(servers[FULL_NO_CACHE].stop)
        check_get(servers[FULL_NO_CACHE], get_request_body(account_id), account_id, token)
    names = list(servers)
    for number in range(report.rounds):
        order = names if number % 2 == 0 else names[::-1]
        for name in order:
            target = Target(servers[name], LOOP, f"round {number + 1}/{report.rounds}")
            progress(f"GetAccount via h2load, {name} ({target.describe()})...")
            row = measure_get_h2load(bench, target, account_id, token, BODY_LABEL, name)
            bench.chain_results.append(row)
    # A last check of each target; the full chain's bucket is then fresh (an idle one expires in 2 s).
    body = get_request_body(account_id)
    check_get(bare, body, account_id, token)
    check_get(full, body, account_id, token)
    report.bucket_keys = len(keys.keys())
    report.script_calls = keys.script_calls() - script_calls_before
    metrics = read_metrics(full)
    report.ok_calls = int(
        metric_total(metrics, "tally_rpc_requests_total", method=GET_METHOD.lstrip("/"), code="OK")
    )
    report.limiter_calls = int(metric_total(metrics, "tally_rate_limiter_redis_calls_total"))
    report.fallbacks = int(metric_total(metrics, "tally_rate_limiter_fallbacks_total"))
    report.refused = int(metric_total(metrics, "tally_rate_limited_total"))
    for server in servers.values():
        server.stop()
    report.redis_down_logs = log_lines_containing(full, REDIS_DOWN_LOG)
    report.spans_dropped_logs = log_lines_containing(full, SPANS_DROPPED_LOG)
    flushed = keys.flush()
    progress(
        f"chain servers stopped; {report.bucket_keys} rate-limit key(s) of cli:{report.subject} were in "
        f"Redis after the runs, {flushed} left to delete (idle buckets expire by themselves)"
    )
    for problem in chain_problems(report):
        warn(problem)
    return report


def chain_problems(report: ChainReport) -> list[str]:
    """What would make the full-chain figure not what it claims to be."""
    problems = []
    if report.bucket_keys == 0:
        problems.append(f"no rate-limit bucket of cli:{report.subject} was found in Redis after the runs")
    if report.ok_calls and not report.limiter_calls:
        problems.append(
            f"the full chain made no rate-limit call to Redis for {report.ok_calls} OK calls: the "
            "figure is without the Redis limiter"
        )
    if report.script_calls < report.limiter_calls:
        problems.append(
            f"Redis ran {report.script_calls} scripts but the server counted {report.limiter_calls} "
            "rate-limit calls to it: is the server on another Redis?"
        )
    if report.fallbacks or report.redis_down_logs:
        problems.append(
            f"the rate limiter fell back to in-process buckets {report.fallbacks} time(s): a Redis call "
            "took over its 100 ms timeout (an overloaded machine does that; see the load average)"
        )
    if report.refused:
        problems.append(f"the rate limiter refused {report.refused} call(s)")
    if report.spans_dropped_logs:
        problems.append("the span batch processor's queue overflowed: some spans were dropped, not exported")
    return problems
