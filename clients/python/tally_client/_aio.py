"""The asyncio client: the blocking client's methods, awaited; `_call` owns retries, deadlines and auth."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from tally.account.v1 import account_pb2, account_pb2_grpc, auth_pb2, auth_pb2_grpc
from tally.billing.v1 import usage_pb2, usage_pb2_grpc
from tally_client._channels import AsyncChannelLease
from tally_client._client import log_retry, make_config
from tally_client._config import Config
from tally_client._core import (
    BatchResult,
    CachedToken,
    Units,
    UsageEvent,
    UsageResult,
    account_message,
    batch_result,
    bearer,
    new_id,
    service_token_request,
    update_request,
    usage_request,
    usage_result,
)
from tally_client._errors import TallyError, error_from_rpc
from tally_client._retry import RetryState
from tally_client._stream import AsyncUsageStream

_R = TypeVar("_R")


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


class AsyncClient:
    """An asyncio Tally client, made inside a running loop; `await close()` (or `async with`) when done.

    `AsyncClient("localhost:50051", token=...)` or `AsyncClient(Config(...))`. A token_provider
    may return the token or an awaitable of it.
    """

    def __init__(self, target: str | Config, /, **options: Any) -> None:
        self.config = make_config(target, options)
        self._lease = AsyncChannelLease(self.config)
        channel = self._lease.channel
        self._accounts = account_pb2_grpc.AccountServiceStub(channel)
        self._auth = auth_pb2_grpc.AuthServiceStub(channel)
        self._usage = usage_pb2_grpc.UsageServiceStub(channel)
        self._service_tokens: AsyncServiceAccountTokens | None = None
        if self.config.service_account is not None:
            request = service_token_request(self.config.service_account, self.config.service_account_scopes)
            loop = asyncio.get_running_loop()
            self._service_tokens = AsyncServiceAccountTokens(
                issue=lambda: self._call(
                    "IssueServiceToken", self._auth.IssueServiceToken, request, idempotent=True, auth=False
                ),
                clock=loop.time,
            )
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

    async def _call(
        self,
        method: str,
        rpc: Callable[..., Awaitable[_R]],
        request: object,
        *,
        idempotent: bool,
        timeout: float | None = None,
        auth: bool = True,
    ) -> _R:
        """Call `rpc` until it answers, fails for good, or the retry budget is spent."""
        loop = asyncio.get_running_loop()
        state = RetryState(self.config.retry, idempotent, loop.time())
        renewed = False
        while True:
            state.attempts += 1
            deadline = state.attempt_timeout(timeout or self.config.default_timeout, loop.time())
            error: TallyError
            try:
                metadata = await self._metadata() if auth else ()
                return await rpc(request, timeout=deadline, metadata=metadata)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                cause: BaseException = exc
            if (
                error.code == grpc.StatusCode.UNAUTHENTICATED
                and auth
                and self._service_tokens is not None
                and not renewed
            ):
                renewed = True
                self._service_tokens.invalidate()
                continue
            delay = state.next_delay(error, loop.time())
            if delay is None:
                raise error from cause
            log_retry(self.config, method, error, state.attempts, delay)
            await self.sleep(delay)

    def _request_id(self, given: str | None) -> str:
        if given:
            return given
        return new_id("req") if self.config.generate_ids else ""

    async def close(self) -> None:
        await self._lease.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- accounts ---------------------------------------------------------------------------------

    async def create_account(
        self,
        account: account_pb2.Account | None = None,
        *,
        display_name: str = "",
        email: str = "",
        currency_code: str = "",
        billing_time_zone: str = "",
        phone: str = "",
        metadata: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> account_pb2.Account:
        request = account_pb2.CreateAccountRequest(
            account=account_message(
                account,
                display_name=display_name,
                email=email,
                currency_code=currency_code,
                billing_time_zone=billing_time_zone,
                phone=phone,
                metadata=metadata,
            ),
            request_id=self._request_id(request_id),
        )
        account_reply: account_pb2.Account = await self._call(
            "CreateAccount",
            self._accounts.CreateAccount,
            request,
            idempotent=bool(request.request_id),
            timeout=timeout,
        )
        return account_reply

    async def get_account(
        self, account_id: str, *, show_deleted: bool = False, timeout: float | None = None
    ) -> account_pb2.Account:
        request = account_pb2.GetAccountRequest(id=account_id, show_deleted=show_deleted)
        account_reply: account_pb2.Account = await self._call(
            "GetAccount", self._accounts.GetAccount, request, idempotent=False, timeout=timeout
        )
        return account_reply

    async def list_accounts(
        self,
        *,
        filter: str = "",  # the request's own field name
        page_size: int = 0,
        show_deleted: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[account_pb2.Account]:
        token = ""
        while True:
            request = account_pb2.ListAccountsRequest(
                page_size=page_size, page_token=token, filter=filter, show_deleted=show_deleted
            )
            page = await self._call(
                "ListAccounts", self._accounts.ListAccounts, request, idempotent=False, timeout=timeout
            )
            for account in page.accounts:
                yield account
            token = page.next_page_token
            if not token:
                return

    async def update_account(
        self,
        account: account_pb2.Account,
        update_mask: Sequence[str],
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> account_pb2.Account:
        request = update_request(account, update_mask, self._request_id(request_id))
        account_reply: account_pb2.Account = await self._call(
            "UpdateAccount",
            self._accounts.UpdateAccount,
            request,
            idempotent=bool(request.request_id),
            timeout=timeout,
        )
        return account_reply

    # --- usage ------------------------------------------------------------------------------------

    async def record_usage(
        self,
        account_id: str,
        service: str,
        units: Units,
        *,
        price_per_unit: Units | None = None,
        event_time: dt.datetime | None = None,
        properties: Mapping[str, str] | None = None,
        event_id: str | None = None,
        timeout: float | None = None,
    ) -> UsageResult:
        event = UsageEvent(account_id, service, units, price_per_unit, event_time, properties, event_id)
        request = usage_request(event, generate_id=self.config.generate_ids)
        response: usage_pb2.CreateUsageRecordResponse = await self._call(
            "CreateUsageRecord",
            self._usage.CreateUsageRecord,
            request,
            idempotent=bool(request.usage_record.event_id),
            timeout=timeout,
        )
        return usage_result(response)

    async def record_usage_batch(
        self, events: Sequence[UsageEvent], *, timeout: float | None = None
    ) -> BatchResult:
        requests = [usage_request(event, generate_id=self.config.generate_ids) for event in events]
        request = usage_pb2.BatchCreateUsageRecordsRequest(requests=requests)
        response: usage_pb2.BatchCreateUsageRecordsResponse = await self._call(
            "BatchCreateUsageRecords",
            self._usage.BatchCreateUsageRecords,
            request,
            idempotent=all(item.usage_record.event_id for item in requests),
            timeout=timeout,
        )
        return batch_result(response)

    def usage_stream(self, *, producer_id: str | None = None, window: int = 1000) -> AsyncUsageStream:
        return AsyncUsageStream(
            self._usage.StreamUsageRecords,
            self._metadata,
            self.config,
            producer_id=producer_id,
            window=window,
        )
