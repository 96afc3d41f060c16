"""UsageService: the recording methods (write_servicer.UsageWriteMethods: unary, batch, stream) and
the reading ones (read_servicer.UsageReadMethods: list, summary), each with its own dependencies."""

from __future__ import annotations

from billing_svc.usage.read_servicer import UsageReadMethods
from billing_svc.usage.read_use_cases import UsageReadDeps
from billing_svc.usage.use_cases import UsageDeps
from billing_svc.usage.write_servicer import UsageWriteMethods
from tally.billing.v1 import usage_pb2_grpc


class UsageServicer(UsageWriteMethods, UsageReadMethods, usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, deps: UsageDeps, read_deps: UsageReadDeps):
        UsageWriteMethods.__init__(self, deps)
        self._read_deps = read_deps
