"""Every unary call of the clients, described once for both: its request, made once per logical
call and sent unchanged on every retry; whether retrying it is safe; how its reply becomes the
result. Client and AsyncClient only make the call (retries, deadlines, auth, awaiting), through
`blocking` and `awaiting` in their own modules, so both offer the same methods with the same
parameters by construction.

A describing function takes the client's Config first, then the method's own parameters (the
deadline, `timeout`, included) and returns a Unary, or for a paged list a function from a page
token to the Unary that fetches that page.
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from tally.account.v1 import account_pb2, account_pb2_grpc, auth_pb2, auth_pb2_grpc
from tally.billing.v1 import usage_pb2, usage_pb2_grpc
from tally_client._config import Config
from tally_client._core import (
    BatchResult,
    Units,
    UsageEvent,
    UsageResult,
    account_message,
    batch_result,
    new_id,
    service_token_request,
    update_request,
    usage_request,
    usage_result,
)
from tally_client._errors import TallyError, error_from_rpc
from tally_client._retry import RetryState

_R = TypeVar("_R")

Service = Literal["accounts", "auth", "usage"]


@dataclass(frozen=True, slots=True)
class Unary(Generic[_R]):
    """One logical unary call: `decode` turns the reply into what the client method returns."""

    service: Service
    method: str
    request: Message
    idempotent: bool
    decode: Callable[[Any], _R]
    timeout: float | None = None
    auth: bool = True


# A page of a list: its items and the token of the next page ("" on the last).
Page = tuple[Sequence[_R], str]


def _reply(reply: Any) -> Any:
    return reply


class Stubs:
    """What both clients hold: their Config and one stub per service (grpc's stubs take either
    kind of channel), and the method a Unary calls."""

    def __init__(self, config: Config, channel: Any) -> None:
        self.config = config
        self._accounts = account_pb2_grpc.AccountServiceStub(channel)
        self._auth = auth_pb2_grpc.AuthServiceStub(channel)
        self._usage = usage_pb2_grpc.UsageServiceStub(channel)

    def _rpc(self, call: Unary[Any]) -> Callable[..., Any]:
        stub = {"accounts": self._accounts, "auth": self._auth, "usage": self._usage}[call.service]
        return getattr(stub, call.method)  # type: ignore[no-any-return]


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


class Renewable(Protocol):
    def invalidate(self) -> None: ...


class Attempts:
    """The bookkeeping of one logical call's tries, for both clients' retry loops: each try's
    deadline and, after a failure, whether to try again and when."""

    def __init__(
        self, config: Config, call: Unary[Any], tokens: Renewable | None, clock: Callable[[], float]
    ) -> None:
        self._config = config
        self._call = call
        self._tokens = tokens
        self._clock = clock
        self._state = RetryState(config.retry, call.idempotent, clock())
        self._renewed = False

    def deadline(self) -> float | None:
        """The next try's deadline, in seconds: the call's timeout, or what the retry budget leaves."""
        self._state.attempts += 1
        timeout = self._call.timeout or self._config.default_timeout
        return self._state.attempt_timeout(timeout, self._clock())

    def wait_after(self, exc: grpc.RpcError) -> float | None:
        """How long to wait before the next try (None: try at once); raises the error that ends the call."""
        error = error_from_rpc(exc)
        if (
            error.code == grpc.StatusCode.UNAUTHENTICATED
            and self._call.auth
            and self._tokens is not None
            and not self._renewed
        ):
            # The server refused a token it should take (a new signing key, clock skew): one
            # fresh token, at once, then the refusal is the answer.
            self._renewed = True
            self._tokens.invalidate()
            return None
        delay = self._state.next_delay(error, self._clock())
        if delay is None:
            raise error from exc
        log_retry(self._config, self._call.method, error, self._state.attempts, delay)
        return delay


def method_signature(method: Callable[..., Any], describe: Callable[..., Any], owner: str) -> None:
    """Give a client method made from `describe` its name, docstring and parameters (for help())."""
    signature = inspect.signature(describe)
    own = list(signature.parameters.values())[1:]  # the Config is the client's own
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    method.__name__ = describe.__name__
    method.__qualname__ = f"{owner}.{describe.__name__}"
    method.__doc__ = describe.__doc__
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self, *own], return_annotation=inspect.Signature.empty
    )


def _request_id(config: Config, given: str | None) -> str:
    if given:
        return given
    return new_id("req") if config.generate_ids else ""


# --- auth -------------------------------------------------------------------------------------------


def issue_service_token(config: Config, /, service_account: tuple[str, str]) -> Unary[auth_pb2.TokenResponse]:
    """A token for the service account, asked for without one."""
    request = service_token_request(service_account, config.service_account_scopes)
    return Unary("auth", "IssueServiceToken", request, idempotent=True, decode=_reply, auth=False)


# --- accounts ---------------------------------------------------------------------------------------


def create_account(
    config: Config,
    /,
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
) -> Unary[account_pb2.Account]:
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
        request_id=_request_id(config, request_id),
    )
    idempotent = bool(request.request_id)
    return Unary("accounts", "CreateAccount", request, idempotent, _reply, timeout)


def get_account(
    config: Config, /, account_id: str, *, show_deleted: bool = False, timeout: float | None = None
) -> Unary[account_pb2.Account]:
    request = account_pb2.GetAccountRequest(id=account_id, show_deleted=show_deleted)
    return Unary("accounts", "GetAccount", request, False, _reply, timeout)


def _accounts_page(response: account_pb2.ListAccountsResponse) -> Page[account_pb2.Account]:
    return response.accounts, response.next_page_token


def list_accounts(
    config: Config,
    /,
    *,
    filter: str = "",  # the request's own field name
    page_size: int = 0,
    show_deleted: bool = False,
    timeout: float | None = None,
) -> Callable[[str], Unary[Page[account_pb2.Account]]]:
    """Every account matching `filter`, fetched a page at a time as the iterator goes."""

    def page(token: str) -> Unary[Page[account_pb2.Account]]:
        request = account_pb2.ListAccountsRequest(
            page_size=page_size, page_token=token, filter=filter, show_deleted=show_deleted
        )
        return Unary("accounts", "ListAccounts", request, False, _accounts_page, timeout)

    return page


def update_account(
    config: Config,
    /,
    account: account_pb2.Account,
    update_mask: Sequence[str],
    *,
    request_id: str | None = None,
    timeout: float | None = None,
) -> Unary[account_pb2.Account]:
    """Change the fields of `account` named in `update_mask` (`account.id` says which account)."""
    request = update_request(account, update_mask, _request_id(config, request_id))
    return Unary("accounts", "UpdateAccount", request, bool(request.request_id), _reply, timeout)


# --- usage ------------------------------------------------------------------------------------------


def record_usage(
    config: Config,
    /,
    account_id: str,
    service: str,
    units: Units,
    *,
    price_per_unit: Units | None = None,
    event_time: dt.datetime | None = None,
    properties: Mapping[str, str] | None = None,
    event_id: str | None = None,
    timeout: float | None = None,
) -> Unary[UsageResult]:
    """Record one usage event; a retry or a resend of its event_id is a replay, not a second record."""
    event = UsageEvent(account_id, service, units, price_per_unit, event_time, properties, event_id)
    request = usage_request(event, generate_id=config.generate_ids)
    idempotent = bool(request.usage_record.event_id)
    return Unary("usage", "CreateUsageRecord", request, idempotent, usage_result, timeout)


def record_usage_batch(
    config: Config, /, events: Sequence[UsageEvent], *, timeout: float | None = None
) -> Unary[BatchResult]:
    """Record up to 1000 events in one call; one result per event, refused ones included (no raise)."""
    requests = [usage_request(event, generate_id=config.generate_ids) for event in events]
    request = usage_pb2.BatchCreateUsageRecordsRequest(requests=requests)
    idempotent = all(item.usage_record.event_id for item in requests)
    return Unary("usage", "BatchCreateUsageRecords", request, idempotent, batch_result, timeout)
