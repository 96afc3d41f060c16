"""gRPC face of UsageService's recording methods: decode the proto, call one use case, encode.

No SQL and no business rules here; a refused single event propagates as a core.errors exception
and is turned into a gRPC status by interceptors.errors; a batch answers every event itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence

import grpc

from billing_svc.usage import use_cases
from billing_svc.usage.domain import Outcome, RecordResult, UsageInput
from billing_svc.usage.stream import UsageStream
from billing_svc.usage.usage_proto import add_result, input_from_proto, record_to_proto
from billing_svc.usage.use_cases import UsageDeps
from core.principal import Caller, caller_for
from tally.billing.v1 import usage_pb2

_SERVICE = usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name


def usage_caller(method: str) -> Caller:
    return caller_for(f"/{_SERVICE}/{method}")


class UsageWriteMethods:
    """CreateUsageRecord, BatchCreateUsageRecords and StreamUsageRecords; mixed into
    billing_svc.usage.servicer."""

    def __init__(self, deps: UsageDeps):
        self._deps = deps

    async def CreateUsageRecord(
        self, request: usage_pb2.CreateUsageRecordRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.CreateUsageRecordResponse:
        result = await use_cases.record_usage(
            self._deps, usage_caller("CreateUsageRecord"), input_from_proto(request)
        )
        response = usage_pb2.CreateUsageRecordResponse(
            replay=result.outcome is Outcome.REPLAY, event_id_assigned=result.event_id_assigned
        )
        if result.record is not None:
            response.usage_record.CopyFrom(record_to_proto(result.record))
        return response

    async def BatchCreateUsageRecords(
        self, request: usage_pb2.BatchCreateUsageRecordsRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.BatchCreateUsageRecordsResponse:
        results = await use_cases.record_usage_batch(
            self._deps,
            usage_caller("BatchCreateUsageRecords"),
            [input_from_proto(item) for item in request.requests],
        )
        outcomes = [result.outcome for result in results]
        response = usage_pb2.BatchCreateUsageRecordsResponse(
            stored_count=outcomes.count(Outcome.STORED),
            replay_count=outcomes.count(Outcome.REPLAY),
            failed_count=outcomes.count(Outcome.FAILED),
        )
        for index, result in enumerate(results):
            add_result(response.results, result, index)
        return response

    async def StreamUsageRecords(
        self,
        request_iterator: AsyncIterable[usage_pb2.StreamUsageRecordsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[usage_pb2.StreamUsageRecordsResponse]:
        caller = usage_caller("StreamUsageRecords")

        async def record(items: Sequence[UsageInput]) -> list[RecordResult]:
            return await use_cases.record_usage_batch(self._deps, caller, items)

        async for response in UsageStream(record).run(request_iterator):
            yield response
