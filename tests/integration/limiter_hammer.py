"""One process hammering one rate limit bucket, for the two-process bound test.

Run as `python -m tests.integration.limiter_hammer URL PREFIX RATE BURST BATCH SECONDS TASKS`.
It builds its own RateLimiter and Redis client, prints "ready", waits for a line on stdin,
then checks the bucket ("g", "k") with cost 1 from TASKS concurrent tasks for SECONDS, and
prints one JSON line: admitted and refused counts, script calls, and monotonic times (the
same clock in every process of the host): when its first check ended and when its last
check that reached Redis started, and when its last check ended.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from redis.asyncio import Redis

from core.settings import RateLimit
from interceptors.rate_limit import RateLimiter


async def hammer(
    url: str, prefix: str, limit: RateLimit, batch: int, seconds: float, tasks: int
) -> dict[str, float]:
    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    downs: list[int] = []
    limiter = RateLimiter(
        {"default": limit},
        client,
        set(),
        key_prefix=prefix,
        redis_timeout=5,
        batch=batch,
        on_redis_down=lambda: downs.append(1),
    )
    await client.ping()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    counts = {"admitted": 0, "refused": 0, "first_end": 0.0, "last_redis_start": 0.0, "last_end": 0.0}
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            calls = limiter.redis_calls
            started = time.monotonic()
            decision = await limiter.check("g", "k", 1)
            if not counts["first_end"]:
                counts["first_end"] = time.monotonic()
            if limiter.redis_calls != calls:
                counts["last_redis_start"] = max(counts["last_redis_start"], started)
            counts["admitted" if decision.allowed else "refused"] += 1
            counts["last_end"] = time.monotonic()

    await asyncio.gather(*(worker() for _ in range(tasks)))
    result = {
        **counts,
        "redis_calls": limiter.redis_calls,
        "held": limiter.held("g", "k"),
        "downs": len(downs),
    }
    await client.aclose()
    return result


def main() -> None:
    url, prefix, rate, burst, batch, seconds, tasks = sys.argv[1:8]
    limit = RateLimit(rate=float(rate), burst=int(burst))
    print(
        json.dumps(asyncio.run(hammer(url, prefix, limit, int(batch), float(seconds), int(tasks)))),
        flush=True,
    )


if __name__ == "__main__":
    main()
