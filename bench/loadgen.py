"""Closed-loop gRPC load generator (grpc.aio), run as its own process.

`--concurrency` workers share `--connections` channels; each worker sends one
unary call, waits for the answer, and sends the next, until `--requests` calls
were issued or `--seconds` passed. Latency is measured per call with
time.perf_counter. A short untimed warm-up comes first. Prints one JSON object
(see `Outcome.to_json`: successes, errors by status, seconds, latencies) on stdout.
Every call carries `authorization: Bearer $TALLY_BENCH_TOKEN` when that variable
is set (in the environment rather than argv, so it stays out of `ps`).

The same program drives the echo server and Tally, so their figures compare:
  echo    /bench.Echo/Echo with a fixed payload of --payload-size bytes
  get     GetAccount for --account-id (request serialized once)
  create  CreateAccount with a unique email per call (--tag keeps runs apart)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from tally.account.v1 import account_pb2

ECHO_METHOD = "/bench.Echo/Echo"
GET_METHOD = "/tally.account.v1.AccountService/GetAccount"
CREATE_METHOD = "/tally.account.v1.AccountService/CreateAccount"
CALL_TIMEOUT_SECONDS = 10.0
TOKEN_VARIABLE = "TALLY_BENCH_TOKEN"  # noqa: S105 (a variable name, not a secret)

RequestFactory = Callable[[int], bytes]
Metadata = tuple[tuple[str, str], ...]


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    issued: int = 0
    elapsed: float = 0.0

    def to_json(self, warmup_ok: int) -> str:
        return json.dumps(
            {
                "ok": len(self.latencies),
                "errors": dict(self.errors),
                "warmup_ok": warmup_ok,
                "seconds": self.elapsed,
                "latencies_ms": [round(seconds * 1000, 3) for seconds in self.latencies],
            }
        )


def request_factory(args: argparse.Namespace) -> tuple[str, RequestFactory]:
    if args.rpc == "echo":
        payload = b"x" * args.payload_size
        return ECHO_METHOD, lambda _: payload
    if args.rpc == "get":
        body = account_pb2.GetAccountRequest(id=args.account_id).SerializeToString()
        return GET_METHOD, lambda _: body

    def create(index: int) -> bytes:
        account = account_pb2.Account(
            display_name=f"Bench {index}", email=f"bench-{args.tag}-{index}@example.com", currency_code="USD"
        )
        return account_pb2.CreateAccountRequest(account=account).SerializeToString()

    return CREATE_METHOD, create


async def worker(
    call: grpc.aio.UnaryUnaryMultiCallable,
    make_request: RequestFactory,
    metadata: Metadata,
    outcome: Outcome,
    first_index: int,
    limit: int,
    deadline: float,
) -> None:
    while outcome.issued < limit and time.perf_counter() < deadline:
        request = make_request(first_index + outcome.issued)
        outcome.issued += 1
        started = time.perf_counter()
        try:
            await call(request, timeout=CALL_TIMEOUT_SECONDS, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            outcome.errors[exc.code().name] += 1
        else:
            outcome.latencies.append(time.perf_counter() - started)


async def drive(
    calls: list[grpc.aio.UnaryUnaryMultiCallable],
    make_request: RequestFactory,
    metadata: Metadata,
    *,
    first_index: int,
    requests: int,
    seconds: float,
    concurrency: int,
) -> Outcome:
    outcome = Outcome()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(
            worker(calls[n % len(calls)], make_request, metadata, outcome, first_index, requests, deadline)
            for n in range(concurrency)
        )
    )
    outcome.elapsed = time.perf_counter() - started
    return outcome


async def main_async(args: argparse.Namespace) -> None:
    method, make_request = request_factory(args)
    token = os.environ.get(TOKEN_VARIABLE)
    metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
    # A local subchannel pool per channel: each channel gets its own TCP connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(args.target, options=options) for _ in range(args.connections)]
    try:
        calls = [channel.unary_unary(method) for channel in channels]
        common = {"seconds": args.seconds, "concurrency": args.concurrency}
        warmup = await drive(calls, make_request, metadata, first_index=0, requests=args.warmup, **common)
        measured = await drive(
            calls, make_request, metadata, first_index=warmup.issued, requests=args.requests, **common
        )
    finally:
        for channel in channels:
            await channel.close()
    print(measured.to_json(warmup_ok=len(warmup.latencies)), flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--rpc", choices=("echo", "get", "create"), required=True)
    parser.add_argument("--requests", type=int, default=5000, help="at most this many timed calls")
    parser.add_argument("--seconds", type=float, default=10.0, help="and for at most this long")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls first")
    parser.add_argument("--payload-size", type=int, default=64, help="echo payload bytes")
    parser.add_argument("--account-id", default="", help="account for --rpc get")
    parser.add_argument("--tag", default="run", help="makes --rpc create emails unique across runs")
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="uvloop", help="generator's own loop"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main_async(args))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
