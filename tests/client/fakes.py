"""Fakes for the client's unit tests: failed calls as gRPC raises them, and stubs that fail on cue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from tally_client._errors import STATUS_DETAILS_KEY


class FakeRpcError(grpc.RpcError):
    """A failed call as grpc raises it: code(), details() and trailing_metadata() with the status."""

    def __init__(
        self, code: grpc.StatusCode, message: str = "", status: status_pb2.Status | None = None
    ) -> None:
        super().__init__(message)
        self._code = code
        self._message = message
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        if self._status is None:
            return ()
        return ((STATUS_DETAILS_KEY, self._status.SerializeToString()),)


def rate_limited(delay_seconds: float) -> FakeRpcError:
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="slow down")
    seconds = int(delay_seconds)
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=seconds, nanos=round((delay_seconds - seconds) * 1e9))
    )
    status.details.add().Pack(retry)
    return FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", status)


@dataclass
class ScriptedRpc:
    """A unary method that raises the scripted errors in turn, then answers with `reply(request)`."""

    errors: list[grpc.RpcError]
    reply: Callable[[Any], Any]
    requests: list[Any] = field(default_factory=list)
    timeouts: list[float | None] = field(default_factory=list)

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = ()) -> Any:
        self.requests.append(request)
        self.timeouts.append(timeout)
        if self.errors:
            raise self.errors.pop(0)
        return self.reply(request)


@dataclass
class AsyncScriptedRpc(ScriptedRpc):
    async def __call__(  # the awaitable twin of the same call
        self,
        request: Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline, as grpc.aio names it)
        metadata: Any = (),
    ) -> Any:
        return ScriptedRpc.__call__(self, request, timeout=timeout, metadata=metadata)
