"""billing_svc.usage.usage_proto: records to protos, with the hand-rolled timestamps agreeing with
protobuf's own Timestamp.FromDatetime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from billing_svc.usage.usage_proto import _set_time, decimal_text

INSTANTS = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))


@given(INSTANTS)
def test_set_time_is_what_from_datetime_writes(instant: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(instant)
    written = timestamp_pb2.Timestamp()
    _set_time(written, instant)
    assert written == expected


def test_an_instant_in_another_offset_is_written_as_the_same_instant() -> None:
    in_berlin_summer = datetime(2027, 7, 1, 9, tzinfo=timezone(timedelta(hours=2)))
    first, second = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    _set_time(first, in_berlin_summer)
    _set_time(second, datetime(2027, 7, 1, 7, tzinfo=UTC))
    assert first == second


def test_decimal_text_is_plain_without_trailing_zeros() -> None:
    assert [decimal_text(Decimal(t)) for t in ("2.500", "3", "1E+2", "-0.0", "0.000000000001")] == [
        "2.5",
        "3",
        "100",
        "0",
        "0.000000000001",
    ]
