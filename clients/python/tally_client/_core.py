"""What both clients share besides retries: ids, units, request building, results, token caching."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from google.protobuf import field_mask_pb2, timestamp_pb2
from google.type import decimal_pb2

from tally.account.v1 import account_pb2, auth_pb2
from tally.billing.v1 import usage_pb2
from tally_client._errors import TallyError, error_from_status

Units = int | str | Decimal


def new_id(prefix: str) -> str:
    """A fresh idempotency key: made once per logical call, sent unchanged on every retry."""
    return f"{prefix}_{uuid.uuid4().hex}"


def decimal_string(value: Units, name: str) -> str:
    """`value` as the decimal string the server takes; a float is refused, it is not exact."""
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise TypeError(f"{name} must be an int, a str or a Decimal, not {type(value).__name__}")
    try:
        number = Decimal(value) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ValueError(f"{name} is not a decimal number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
    return format(number, "f")


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    if value.tzinfo is None:
        raise ValueError("event_time must be timezone-aware (UTC is what the server stores)")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(dt.UTC))
    return stamp


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One usage event to record (an item of record_usage_batch or of a stream)."""

    account_id: str
    service: str
    units: Units
    price_per_unit: Units | None = None
    event_time: dt.datetime | None = None
    properties: Mapping[str, str] | None = None
    event_id: str | None = None


def usage_request(event: UsageEvent, *, generate_id: bool) -> usage_pb2.CreateUsageRecordRequest:
    """The CreateUsageRecordRequest of `event`; checks the units before anything is sent."""
    record = usage_pb2.UsageRecord(
        service=event.service,
        units_consumed=decimal_pb2.Decimal(value=decimal_string(event.units, "units")),
        properties=dict(event.properties or {}),
    )
    if event.price_per_unit is not None:
        record.price_per_unit.value = decimal_string(event.price_per_unit, "price_per_unit")
    if event.event_time is not None:
        record.event_time.CopyFrom(timestamp(event.event_time))
    event_id = event.event_id or (new_id("evt") if generate_id else "")
    record.event_id = event_id
    return usage_pb2.CreateUsageRecordRequest(account_id=event.account_id, usage_record=record)


@dataclass(frozen=True, slots=True)
class UsageResult:
    """What became of one recorded event: the stored record (the original on a replay)."""

    record: usage_pb2.UsageRecord
    replay: bool
    event_id_assigned: bool


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One event's outcome in a batch: `result` when stored or replayed, `error` when refused."""

    index: int
    result: UsageResult | None
    error: TallyError | None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The per-event outcomes of record_usage_batch, in the order the events were given."""

    items: tuple[BatchItem, ...]
    stored_count: int
    replay_count: int
    failed_count: int

    @property
    def failures(self) -> list[BatchItem]:
        """The refused events, each with its typed error (field paths relative to the event)."""
        return [item for item in self.items if item.error is not None]

    def raise_for_failures(self) -> None:
        """Raise the first refused event's error, if any."""
        for item in self.items:
            if item.error is not None:
                raise item.error


def usage_result(response: usage_pb2.CreateUsageRecordResponse) -> UsageResult:
    return UsageResult(response.usage_record, response.replay, response.event_id_assigned)


def batch_item(result: usage_pb2.UsageRecordResult) -> BatchItem:
    if result.outcome == usage_pb2.UsageRecordResult.OUTCOME_FAILED:
        return BatchItem(int(result.index), None, error_from_status(result.error))
    replay = result.outcome == usage_pb2.UsageRecordResult.OUTCOME_REPLAY
    return BatchItem(
        int(result.index), UsageResult(result.usage_record, replay, result.event_id_assigned), None
    )


def batch_result(response: usage_pb2.BatchCreateUsageRecordsResponse) -> BatchResult:
    return BatchResult(
        tuple(batch_item(result) for result in response.results),
        response.stored_count,
        response.replay_count,
        response.failed_count,
    )


def account_message(
    account: account_pb2.Account | None,
    *,
    display_name: str,
    email: str,
    currency_code: str,
    billing_time_zone: str,
    phone: str,
    metadata: Mapping[str, str] | None,
) -> account_pb2.Account:
    """`account`, or one built from the fields given one by one (not both)."""
    built = account_pb2.Account(
        display_name=display_name,
        email=email,
        currency_code=currency_code,
        billing_time_zone=billing_time_zone,
        phone=phone,
        metadata=dict(metadata or {}),
    )
    if account is None:
        return built
    if built != account_pb2.Account():
        raise TypeError("give an Account or its fields, not both")
    return account


def update_request(
    account: account_pb2.Account, update_mask: Sequence[str], request_id: str
) -> account_pb2.UpdateAccountRequest:
    if isinstance(update_mask, str):
        raise TypeError("update_mask is a sequence of field paths, such as ['display_name']")
    return account_pb2.UpdateAccountRequest(
        account=account, update_mask=field_mask_pb2.FieldMask(paths=list(update_mask)), request_id=request_id
    )


# --- service-account tokens --------------------------------------------------------------------------


@dataclass(slots=True)
class CachedToken:
    """An access token and when to renew it: at 80% of its lifetime, or a minute before expiry
    when that is sooner, so a call never leaves with a token about to lapse."""

    value: str
    renew_at: float

    @classmethod
    def issued(cls, response: auth_pb2.TokenResponse, now: float) -> CachedToken:
        lifetime = max(float(response.expires_in), 0.0)
        return cls(response.access_token, now + min(lifetime * 0.8, max(lifetime - 60.0, 0.0)))

    def fresh(self, now: float) -> bool:
        return now < self.renew_at


@dataclass(slots=True)
class ServiceAccountTokens:
    """The token of a service account, issued by `issue` and renewed by itself before expiry.

    `issue` is the IssueServiceToken call (made on a channel without credentials); `clock`
    is time.monotonic, or a fake in tests. Thread-safe: one renewal at a time.
    """

    issue: Callable[[], auth_pb2.TokenResponse]
    clock: Callable[[], float]
    _token: CachedToken | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or not self._token.fresh(self.clock()):
                response = self.issue()
                self._token = CachedToken.issued(response, self.clock())
            return self._token.value

    def invalidate(self) -> None:
        """Forget the token (the server refused it): the next call gets a new one."""
        with self._lock:
            self._token = None


def service_token_request(
    config_account: tuple[str, str], scopes: Sequence[str]
) -> auth_pb2.IssueServiceTokenRequest:
    client_id, client_secret = config_account
    return auth_pb2.IssueServiceTokenRequest(
        client_id=client_id, client_secret=client_secret, scopes=list(scopes)
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)
