"""gRPC face of the test clock service: decode the proto, call one use case, encode the reply.

No SQL and no business rules here; errors propagate as core.errors exceptions and are turned into
gRPC statuses by interceptors.errors.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2

from billing_svc.clocks import advance, use_cases
from billing_svc.clocks.domain import BillingWork, TestClock
from billing_svc.clocks.use_cases import TestClockDeps
from core.errors import InvalidArgument
from core.principal import Caller, caller_for
from tally.billing.v1 import test_clock_pb2, test_clock_pb2_grpc

_KIND_TO_PROTO = {
    "trial_end": test_clock_pb2.BillingWork.KIND_TRIAL_END,
    "renewal": test_clock_pb2.BillingWork.KIND_RENEWAL,
    "scheduled_change": test_clock_pb2.BillingWork.KIND_SCHEDULED_CHANGE,
    "cancellation": test_clock_pb2.BillingWork.KIND_CANCELLATION,
}
_SERVICE = test_clock_pb2.DESCRIPTOR.services_by_name["TestClockService"].full_name


def timestamp_from_proto(stamp: timestamp_pb2.Timestamp, present: bool, path: str) -> datetime | None:
    """The UTC time a Timestamp holds (to the microsecond), None when absent; INVALID_ARGUMENT naming
    `path` when it is out of the Timestamp range."""
    if not present:
        return None
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except ValueError:
        raise InvalidArgument.field(
            path, "is not a valid timestamp (years 1 to 9999, nanos 0 to 10^9-1)"
        ) from None


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def clock_to_proto(clock: TestClock) -> test_clock_pb2.TestClock:
    return test_clock_pb2.TestClock(
        id=clock.id,
        display_name=clock.display_name,
        frozen_time=_timestamp(clock.frozen_time),
        account_ids=list(clock.account_ids),
        create_time=_timestamp(clock.create_time),
        update_time=_timestamp(clock.update_time),
    )


def work_to_proto(work: BillingWork) -> test_clock_pb2.BillingWork:
    return test_clock_pb2.BillingWork(
        kind=_KIND_TO_PROTO[work.kind],
        due_time=_timestamp(work.due_time),
        account_id=work.account_id,
        subscription_id=work.subscription_id,
        pending_invoice_item_ids=list(work.item_ids),
    )


def _caller(method: str, request_id: str = "") -> Caller:
    return caller_for(f"/{_SERVICE}/{method}", request_id)


class TestClockServicer(test_clock_pb2_grpc.TestClockServiceServicer):
    __test__ = False  # not a pytest class, despite the name

    def __init__(self, deps: TestClockDeps):
        self._deps = deps

    async def CreateTestClock(
        self, request: test_clock_pb2.CreateTestClockRequest, context: grpc.aio.ServicerContext
    ) -> test_clock_pb2.TestClock:
        given = request.test_clock
        frozen_time = timestamp_from_proto(
            given.frozen_time, given.HasField("frozen_time"), "test_clock.frozen_time"
        )
        clock = await use_cases.create_test_clock(
            self._deps, _caller("CreateTestClock", request.request_id), given.display_name, frozen_time
        )
        return clock_to_proto(clock)

    async def GetTestClock(
        self, request: test_clock_pb2.GetTestClockRequest, context: grpc.aio.ServicerContext
    ) -> test_clock_pb2.TestClock:
        return clock_to_proto(await use_cases.get_test_clock(self._deps, _caller("GetTestClock"), request.id))

    async def ListTestClocks(
        self, request: test_clock_pb2.ListTestClocksRequest, context: grpc.aio.ServicerContext
    ) -> test_clock_pb2.ListTestClocksResponse:
        page = await use_cases.list_test_clocks(
            self._deps, _caller("ListTestClocks"), size=request.page_size, page_token=request.page_token
        )
        return test_clock_pb2.ListTestClocksResponse(
            test_clocks=[clock_to_proto(clock) for clock in page.clocks], next_page_token=page.next_page_token
        )

    async def DeleteTestClock(
        self, request: test_clock_pb2.DeleteTestClockRequest, context: grpc.aio.ServicerContext
    ) -> test_clock_pb2.DeleteTestClockResponse:
        deleted = await use_cases.delete_test_clock(
            self._deps, _caller("DeleteTestClock", request.request_id), request.id
        )
        return test_clock_pb2.DeleteTestClockResponse(account_ids=list(deleted.account_ids))

    async def AttachAccount(
        self, request: test_clock_pb2.AttachAccountRequest, context: grpc.aio.ServicerContext
    ) -> test_clock_pb2.TestClock:
        clock = await use_cases.attach_account(
            self._deps, _caller("AttachAccount", request.request_id), request.id, request.account_id
        )
        return clock_to_proto(clock)

    async def AdvanceTestClock(
        self, request: test_clock_pb2.AdvanceTestClockRequest, context: grpc.aio.ServicerContext
    ) -> test_clock_pb2.AdvanceTestClockResponse:
        target = timestamp_from_proto(request.frozen_time, request.HasField("frozen_time"), "frozen_time")
        result = await advance.advance_test_clock(
            self._deps, _caller("AdvanceTestClock", request.request_id), request.id, target
        )
        return test_clock_pb2.AdvanceTestClockResponse(
            test_clock=clock_to_proto(result.clock), work=[work_to_proto(item) for item in result.work]
        )
