"""gRPC face of UsageService's reads: ListUsageRecords and GetUsageSummary. Decode, call one use
case, encode; no SQL and no business rules. A mixin: UsageServicer composes it with the writes."""

from __future__ import annotations

import grpc

from billing_svc.catalog.meter_servicer import aggregation_to_proto
from billing_svc.clocks.servicer import timestamp_from_proto
from billing_svc.usage import read_use_cases as use_cases
from billing_svc.usage.read_use_cases import RecordFilter, UsageReadDeps
from billing_svc.usage.summary import MeterUsage, UsageCharge, UsageSummary
from billing_svc.usage.usage_proto import decimal_text, record_to_proto
from core.money_proto import money_to_proto
from core.principal import Caller, caller_for
from tally.billing.v1 import usage_pb2

_SERVICE = usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name


def _caller(method: str) -> Caller:
    return caller_for(f"/{_SERVICE}/{method}")


def _charge_to_proto(charge: UsageCharge) -> usage_pb2.UsageCharge:
    message = usage_pb2.UsageCharge(description=charge.description, recorded_prices=charge.recorded_prices)
    message.quantity.value = decimal_text(charge.quantity)
    message.amount.CopyFrom(money_to_proto(charge.amount))
    return message


def _meter_to_proto(meter: MeterUsage) -> usage_pb2.MeterUsage:
    message = usage_pb2.MeterUsage(
        meter_id=meter.meter_id,
        service=meter.service,
        aggregation=aggregation_to_proto(meter.aggregation),
        record_count=meter.record_count,
        charges=[_charge_to_proto(charge) for charge in meter.charges],
    )
    message.quantity.value = decimal_text(meter.quantity)
    return message


def summary_to_proto(summary: UsageSummary) -> usage_pb2.UsageSummary:
    message = usage_pb2.UsageSummary(
        account_id=summary.account_id,
        subscription_id=summary.subscription_id,
        meters=[_meter_to_proto(meter) for meter in summary.meters],
    )
    message.start_time.FromDatetime(summary.start_time)
    message.end_time.FromDatetime(summary.end_time)
    message.read_time.FromDatetime(summary.read_time)
    if summary.total is not None:
        message.total.CopyFrom(money_to_proto(summary.total))
    return message


class UsageReadMethods:
    """ListUsageRecords and GetUsageSummary, on `self._read_deps`."""

    _read_deps: UsageReadDeps

    async def ListUsageRecords(
        self, request: usage_pb2.ListUsageRecordsRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.ListUsageRecordsResponse:
        filters = RecordFilter(
            service=request.service,
            start=timestamp_from_proto(request.start_time, request.HasField("start_time"), "start_time"),
            end=timestamp_from_proto(request.end_time, request.HasField("end_time"), "end_time"),
            properties=tuple(request.properties),
        )
        page = await use_cases.list_usage_records(
            self._read_deps,
            _caller("ListUsageRecords"),
            request.account_id,
            filters=filters,
            size=request.page_size,
            page_token=request.page_token,
        )
        return usage_pb2.ListUsageRecordsResponse(
            usage_records=[record_to_proto(record) for record in page.records],
            next_page_token=page.next_page_token,
        )

    async def GetUsageSummary(
        self, request: usage_pb2.GetUsageSummaryRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.UsageSummary:
        summary = await use_cases.get_usage_summary(
            self._read_deps,
            _caller("GetUsageSummary"),
            request.account_id,
            start=timestamp_from_proto(request.start_time, request.HasField("start_time"), "start_time"),
            end=timestamp_from_proto(request.end_time, request.HasField("end_time"), "end_time"),
        )
        return summary_to_proto(summary)
