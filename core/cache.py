"""Read-through caching of hot reads (accounts, plans, entitlements) in Redis, behind a port.

Use cases see `ReadCache` only: `read(entry, load)` answers from the cache or runs `load` (the
database read) and fills the cache with what it returned; `invalidate(*generations)` runs after
the writer's commit (`uow.after_commit`). Services never import redis.

Correctness rests on generations. Every entry names the generation counters it depends on
(`account:<id>`, `plan:<id>`, ...), plus one global epoch. An entry is stored with the values
those counters had *before* the database read, and is a hit only while they still have them.
Invalidation is an INCR, after the commit. The classic read-populate race (a reader reads the old
row, a writer commits and invalidates, the reader then stores the old row) cannot leave a stale
entry behind: the fill is a compare-and-set in Lua that stores nothing when any counter moved
since the reader looked, and an entry stored before the INCR is dead the moment it happens. So a
reader never gets data older than the last write whose commit (and invalidation) finished
before its read began.

Redis down or slow: every call has a bounded timeout; on a failure the cache steps aside for
`RETRY_AFTER_SECONDS` (no per-call timeouts paid meanwhile), reads go to the database, one log
line says so (and one when it is back), and the metric counts each bypassed read. An
invalidation that could not be delivered is not forgotten: the next successful call first bumps
the global epoch, which retires every entry filled before it. Entries carry a TTL as the last
safety net (a process that died between its commit and its invalidation).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")

log = logging.getLogger("tally.cache")

# The epoch every entry depends on; bumped to retire everything at once (a lost invalidation).
EPOCH = "epoch"
# After a Redis failure, how long reads skip the cache before trying it again.
RETRY_AFTER_SECONDS = 1.0
# Key layout version: a change of the stored format changes it, and old entries are never read.
PREFIX = "tally:cache:v1:"


@dataclass(frozen=True)
class EntryCodec(Generic[T]):
    """How a cached value is written as JSON and read back."""

    dump: Callable[[T], Any]
    load: Callable[[Any], T]


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One cached resource: its key, the generations it depends on, its codec, and the resource
    kind it is counted under (accounts, plans, entitlements)."""

    kind: str
    key: str
    generations: tuple[str, ...]
    codec: EntryCodec[T]


class ReadCache(Protocol):
    async def read(self, entry: Entry[T], load: Callable[[], Awaitable[T | None]]) -> T | None:
        """The cached value of `entry`, else `load()` (stored when not None)."""
        ...

    async def invalidate(self, *generations: str) -> None:
        """Retire every entry that depends on one of `generations`. Call after the commit."""
        ...


class NoCache:
    """Caching off: every read goes to the database."""

    async def read(self, entry: Entry[T], load: Callable[[], Awaitable[T | None]]) -> T | None:
        return await load()

    async def invalidate(self, *generations: str) -> None:
        return None


class CacheEvents(Protocol):
    """What the cache reports (core.metrics.Metrics fills it)."""

    def cache_result(self, kind: str, result: str) -> None:
        """One read: result is hit, miss, stale_fill (a fill refused by the compare-and-set) or
        bypass (Redis unusable: served from the database)."""
        ...

    def cache_error(self, operation: str) -> None: ...

    def cache_up(self, up: bool) -> None: ...


class _NoEvents:
    def cache_result(self, kind: str, result: str) -> None:
        return None

    def cache_error(self, operation: str) -> None:
        return None

    def cache_up(self, up: bool) -> None:
        return None


# KEYS: the generation counters, then the entry. ARGV: TTL in ms, the payload, then the counter
# values the reader saw (0 for a missing counter). Stores only if none has moved; each counter
# then outlives the entry (2x TTL), so a counter can never expire and restart at a value a live
# entry was stored under.
_FILL = """
local n = #KEYS - 1
for i = 1, n do
  local current = redis.call('GET', KEYS[i])
  if (current or '0') ~= ARGV[i + 2] then return 0 end
end
local ttl = tonumber(ARGV[1])
redis.call('SET', KEYS[n + 1], ARGV[2], 'PX', ttl)
for i = 1, n do
  if ARGV[i + 2] ~= '0' then redis.call('PEXPIRE', KEYS[i], 2 * ttl) end
end
return 1
"""


class RedisReadCache:
    """ReadCache on a Redis client (redis.asyncio.Redis, typed loosely so core needs no redis)."""

    def __init__(
        self,
        client: Any,
        *,
        ttl_seconds: float,
        timeout_seconds: float,
        events: CacheEvents | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._client = client
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._timeout = timeout_seconds
        self._events: CacheEvents = events or _NoEvents()
        self._clock = clock
        self._fill = client.register_script(_FILL)
        self._down_until = 0.0
        self._down = False
        self._lost_invalidation = False

    def report_to(self, events: CacheEvents) -> None:
        """Send results, errors and up/down changes to `events` from now on (the app's metrics)."""
        self._events = events
        events.cache_up(not self._down)

    async def close(self) -> None:
        await self._client.aclose()

    @staticmethod
    def _key(name: str) -> str:
        """A generation counter's key (entries live apart, under _entry_key)."""
        return PREFIX + "g:" + name

    @staticmethod
    def _entry_key(name: str) -> str:
        return PREFIX + "e:" + name

    def _usable(self) -> bool:
        return not self._down or self._clock() >= self._down_until

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._events.cache_error(operation)
        self._down_until = self._clock() + RETRY_AFTER_SECONDS
        if not self._down:
            self._down = True
            self._events.cache_up(False)
            log.warning("the cache (Redis) is unavailable, reads go to the database: %r", exc)

    async def _recovered(self) -> None:
        """After a success: say so once, and retire what a lost invalidation left behind."""
        if self._down:
            self._down = False
            self._events.cache_up(True)
            log.info("the cache (Redis) is back")
        if self._lost_invalidation:
            await self._client.incr(self._key(EPOCH))
            self._lost_invalidation = False

    async def read(self, entry: Entry[T], load: Callable[[], Awaitable[T | None]]) -> T | None:
        if not self._usable():
            self._events.cache_result(entry.kind, "bypass")
            return await load()
        names = (EPOCH, *entry.generations)
        keys = [self._key(name) for name in names]
        try:
            async with asyncio.timeout(self._timeout):
                if self._lost_invalidation or self._down:
                    await self._recovered()
                found = await self._client.mget([*keys, self._entry_key(entry.key)])
            seen = [int(value) if value is not None else 0 for value in found[:-1]]
        except Exception as exc:
            self._failed("read", exc)
            self._events.cache_result(entry.kind, "bypass")
            return await load()
        stored = found[-1]
        if stored is not None:
            try:
                document = json.loads(stored)
                if document["g"] == seen:
                    self._events.cache_result(entry.kind, "hit")
                    return entry.codec.load(document["v"])
            except (ValueError, KeyError, TypeError):
                log.warning("dropping an unreadable cache entry of kind %s", entry.kind)
        value = await load()
        if value is None:
            self._events.cache_result(entry.kind, "miss")
            return None
        payload = json.dumps({"g": seen, "v": entry.codec.dump(value)}, separators=(",", ":"))
        try:
            async with asyncio.timeout(self._timeout):
                stored_now = await self._fill(
                    keys=[*keys, self._entry_key(entry.key)], args=[self._ttl_ms, payload, *map(str, seen)]
                )
        except Exception as exc:
            self._failed("fill", exc)
            stored_now = 1
        self._events.cache_result(entry.kind, "miss" if stored_now else "stale_fill")
        return value

    async def invalidate(self, *generations: str) -> None:
        if not generations:
            return
        try:
            async with asyncio.timeout(self._timeout):
                async with self._client.pipeline(transaction=False) as pipe:
                    for name in generations:
                        pipe.incr(self._key(name))
                        pipe.pexpire(self._key(name), 2 * self._ttl_ms)
                    await pipe.execute()
                await self._recovered()
        except Exception as exc:
            # Remembered: the next successful call bumps the epoch, retiring every entry.
            self._lost_invalidation = True
            self._failed("invalidate", exc)
