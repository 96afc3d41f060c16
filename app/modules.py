"""The one list of service modules. Adding a service is one line here plus its own package.

Reflection, health, gateway routes, access policies, OpenAPI, Alembic's metadata and the
test suite's table cleanup all derive from `MODULES`; a test checks that pyproject.toml's
type-checked packages and import-linter contracts name every module's package.
"""

from __future__ import annotations

from typing import Any, cast

from google.protobuf.descriptor import ServiceDescriptor
from sqlalchemy import Table

from account_svc.module import MODULE as ACCOUNTS
from billing_svc.module import MODULE as BILLING
from core.audit import AuditEventRow
from core.db import Base
from core.idempotency import IdempotencyKeyRow
from core.modules import ServiceModule
from core.outbox import OutboxEventRow

MODULES: tuple[ServiceModule[Any], ...] = (ACCOUNTS, BILLING)

# Tables of the platform itself (core), shared by every module.
PLATFORM_MODELS: tuple[type[Base], ...] = (IdempotencyKeyRow, AuditEventRow, OutboxEventRow)

SERVICES: tuple[ServiceDescriptor, ...] = tuple(service for module in MODULES for service in module.services)


def table_names() -> tuple[str, ...]:
    """Every table Tally owns, platform first (the migrations' metadata and test cleanup use it)."""
    names = [cast(Table, model.__table__).name for model in PLATFORM_MODELS]
    for module in MODULES:
        names.extend(module.table_names())
    return tuple(names)
