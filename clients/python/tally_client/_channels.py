"""One channel per (target, transport security, options), shared by every client that asks for it.

A gRPC channel is a pool of HTTP/2 connections, expensive to open and made to be shared: a
process that builds a client per request should still hold one connection per server. Each
client takes a reference and gives it back on close(); the last one out closes the channel.
asyncio channels belong to the event loop that made them, so their key includes the loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import grpc
import grpc.aio

from tally_client._config import Config

_C = TypeVar("_C")


class _Shared(Generic[_C]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[tuple[object, ...], tuple[_C, int]] = {}

    def acquire(self, key: tuple[object, ...], factory: Callable[[], _C]) -> _C:
        with self._lock:
            channel, count = self._channels.get(key, (None, 0))
            if channel is None:
                channel = factory()
            self._channels[key] = (channel, count + 1)
            return channel

    def release(self, key: tuple[object, ...]) -> _C | None:
        """Drop one reference; the channel to close when it was the last, else None."""
        with self._lock:
            channel, count = self._channels[key]
            if count > 1:
                self._channels[key] = (channel, count - 1)
                return None
            del self._channels[key]
            return channel

    def __len__(self) -> int:
        return len(self._channels)


_sync: _Shared[grpc.Channel] = _Shared()
_async: _Shared[grpc.aio.Channel] = _Shared()


def _new_sync(config: Config) -> grpc.Channel:
    credentials = config.credentials()
    options = list(config.channel_options)
    if credentials is None:
        return grpc.insecure_channel(config.target, options=options)
    return grpc.secure_channel(config.target, credentials, options=options)


def _new_async(config: Config) -> grpc.aio.Channel:
    credentials = config.credentials()
    options = list(config.channel_options)
    if credentials is None:
        return grpc.aio.insecure_channel(config.target, options=options)
    return grpc.aio.secure_channel(config.target, credentials, options=options)


class SyncChannelLease:
    """A client's hold on a channel: shared through the cache, or its own (share_channel=False)."""

    def __init__(self, config: Config) -> None:
        self._key = config.channel_key() if config.share_channel else None
        if self._key is None:
            self.channel = _new_sync(config)
        else:
            self.channel = _sync.acquire(self._key, lambda: _new_sync(config))
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._key is None:
            self.channel.close()
        elif (last := _sync.release(self._key)) is not None:
            last.close()


class AsyncChannelLease:
    """The asyncio twin of SyncChannelLease, keyed by the running loop as well."""

    def __init__(self, config: Config) -> None:
        loop = asyncio.get_running_loop()
        self._key = (*config.channel_key(), id(loop)) if config.share_channel else None
        if self._key is None:
            self.channel = _new_async(config)
        else:
            self.channel = _async.acquire(self._key, lambda: _new_async(config))
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._key is None:
            await self.channel.close()
        elif (last := _async.release(self._key)) is not None:
            await last.close()


def shared_channel_count() -> tuple[int, int]:
    """How many shared channels are open (sync, asyncio): for tests and diagnostics."""
    return len(_sync), len(_async)
