"""What a service package tells the composition root about itself, and what it gets in return.

Each domain package exposes one `ServiceModule`: the gRPC services it serves (their
descriptors), its table models, how to build its dependencies from the shared
`Platform`, and how to register its servicers on a server. `app.modules.MODULES`
lists them, and everything that used to be kept by hand in several places derives
from that list: reflection, health, gateway routes, access policies, OpenAPI,
Alembic's metadata, the test suite's table cleanup and the type-checked packages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from google.protobuf.descriptor import ServiceDescriptor
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.accounts import AccountDirectoryFactory
from core.cache import NoCache, ReadCache
from core.clock import Clock
from core.db import Base
from core.outbox import CommitSignal
from core.pagination import PageTokens
from core.sealing import ServerKey
from core.settings import Settings

if TYPE_CHECKING:
    import grpc

D = TypeVar("D")


@dataclass(frozen=True)
class Platform:
    """The shared parts every service module builds on; made once by the composition root."""

    settings: Settings
    engine: AsyncEngine
    writers: async_sessionmaker[AsyncSession]  # one transaction per unit of work
    readers: async_sessionmaker[AsyncSession]  # single-statement reads, no BEGIN/COMMIT
    snapshots: async_sessionmaker[AsyncSession]  # several reads that must agree: one snapshot
    wall_clock: Clock  # infrastructure time: tokens, sessions, retention, rate limits
    page_tokens: PageTokens
    server_key: ServerKey  # seals values kept at rest (a replayable secret), per purpose
    # Every scope an access policy of a served RPC names: grants of other scopes are refused.
    known_scopes: frozenset[str]
    # Billing terms of accounts (currency, time zone, liveness), read on a module's own session.
    account_directory: AccountDirectoryFactory
    # Replacements for parts a module would otherwise make itself (tests pass cheap password
    # hashing this way), looked up by name; modules document the names they read.
    overrides: Mapping[str, object] = field(default_factory=dict)
    # The read-through cache of hot reads (core/cache.py); NoCache when caching is off.
    cache: ReadCache = field(default_factory=NoCache)
    # Told when a unit of work on `writers` that wrote outbox events commits (core/outbox.py).
    outbox_commits: CommitSignal = field(default_factory=CommitSignal)


@dataclass(frozen=True)
class ServiceModule(Generic[D]):
    name: str  # short and stable: "accounts", "billing"
    package: str  # the top-level Python package that holds it
    services: tuple[ServiceDescriptor, ...]
    models: tuple[type[Base], ...]
    build: Callable[[Platform], D]
    register: Callable[[grpc.aio.Server, D], None]

    def table_names(self) -> tuple[str, ...]:
        return tuple(cast(Table, model.__table__).name for model in self.models)


def describe(modules: tuple[ServiceModule[Any], ...]) -> Mapping[str, tuple[str, ...]]:
    """{module name: full service names}; for startup logs and tests."""
    return {module.name: tuple(s.full_name for s in module.services) for module in modules}
