"""Usage ingestion load generator (grpc.aio), run as its own process: batches or streams.

Sends `--events` usage events for `--account-id` on meter code `--service`, every event with
its own event id (`<tag>-<n>`), so the server deduplicates each one, in one of two modes:

  batch   BatchCreateUsageRecords calls of `--batch-size` events, `--concurrency` in flight
          over `--connections` channels
  stream  `--concurrency` StreamUsageRecords calls, each sending its share of the events as
          fast as the server's flow control lets it, `--batch-size` events a message, each
          with its own producer id

and prints one JSON object: events the server acknowledged as stored or replayed, events it
refused, calls that failed (by status), and the seconds from the first send to the last answer.
Every call carries `authorization: Bearer $TALLY_BENCH_TOKEN` (from the environment, so the
token stays out of `ps`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from tally.billing.v1 import usage_pb2, usage_pb2_grpc

TOKEN_VARIABLE = "TALLY_BENCH_TOKEN"  # noqa: S105 (a variable name, not a secret)
CALL_TIMEOUT_SECONDS = 120.0


@dataclass
class Tally:
    stored: int = 0
    replayed: int = 0
    refused: int = 0
    failed_calls: Counter[str] = field(default_factory=Counter)


def event(args: argparse.Namespace, number: int) -> usage_pb2.CreateUsageRecordRequest:
    request = usage_pb2.CreateUsageRecordRequest(account_id=args.account_id)
    record = request.usage_record
    record.service = args.service
    record.units_consumed.value = str(1 + number % 7)
    record.event_id = f"{args.tag}-{number}"
    return request


async def run_batches(
    args: argparse.Namespace, stubs: list[usage_pb2_grpc.UsageServiceStub], tally: Tally
) -> None:
    metadata = (("authorization", f"Bearer {os.environ.get(TOKEN_VARIABLE, '')}"),)
    starts = iter(range(0, args.events, args.batch_size))

    async def worker(stub: usage_pb2_grpc.UsageServiceStub) -> None:
        for start in starts:
            numbers = range(start, min(start + args.batch_size, args.events))
            request = usage_pb2.BatchCreateUsageRecordsRequest(requests=[event(args, n) for n in numbers])
            try:
                response = await stub.BatchCreateUsageRecords(
                    request, timeout=CALL_TIMEOUT_SECONDS, metadata=metadata
                )
            except grpc.aio.AioRpcError as exc:
                tally.failed_calls[exc.code().name] += 1
                continue
            tally.stored += response.stored_count
            tally.replayed += response.replay_count
            tally.refused += response.failed_count

    await asyncio.gather(*(worker(stubs[n % len(stubs)]) for n in range(args.concurrency)))


async def run_streams(
    args: argparse.Namespace, stubs: list[usage_pb2_grpc.UsageServiceStub], tally: Tally
) -> None:
    metadata = (("authorization", f"Bearer {os.environ.get(TOKEN_VARIABLE, '')}"),)

    async def producer(index: int) -> None:
        numbers = range(index, args.events, args.concurrency)

        async def requests() -> AsyncIterator[usage_pb2.StreamUsageRecordsRequest]:
            # --batch-size events a message, each with its sequence number on this stream.
            for first in range(0, len(numbers), args.batch_size):
                yield usage_pb2.StreamUsageRecordsRequest(
                    producer_id=f"{args.tag}-p{index}" if first == 0 else "",
                    records=[
                        usage_pb2.SequencedUsageRecord(
                            sequence=sequence, request=event(args, numbers[sequence - 1])
                        )
                        for sequence in range(first + 1, min(first + args.batch_size, len(numbers)) + 1)
                    ],
                )

        call = stubs[index % len(stubs)].StreamUsageRecords(
            requests(), timeout=CALL_TIMEOUT_SECONDS, metadata=metadata
        )
        try:
            async for ack in call:
                tally.stored += ack.stored_count
                tally.replayed += ack.replay_count
                tally.refused += len(ack.failures)
        except grpc.aio.AioRpcError as exc:
            tally.failed_calls[exc.code().name] += 1

    await asyncio.gather(*(producer(n) for n in range(args.concurrency)))


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    channels = [
        grpc.aio.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.connections)
    ]
    stubs = [usage_pb2_grpc.UsageServiceStub(channel) for channel in channels]
    tally = Tally()
    began = time.perf_counter()
    try:
        await (run_batches if args.mode == "batch" else run_streams)(args, stubs, tally)
    finally:
        elapsed = time.perf_counter() - began
        for channel in channels:
            await channel.close()
    return {
        "mode": args.mode,
        "events": args.events,
        "stored": tally.stored,
        "replayed": tally.replayed,
        "refused": tally.refused,
        "failed_calls": dict(tally.failed_calls),
        "seconds": elapsed,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--mode", choices=["batch", "stream"], required=True)
    parser.add_argument("--account-id", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--tag", required=True, help="prefix of every event id (keeps runs apart)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import uvloop

    print(json.dumps(uvloop.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
