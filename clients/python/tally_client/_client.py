"""The blocking client: every call goes through `_call`, which owns retries, deadlines and auth.

What each call sends and returns is described once, in _calls, for both clients.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

from tally_client import _calls
from tally_client._calls import Attempts, Page, Stubs, Unary, make_config, method_signature
from tally_client._channels import SyncChannelLease
from tally_client._config import Config
from tally_client._core import ServiceAccountTokens, bearer
from tally_client._stream import UsageStream

_P = ParamSpec("_P")
_R = TypeVar("_R")


def blocking(describe: Callable[Concatenate[Config, _P], Unary[_R]]) -> Callable[Concatenate[Client, _P], _R]:
    """The Client method that makes the call `describe` describes."""

    def method(self: Client, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return self._call(describe(self.config, *args, **kwargs))

    method_signature(method, describe, "Client")
    return method


def blocking_pages(
    describe: Callable[Concatenate[Config, _P], Callable[[str], Unary[Page[_R]]]],
) -> Callable[Concatenate[Client, _P], Iterator[_R]]:
    """The Client method that iterates the pages of the list `describe` describes."""

    def method(self: Client, /, *args: _P.args, **kwargs: _P.kwargs) -> Iterator[_R]:
        page = describe(self.config, *args, **kwargs)
        token = ""
        while True:
            items, token = self._call(page(token))
            yield from items
            if not token:
                return

    method_signature(method, describe, "Client")
    return method


class Client(Stubs):
    """A blocking Tally client. Thread-safe; close() it (or use `with`) when done.

    `Client("localhost:50051", token=...)` or `Client(Config(...))`; options are Config's.
    """

    def __init__(self, target: str | Config, /, **options: Any) -> None:
        config = make_config(target, options)
        self._lease = SyncChannelLease(config)
        super().__init__(config, self._lease.channel)
        self._service_tokens: ServiceAccountTokens | None = None
        if config.service_account is not None:
            issue = _calls.issue_service_token(config, config.service_account)
            self._service_tokens = ServiceAccountTokens(issue=lambda: self._call(issue), clock=time.monotonic)
        self.sleep: Callable[[float], None] = time.sleep

    # --- plumbing ---------------------------------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        config = self.config
        if config.token is not None:
            return bearer(config.token)
        if config.token_provider is not None:
            return bearer(config.token_provider())
        if self._service_tokens is not None:
            return bearer(self._service_tokens())
        return ()

    def _call(self, call: Unary[_R]) -> _R:
        """Make `call` until it answers, fails for good, or the retry budget is spent."""
        rpc = self._rpc(call)
        attempts = Attempts(self.config, call, self._service_tokens, time.monotonic)
        while True:
            deadline = attempts.deadline()
            try:
                metadata = self._metadata() if call.auth else ()
                return call.decode(rpc(call.request, timeout=deadline, metadata=metadata))
            except grpc.RpcError as exc:
                delay = attempts.wait_after(exc)
            if delay is not None:
                self.sleep(delay)

    def close(self) -> None:
        """Give back the channel (closed when no other client shares it)."""
        self._lease.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the calls (see _calls) -------------------------------------------------------------------

    create_account = blocking(_calls.create_account)
    get_account = blocking(_calls.get_account)
    list_accounts = blocking_pages(_calls.list_accounts)
    update_account = blocking(_calls.update_account)
    record_usage = blocking(_calls.record_usage)
    record_usage_batch = blocking(_calls.record_usage_batch)

    def usage_stream(self, *, producer_id: str | None = None, window: int = 1000) -> UsageStream:
        """A streaming producer (see UsageStream); close() it to wait for the last acknowledgement."""
        rpc = self._usage.StreamUsageRecords
        return UsageStream(rpc, self._metadata, self.config, producer_id=producer_id, window=window)
