"""The blocking client: every call goes through `_call`, which owns retries, deadlines and auth."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from tally.account.v1 import account_pb2, account_pb2_grpc, auth_pb2_grpc
from tally.billing.v1 import usage_pb2, usage_pb2_grpc
from tally_client._channels import SyncChannelLease
from tally_client._config import Config
from tally_client._core import (
    BatchResult,
    ServiceAccountTokens,
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
from tally_client._stream import UsageStream

_R = TypeVar("_R")


def make_config(target: str | Config, options: Mapping[str, Any]) -> Config:
    """A Config from a target and keyword options, or the Config given (then no options)."""
    if isinstance(target, Config):
        if options:
            raise TypeError("give a Config or a target with options, not both")
        return target
    return Config(target=target, **options)


def log_retry(config: Config, method: str, error: TallyError, attempt: int, delay: float) -> None:
    config.logger.warning(
        "tally %s failed with %s (attempt %d); retrying in %.3f s",
        method,
        error.code.name,
        attempt,
        delay,
        extra={
            "tally_method": method,
            "tally_code": error.code.name,
            "tally_attempt": attempt,
            "tally_delay": delay,
        },
    )


class Client:
    """A blocking Tally client. Thread-safe; close() it (or use `with`) when done.

    `Client("localhost:50051", token=...)` or `Client(Config(...))`; options are Config's.
    """

    def __init__(self, target: str | Config, /, **options: Any) -> None:
        self.config = make_config(target, options)
        self._lease = SyncChannelLease(self.config)
        channel = self._lease.channel
        self._accounts = account_pb2_grpc.AccountServiceStub(channel)
        self._auth = auth_pb2_grpc.AuthServiceStub(channel)
        self._usage = usage_pb2_grpc.UsageServiceStub(channel)
        self._service_tokens: ServiceAccountTokens | None = None
        if self.config.service_account is not None:
            request = service_token_request(self.config.service_account, self.config.service_account_scopes)
            self._service_tokens = ServiceAccountTokens(
                issue=lambda: self._call(
                    "IssueServiceToken", self._auth.IssueServiceToken, request, idempotent=True, auth=False
                ),
                clock=time.monotonic,
            )
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

    def _call(
        self,
        method: str,
        rpc: Callable[..., _R],
        request: object,
        *,
        idempotent: bool,
        timeout: float | None = None,
        auth: bool = True,
    ) -> _R:
        """Call `rpc` until it answers, fails for good, or the retry budget is spent."""
        state = RetryState(self.config.retry, idempotent, time.monotonic())
        renewed = False
        while True:
            state.attempts += 1
            deadline = state.attempt_timeout(timeout or self.config.default_timeout, time.monotonic())
            try:
                return rpc(request, timeout=deadline, metadata=self._metadata() if auth else ())
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                cause: BaseException = exc
            if (
                error.code == grpc.StatusCode.UNAUTHENTICATED
                and auth
                and self._service_tokens is not None
                and not renewed
            ):
                # The server refused a token it should take (a new signing key, clock skew): one
                # fresh token, at once, then the refusal is the answer.
                renewed = True
                self._service_tokens.invalidate()
                continue
            delay = state.next_delay(error, time.monotonic())
            if delay is None:
                raise error from cause
            log_retry(self.config, method, error, state.attempts, delay)
            self.sleep(delay)

    def _request_id(self, given: str | None) -> str:
        if given:
            return given
        return new_id("req") if self.config.generate_ids else ""

    def close(self) -> None:
        """Give back the channel (closed when no other client shares it)."""
        self._lease.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- accounts ---------------------------------------------------------------------------------

    def create_account(
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
        """Create an account, given as an Account or by its fields (display_name, email, currency_code...)."""
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
        account_reply: account_pb2.Account = self._call(
            "CreateAccount",
            self._accounts.CreateAccount,
            request,
            idempotent=bool(request.request_id),
            timeout=timeout,
        )
        return account_reply

    def get_account(
        self, account_id: str, *, show_deleted: bool = False, timeout: float | None = None
    ) -> account_pb2.Account:
        request = account_pb2.GetAccountRequest(id=account_id, show_deleted=show_deleted)
        account_reply: account_pb2.Account = self._call(
            "GetAccount", self._accounts.GetAccount, request, idempotent=False, timeout=timeout
        )
        return account_reply

    def list_accounts(
        self,
        *,
        filter: str = "",  # the request's own field name
        page_size: int = 0,
        show_deleted: bool = False,
        timeout: float | None = None,
    ) -> Iterator[account_pb2.Account]:
        """Every account matching `filter`, fetched a page at a time as the iterator goes."""
        token = ""
        while True:
            request = account_pb2.ListAccountsRequest(
                page_size=page_size, page_token=token, filter=filter, show_deleted=show_deleted
            )
            page = self._call(
                "ListAccounts", self._accounts.ListAccounts, request, idempotent=False, timeout=timeout
            )
            yield from page.accounts
            token = page.next_page_token
            if not token:
                return

    def update_account(
        self,
        account: account_pb2.Account,
        update_mask: Sequence[str],
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> account_pb2.Account:
        """Change the fields of `account` named in `update_mask` (`account.id` says which account)."""
        request = update_request(account, update_mask, self._request_id(request_id))
        account_reply: account_pb2.Account = self._call(
            "UpdateAccount",
            self._accounts.UpdateAccount,
            request,
            idempotent=bool(request.request_id),
            timeout=timeout,
        )
        return account_reply

    # --- usage ------------------------------------------------------------------------------------

    def record_usage(
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
        """Record one usage event; a retry or a resend of its event_id is a replay, not a second record."""
        event = UsageEvent(account_id, service, units, price_per_unit, event_time, properties, event_id)
        request = usage_request(event, generate_id=self.config.generate_ids)
        response: usage_pb2.CreateUsageRecordResponse = self._call(
            "CreateUsageRecord",
            self._usage.CreateUsageRecord,
            request,
            idempotent=bool(request.usage_record.event_id),
            timeout=timeout,
        )
        return usage_result(response)

    def record_usage_batch(
        self, events: Sequence[UsageEvent], *, timeout: float | None = None
    ) -> BatchResult:
        """Record up to 1000 events in one call; one result per event, refused ones included (no raise)."""
        requests = [usage_request(event, generate_id=self.config.generate_ids) for event in events]
        request = usage_pb2.BatchCreateUsageRecordsRequest(requests=requests)
        response: usage_pb2.BatchCreateUsageRecordsResponse = self._call(
            "BatchCreateUsageRecords",
            self._usage.BatchCreateUsageRecords,
            request,
            idempotent=all(item.usage_record.event_id for item in requests),
            timeout=timeout,
        )
        return batch_result(response)

    def usage_stream(self, *, producer_id: str | None = None, window: int = 1000) -> UsageStream:
        """A streaming producer (see UsageStream); close() it to wait for the last acknowledgement."""
        return UsageStream(
            self._usage.StreamUsageRecords,
            self._metadata,
            self.config,
            producer_id=producer_id,
            window=window,
        )
