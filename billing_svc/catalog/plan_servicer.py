"""gRPC face of PlanService: decode the proto, call one use case, encode the reply.

No SQL and no business rules here; errors propagate as core.errors exceptions and are turned
into gRPC statuses by interceptors.errors. The wire forms are in plan_proto.py.
"""

from __future__ import annotations

import grpc

from billing_svc.catalog import plan_use_cases as use_cases
from billing_svc.catalog.plan_proto import plan_fields_from_proto, plan_to_proto
from billing_svc.catalog.plan_use_cases import PlanDeps
from core.principal import Caller, caller_for
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc

_SERVICE = plan_pb2.DESCRIPTOR.services_by_name["PlanService"].full_name


def _caller(method: str, request_id: str = "") -> Caller:
    return caller_for(f"/{_SERVICE}/{method}", request_id)


class PlanServicer(plan_pb2_grpc.PlanServiceServicer):
    def __init__(self, deps: PlanDeps):
        self._deps = deps

    async def CreatePlan(
        self, request: plan_pb2.CreatePlanRequest, context: grpc.aio.ServicerContext
    ) -> plan_pb2.Plan:
        plan = await use_cases.create_plan(
            self._deps, _caller("CreatePlan", request.request_id), plan_fields_from_proto(request.plan)
        )
        return plan_to_proto(plan)

    async def GetPlan(
        self, request: plan_pb2.GetPlanRequest, context: grpc.aio.ServicerContext
    ) -> plan_pb2.Plan:
        plan = await use_cases.get_plan(self._deps, _caller("GetPlan"), request.id, request.version)
        return plan_to_proto(plan)

    async def ListPlans(
        self, request: plan_pb2.ListPlansRequest, context: grpc.aio.ServicerContext
    ) -> plan_pb2.ListPlansResponse:
        page = await use_cases.list_plans(
            self._deps,
            _caller("ListPlans"),
            size=request.page_size,
            page_token=request.page_token,
            show_archived=request.show_archived,
        )
        return plan_pb2.ListPlansResponse(
            plans=[plan_to_proto(plan) for plan in page.plans], next_page_token=page.next_page_token
        )

    async def UpdatePlan(
        self, request: plan_pb2.UpdatePlanRequest, context: grpc.aio.ServicerContext
    ) -> plan_pb2.Plan:
        mask = list(request.update_mask.paths)
        plan = await use_cases.update_plan(
            self._deps,
            _caller("UpdatePlan", request.request_id),
            request.plan.id,
            plan_fields_from_proto(request.plan, mask),
            mask,
            etag=request.plan.etag,
        )
        return plan_to_proto(plan)

    async def ArchivePlan(
        self, request: plan_pb2.ArchivePlanRequest, context: grpc.aio.ServicerContext
    ) -> plan_pb2.Plan:
        plan = await use_cases.archive_plan(
            self._deps, _caller("ArchivePlan", request.request_id), request.id
        )
        return plan_to_proto(plan)
