"""UsageService: the recording methods (write_servicer.py); the reading ones join as another mixin."""

from __future__ import annotations

from billing_svc.usage.write_servicer import UsageWriteMethods
from tally.billing.v1 import usage_pb2_grpc


class UsageServicer(UsageWriteMethods, usage_pb2_grpc.UsageServiceServicer):
    pass
