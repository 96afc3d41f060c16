"""Access policies, read once at start from the `(tally.options.v1.access)` option of each RPC.

The table is the single answer to "who may call this method, and at what
rate-limit cost"; the auth and rate-limit interceptors both consult it.
An RPC without a policy is absent from the table and therefore refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.descriptor import ServiceDescriptor

from tally.options.v1 import access_pb2

# Infrastructure every client needs before it has a token: health checks and reflection.
INFRASTRUCTURE_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


@dataclass(frozen=True)
class MethodPolicy:
    public: bool = False
    scopes: tuple[str, ...] = ()
    customer_access: int = access_pb2.CUSTOMER_ACCESS_UNSPECIFIED
    customer_account_field: str = ""
    rate_group: str = "default"
    rate_cost: int = 1

    @property
    def customers_allowed(self) -> bool:
        return self.customer_access != access_pb2.CUSTOMER_ACCESS_UNSPECIFIED

    @property
    def own_account_only(self) -> bool:
        return self.customer_access == access_pb2.CUSTOMER_ACCESS_OWN_ACCOUNT


# Health checks and reflection: open to all and not rate limited (load balancers probe often,
# and grpcurl reflects before every call).
INFRASTRUCTURE = MethodPolicy(public=True, rate_cost=0)


class PolicyError(Exception):
    """A policy in the protos is inconsistent; raised at start so it never reaches production."""


def _from_option(method: str, option: access_pb2.AccessPolicy) -> MethodPolicy:
    if option.customer_access == access_pb2.CUSTOMER_ACCESS_OWN_ACCOUNT and not option.customer_account_field:
        raise PolicyError(f"{method}: CUSTOMER_ACCESS_OWN_ACCOUNT needs customer_account_field")
    if option.public and option.scopes:
        raise PolicyError(f"{method}: a public method cannot require scopes")
    return MethodPolicy(
        public=option.public,
        scopes=tuple(option.scopes),
        customer_access=option.customer_access,
        customer_account_field=option.customer_account_field,
        rate_group=option.rate_group or "default",
        rate_cost=option.rate_cost or 1,
    )


class PolicyTable:
    def __init__(self, policies: dict[str, MethodPolicy]):
        self._policies = policies

    @classmethod
    def from_services(cls, services: Iterable[ServiceDescriptor]) -> PolicyTable:
        policies: dict[str, MethodPolicy] = {}
        for service in services:
            for method in service.methods:
                name = f"/{service.full_name}/{method.name}"
                options = method.GetOptions()
                if options.HasExtension(access_pb2.access):
                    policies[name] = _from_option(name, options.Extensions[access_pb2.access])
        return cls(policies)

    def scopes(self) -> frozenset[str]:
        """Every scope some policy requires: the scopes there are to grant."""
        return frozenset(scope for policy in self._policies.values() for scope in policy.scopes)

    def get(self, full_method: str) -> MethodPolicy | None:
        policy = self._policies.get(full_method)
        if policy is None and full_method.lstrip("/").rpartition("/")[0] in INFRASTRUCTURE_SERVICES:
            return INFRASTRUCTURE
        return policy

    def rate(self, full_method: str) -> tuple[str, int]:
        """(rate-limit group, cost) of a method; unknown methods count against `default`."""
        policy = self.get(full_method)
        return (policy.rate_group, policy.rate_cost) if policy else ("default", 1)
