"""Profile `tally serve` with its full chain under h2load load, with py-spy attached.

One run: create a throw-away PostgreSQL database, `tally migrate` it, start `tally serve`
as the chain part of the bench does (bench/chain.py: uvloop, rate limits in Redis, spans
exported to the console with stdout thrown away, a token minted by `tally token`), create an
account, then drive GetAccount with h2load for --seconds while `py-spy record` samples the
server (the whole process, every thread, idle frames left out). Prints the top entries by own
time (the function was running) and by total time (the function was on the stack), as a
percentage of the samples; stops everything and drops the database, also on failure.

    PYTHONPATH=$PWD:$PWD/generated .venv/bin/python bench/profile.py --seconds 20 --top 25

Needs py-spy (the dev extra) and the right to ptrace the server (a child of this process:
allowed under the default kernel.yama.ptrace_scope=1 only as root or with CAP_SYS_PTRACE).
TALLY_BENCH_REDIS_URL chooses the Redis database (default: bench/chain.py's).
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import chain
import h2load_runner
import pgdb
import processes
from processes import BenchError, migrate_tally, mint_token, start_tally
from scenarios import GET_METHOD, auth_header, create_account, get_request_body, progress

LOOP = "uvloop"


def frame_name(frame: str) -> str:
    """'handle (app/x.py:12)' -> 'handle (app/x.py)': one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    for marker in ("site-packages/", "/wt-chain/", "/work/main/"):
        if marker in path:
            path = path.rpartition(marker)[2]
    return f"{name} ({path})" if path else name


def read_collapsed(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """(own samples, total samples, all samples) per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        samples += count
        # py-spy puts the thread first ("thread (0x...)"): leave it out of the function counts.
        functions = [frame for frame in frames if not frame.startswith(("thread (", "process "))]
        if not functions:
            continue
        own[functions[-1]] += count
        for function in set(functions):
            total[function] += count
    return own, total, samples


def format_top(title: str, counts: Counter[str], samples: int, top: int) -> list[str]:
    lines = [f"{title} (of {samples} samples)"]
    for function, count in counts.most_common(top):
        lines.append(f"  {100 * count / samples:6.2f}%  {count:7d}  {function}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="load and sampling time (default 20)")
    parser.add_argument("--top", type=int, default=25, help="entries per table (default 25)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (default 64)")
    parser.add_argument("--connections", type=int, default=4, help="HTTP/2 connections (default 4)")
    parser.add_argument("--output", type=Path, help="also write the tables to this file")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra variable for tally serve, e.g. OTEL_TRACES_SAMPLER=always_off (repeatable)",
    )
    parser.add_argument("--no-spy", action="store_true", help="only the h2load figures, no py-spy")
    args = parser.parse_args(argv)
    extra = dict(item.partition("=")[::2] for item in args.env)
    if extra:
        # tally_env drops the caller's OTEL_* and TALLY_* variables; these are added after it.
        plain_env = processes.tally_env
        processes.tally_env = lambda *a, **k: {**plain_env(*a, **k), **extra}
    h2load = h2load_runner.find_h2load()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if h2load is None:
        raise SystemExit(h2load_runner.H2LOAD_MISSING)
    if not Path(py_spy).exists():
        raise SystemExit("py-spy not found; install the dev extra (pip install -e '.[dev]')")
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="tally-profile-") as tmp:
        workdir = Path(tmp)
        data_dir = workdir / "tally-data"
        data_dir.mkdir()
        progress("creating a database...")
        database = pgdb.create()
        stack.callback(pgdb.drop, database)
        migrate_tally(database, data_dir)
        redis_url = chain.redis_url()
        env = processes.tally_env(database, data_dir, LOOP, redis_url=redis_url, traces_exporter="console")
        token = mint_token(env, "bench-profile")
        progress(f"starting tally serve with the full chain ({LOOP}, Redis {redis_url}, spans exported)...")
        server = start_tally(
            database, data_dir, LOOP, label="profile", redis_url=redis_url, traces_exporter="console"
        )
        stack.callback(server.stop)
        account_id = create_account(server, token)
        body_file = workdir / "get.body"
        body_file.write_bytes(h2load_runner.grpc_frame(get_request_body(account_id)))
        url = f"http://{server.address}{GET_METHOD}"
        clients = max(1, min(args.connections, args.concurrency))
        command = [
            h2load,
            f"--duration={args.seconds + 2:g}",
            "--warm-up-time=1",
            f"--clients={clients}",
            f"--max-concurrent-streams={math.ceil(args.concurrency / clients)}",
            "--threads=1",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            *(f"--header={header}" for header in auth_header(token)),
            f"--data={body_file}",
            url,
        ]
        progress(f"h2load on GetAccount for {args.seconds:g} s, py-spy at {args.rate} Hz...")
        load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.5)  # connected and warmed up
        raw = workdir / "profile.txt"
        if args.no_spy:
            output, _ = load.communicate(timeout=args.seconds + 60)
            summary = [line for line in output.splitlines() if line.startswith(("finished in", "requests:"))]
            print("\n".join([f"tally serve, full chain, GetAccount, extra env {extra or 'none'}", *summary]))
            return 0
        spy = subprocess.run(
            [
                py_spy,
                "record",
                "--pid",
                str(server.process.pid),
                "--duration",
                f"{int(args.seconds)}",
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--output",
                str(raw),
            ],
            capture_output=True,
            text=True,
            timeout=args.seconds + 60,
            check=False,
        )
        output, _ = load.communicate(timeout=args.seconds + 60)
        if spy.returncode != 0 or not raw.exists():
            raise BenchError(f"py-spy failed ({spy.returncode}):\n{spy.stderr[-1500:]}")
        own, total, samples = read_collapsed(raw)
        summary = [line for line in output.splitlines() if line.startswith(("finished in", "requests:"))]
        lines = [
            f"tally serve, full chain, GetAccount, h2load {args.concurrency} in flight, {args.seconds:g} s",
            *summary,
            "",
            *format_top("by own time", own, samples, args.top),
            "",
            *format_top("by total time", total, samples, args.top),
        ]
        text = "\n".join(lines)
        print(text)
        if args.output:
            args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/profile.py: {exc}", file=sys.stderr)
        sys.exit(1)
