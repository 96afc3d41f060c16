"""UsageService: the read methods (read_servicer.UsageReadMethods); the write methods join here."""

from __future__ import annotations

from billing_svc.usage.read_servicer import UsageReadMethods
from billing_svc.usage.read_use_cases import UsageReadDeps
from tally.billing.v1 import usage_pb2_grpc


class UsageServicer(UsageReadMethods, usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, read_deps: UsageReadDeps):
        self._read_deps = read_deps
