"""gRPC face of MeterService: decode the proto, call one use case, encode the reply.

No SQL and no business rules here; errors propagate as core.errors exceptions and are turned
into gRPC statuses by interceptors.errors.
"""

from __future__ import annotations

import grpc

from billing_svc.catalog import meter_use_cases as use_cases
from billing_svc.catalog.domain import METER_UPDATABLE, Aggregation, Meter, MeterFields
from billing_svc.catalog.meter_use_cases import MeterDeps
from core.errors import InvalidArgument
from core.principal import Caller, caller_for
from tally.billing.v1 import meter_pb2, meter_pb2_grpc

_AGGREGATION_TO_PROTO = {
    Aggregation.COUNT: meter_pb2.Meter.AGGREGATION_COUNT,
    Aggregation.SUM: meter_pb2.Meter.AGGREGATION_SUM,
    Aggregation.MAX: meter_pb2.Meter.AGGREGATION_MAX,
    Aggregation.UNIQUE_COUNT: meter_pb2.Meter.AGGREGATION_UNIQUE_COUNT,
    Aggregation.LATEST: meter_pb2.Meter.AGGREGATION_LATEST,
    Aggregation.WEIGHTED_SUM: meter_pb2.Meter.AGGREGATION_WEIGHTED_SUM,
}
_AGGREGATION_FROM_PROTO = {value: key for key, value in _AGGREGATION_TO_PROTO.items()}


def aggregation_to_proto(value: Aggregation) -> meter_pb2.Meter.Aggregation.ValueType:
    return _AGGREGATION_TO_PROTO[value]


def _aggregation_from_proto(value: int) -> Aggregation | None:
    if value == meter_pb2.Meter.AGGREGATION_UNSPECIFIED:
        return None
    if value not in _AGGREGATION_FROM_PROTO:
        raise InvalidArgument.field("meter.aggregation", f"unknown aggregation value {value}")
    return _AGGREGATION_FROM_PROTO[value]  # type: ignore[index]


def fields_from_proto(message: meter_pb2.Meter) -> MeterFields:
    return MeterFields(
        code=message.code,
        display_name=message.display_name,
        unit_label=message.unit_label,
        aggregation=_aggregation_from_proto(message.aggregation),
        property=message.property,
    )


def populated_fields(message: meter_pb2.Meter) -> list[str]:
    """The implied update mask when none is given: every updatable field with a non-default value."""
    present = {descriptor.name for descriptor, _ in message.ListFields()}
    return [name for name in METER_UPDATABLE if name in present]


def meter_to_proto(meter: Meter) -> meter_pb2.Meter:
    message = meter_pb2.Meter(
        id=meter.id,
        code=meter.code,
        display_name=meter.display_name,
        unit_label=meter.unit_label,
        aggregation=_AGGREGATION_TO_PROTO[meter.aggregation],
        property=meter.property,
        etag=meter.etag,
    )
    message.create_time.FromDatetime(meter.create_time)
    message.update_time.FromDatetime(meter.update_time)
    if meter.archive_time is not None:
        message.archive_time.FromDatetime(meter.archive_time)
    return message


_SERVICE = meter_pb2.DESCRIPTOR.services_by_name["MeterService"].full_name


def _caller(method: str, request_id: str = "") -> Caller:
    return caller_for(f"/{_SERVICE}/{method}", request_id)


class MeterServicer(meter_pb2_grpc.MeterServiceServicer):
    def __init__(self, deps: MeterDeps):
        self._deps = deps

    async def CreateMeter(
        self, request: meter_pb2.CreateMeterRequest, context: grpc.aio.ServicerContext
    ) -> meter_pb2.Meter:
        meter = await use_cases.create_meter(
            self._deps, _caller("CreateMeter", request.request_id), fields_from_proto(request.meter)
        )
        return meter_to_proto(meter)

    async def GetMeter(
        self, request: meter_pb2.GetMeterRequest, context: grpc.aio.ServicerContext
    ) -> meter_pb2.Meter:
        return meter_to_proto(await use_cases.get_meter(self._deps, _caller("GetMeter"), request.id))

    async def ListMeters(
        self, request: meter_pb2.ListMetersRequest, context: grpc.aio.ServicerContext
    ) -> meter_pb2.ListMetersResponse:
        page = await use_cases.list_meters(
            self._deps,
            _caller("ListMeters"),
            size=request.page_size,
            page_token=request.page_token,
            show_archived=request.show_archived,
        )
        return meter_pb2.ListMetersResponse(
            meters=[meter_to_proto(meter) for meter in page.meters], next_page_token=page.next_page_token
        )

    async def UpdateMeter(
        self, request: meter_pb2.UpdateMeterRequest, context: grpc.aio.ServicerContext
    ) -> meter_pb2.Meter:
        mask = list(request.update_mask.paths) if request.HasField("update_mask") else []
        if not mask:
            mask = populated_fields(request.meter)
        meter = await use_cases.update_meter(
            self._deps,
            _caller("UpdateMeter", request.request_id),
            request.meter.id,
            fields_from_proto(request.meter),
            mask,
            etag=request.meter.etag,
        )
        return meter_to_proto(meter)

    async def ArchiveMeter(
        self, request: meter_pb2.ArchiveMeterRequest, context: grpc.aio.ServicerContext
    ) -> meter_pb2.Meter:
        meter = await use_cases.archive_meter(
            self._deps, _caller("ArchiveMeter", request.request_id), request.id
        )
        return meter_to_proto(meter)
