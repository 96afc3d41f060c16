"""The asyncio client: the blocking client's methods, awaited; `_call` owns retries, deadlines and auth.

What each call sends and returns is described once, in _calls, for both clients.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

from tally.account.v1 import auth_pb2
from tally_client import _calls
from tally_client._calls import Attempts, Page, Stubs, Unary, make_config, method_signature
from tally_client._channels import AsyncChannelLease
from tally_client._config import Config
from tally_client._core import CachedToken, bearer
from tally_client._stream import AsyncUsageStream

_P = ParamSpec("_P")
_R = TypeVar("_R")


def awaiting(
    describe: Callable[Concatenate[Config, _P], Unary[_R]],
) -> Callable[Concatenate[AsyncClient, _P], Coroutine[Any, Any, _R]]:
    """The AsyncClient method that makes the call `describe` describes."""

    async def method(self: AsyncClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await self._call(describe(self.config, *args, **kwargs))

    method_signature(method, describe, "AsyncClient")
    return method


def awaiting_pages(
    describe: Callable[Concatenate[Config, _P], Callable[[str], Unary[Page[_R]]]],
) -> Callable[Concatenate[AsyncClient, _P], AsyncIterator[_R]]:
    """The AsyncClient method that iterates the pages of the list `describe` describes."""

    async def method(self: AsyncClient, /, *args: _P.args, **kwargs: _P.kwargs) -> AsyncIterator[_R]:
        page = describe(self.config, *args, **kwargs)
        token = ""
        while True:
            items, token = await self._call(page(token))
            for item in items:
                yield item
            if not token:
                return

    method_signature(method, describe, "AsyncClient")
    return method


class AsyncServiceAccountTokens:
    """ServiceAccountTokens for asyncio: one renewal at a time, the others wait for it."""

    def __init__(
        self, issue: Callable[[], Awaitable[auth_pb2.TokenResponse]], clock: Callable[[], float]
    ) -> None:
        self._issue = issue
        self._clock = clock
        self._token: CachedToken | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        async with self._lock:
            if self._token is None or not self._token.fresh(self._clock()):
                response = await self._issue()
                self._token = CachedToken.issued(response, self._clock())
            return self._token.value

    def invalidate(self) -> None:
        self._token = None


class AsyncClient(Stubs):
    """An asyncio Tally client, made inside a running loop; `await close()` (or `async with`) when done.

    `AsyncClient("localhost:50051", token=...)` or `AsyncClient(Config(...))`. A token_provider
    may return the token or an awaitable of it.
    """

    def __init__(self, target: str | Config, /, **options: Any) -> None:
        config = make_config(target, options)
        self._lease = AsyncChannelLease(config)
        super().__init__(config, self._lease.channel)
        self._service_tokens: AsyncServiceAccountTokens | None = None
        if config.service_account is not None:
            issue = _calls.issue_service_token(config, config.service_account)
            clock = asyncio.get_running_loop().time
            self._service_tokens = AsyncServiceAccountTokens(issue=lambda: self._call(issue), clock=clock)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    # --- plumbing ---------------------------------------------------------------------------------

    async def _metadata(self) -> tuple[tuple[str, str], ...]:
        config = self.config
        if config.token is not None:
            return bearer(config.token)
        if config.token_provider is not None:
            token: Any = config.token_provider()
            return bearer(await token if inspect.isawaitable(token) else token)
        if self._service_tokens is not None:
            return bearer(await self._service_tokens())
        return ()

    async def _call(self, call: Unary[_R]) -> _R:
        """Make `call` until it answers, fails for good, or the retry budget is spent."""
        rpc = self._rpc(call)
        attempts = Attempts(self.config, call, self._service_tokens, asyncio.get_running_loop().time)
        while True:
            deadline = attempts.deadline()
            try:
                metadata = await self._metadata() if call.auth else ()
                return call.decode(await rpc(call.request, timeout=deadline, metadata=metadata))
            except grpc.RpcError as exc:
                delay = attempts.wait_after(exc)
            if delay is not None:
                await self.sleep(delay)

    async def close(self) -> None:
        await self._lease.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- the calls (see _calls) -------------------------------------------------------------------

    create_account = awaiting(_calls.create_account)
    get_account = awaiting(_calls.get_account)
    list_accounts = awaiting_pages(_calls.list_accounts)
    update_account = awaiting(_calls.update_account)
    record_usage = awaiting(_calls.record_usage)
    record_usage_batch = awaiting(_calls.record_usage_batch)

    def usage_stream(self, *, producer_id: str | None = None, window: int = 1000) -> AsyncUsageStream:
        """A streaming producer (see AsyncUsageStream); `await close()` waits for the last acknowledgement."""
        rpc = self._usage.StreamUsageRecords
        return AsyncUsageStream(rpc, self._metadata, self.config, producer_id=producer_id, window=window)
