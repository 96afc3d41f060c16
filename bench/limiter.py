"""µs per RateLimiter.check and Redis script calls per 1,000 checks, per-call mode vs reservations.

`python bench/limiter.py [--checks N]`, with Redis at TALLY_BENCH_REDIS_URL (default
redis://127.0.0.1:6379/12). One key, limits far away (rate and burst 1,000,000), sequential
checks; batch 0 is the per-call mode (TALLY_RATE_LIMIT_BATCH=0), 64 the default.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

from redis.asyncio import Redis

from core.settings import RateLimit
from interceptors.rate_limit import RateLimiter


async def run(url: str, checks: int, batch: int) -> tuple[float, float]:
    client = Redis.from_url(url)
    prefix = f"tally:rl:bench-{uuid.uuid4().hex[:8]}"
    limiter = RateLimiter(
        {"default": RateLimit(rate=1_000_000, burst=1_000_000)},
        client,
        key_prefix=prefix,
        redis_timeout=5,
        batch=batch,
    )
    try:
        started = time.perf_counter()
        for _ in range(checks):
            await limiter.check("g", "k", 1)
        elapsed = time.perf_counter() - started
        return elapsed / checks * 1e6, limiter.redis_calls * 1000 / checks
    finally:
        await client.delete(f"{prefix}:g:k")
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=20_000)
    args = parser.parse_args()
    url = os.environ.get("TALLY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
    for batch in (0, 64):
        us, calls = asyncio.run(run(url, args.checks, batch))
        print(f"batch={batch:<3} {us:8.1f} µs/check  {calls:7.1f} Redis calls per 1,000 checks")


if __name__ == "__main__":
    main()
