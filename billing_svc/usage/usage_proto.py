"""Usage records and results to and from their protos; shared by every UsageService method."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from google.protobuf import timestamp_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from billing_svc.usage.domain import Outcome, RecordResult, UsageInput, UsageRecord
from core.status import to_status
from tally.billing.v1 import usage_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OUTCOME_TO_PROTO = {
    Outcome.STORED: usage_pb2.UsageRecordResult.OUTCOME_STORED,
    Outcome.REPLAY: usage_pb2.UsageRecordResult.OUTCOME_REPLAY,
    Outcome.FAILED: usage_pb2.UsageRecordResult.OUTCOME_FAILED,
}


def decimal_text(value: Decimal) -> str:
    """Plain notation, no exponent and no trailing zeros after the point: `3`, `0.25`, `-1.5`."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def input_from_proto(request: usage_pb2.CreateUsageRecordRequest, *, event_id: str = "") -> UsageInput:
    """The event as sent; nothing is checked here (the use cases check it, naming the field).
    `event_id` is the id of an event sent without one (a stream gives it one from its producer)."""
    record = request.usage_record
    return UsageInput(
        account_id=request.account_id,
        service=record.service,
        units=record.units_consumed.value,
        price_per_unit=record.price_per_unit.value,
        event_time=record.event_time.ToDatetime(tzinfo=UTC) if record.HasField("event_time") else None,
        # dict() of a map field walks it through Python's Mapping mixin: 8% of a stream's time
        # when every map was empty (py-spy), so an empty one is not walked.
        properties=dict(record.properties) if len(record.properties) else {},
        event_id=record.event_id or event_id,
        request_id=request.request_id,
    )


def record_to_proto(record: UsageRecord) -> usage_pb2.UsageRecord:
    message = usage_pb2.UsageRecord()
    _fill_record(message, record)
    return message


def _fill_record(message: usage_pb2.UsageRecord, record: UsageRecord) -> None:
    """Write `record` into an empty message in place (a batch's results are filled, not copied)."""
    message.id = record.id
    message.account_id = record.account_id
    message.service = record.service
    if record.properties:
        message.properties.update(record.properties)
    message.event_id = record.event_id
    message.meter_id = record.meter_id
    message.units_consumed.value = decimal_text(record.units)
    if record.price_per_unit is not None:
        message.price_per_unit.value = decimal_text(record.price_per_unit)
    _set_time(message.event_time, record.event_time)
    _set_time(message.create_time, record.create_time)


def _set_time(field: timestamp_pb2.Timestamp, instant: datetime) -> None:
    """Timestamp.FromDatetime's result, in a few field stores (a batch answers 1,000 records)."""
    since = instant - _EPOCH
    field.seconds = since.days * 86_400 + since.seconds
    field.nanos = since.microseconds * 1000


def add_result(
    results: RepeatedCompositeFieldContainer[usage_pb2.UsageRecordResult], result: RecordResult, index: int
) -> None:
    """Append `result` to a repeated UsageRecordResult field, built in place (1,000 a batch: a
    message made apart and appended is copied)."""
    message = results.add(
        outcome=_OUTCOME_TO_PROTO[result.outcome], index=index, event_id_assigned=result.event_id_assigned
    )
    if result.record is not None:
        _fill_record(message.usage_record, result.record)
    if result.error is not None:
        message.error.CopyFrom(to_status(result.error))
