"""Hostile input over gRPC and REST, for every method of every served service, on SQLite and
PostgreSQL at once (tests/hostile/cases.py makes the cases from the descriptors).

Each case goes to both backends, over gRPC and, where the method has an http rule, over REST, as
an admin (so authorization is not what refuses it), with rate limits out of the way. It asserts:

* no INTERNAL, UNKNOWN or DATA_LOSS, and no HTTP 5xx; nor RESOURCE_EXHAUSTED / 429, which with
  the limits raised can only mean an answer too large for its trailers (and invites a retry);
* the same answer (gRPC code, HTTP status) from both backends;
* nothing stored when the call is refused (row counts of every table unchanged);
* no ERROR record and no traceback in the log for a client's mistake;
* both servers healthy afterwards (gRPC health SERVING, a plain GetAccount answers).

A method added to app.modules.SERVICES is covered by existing; the values that make the rest of
a request valid come from `Samples`, by field name. TALLY_TEST_HOSTILE_ANSWERS=FILE appends every
answer (case, transport, answer per backend) to FILE as JSON lines.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr
from sqlalchemy import text
from yarl import URL

from app.modules import SERVICES, table_names
from app.server import App, build
from core.settings import RateLimit, Settings
from gateway.routes import Route
from tally.account.v1 import account_pb2, account_pb2_grpc, auth_pb2, auth_pb2_grpc
from tally.billing.v1 import meter_pb2, meter_pb2_grpc, test_clock_pb2, test_clock_pb2_grpc
from tally.subscription.v1 import plan_pb2, plan_pb2_grpc, subscription_pb2, subscription_pb2_grpc
from tests.hostile.cases import (
    Case,
    baseline_message,
    cases_for,
    grpc_payload,
    is_id,
    methods_of,
    rest_request,
)
from tests.support import (
    JWT_SECRET,
    TEST_SECRET,
    cheap_passwords,
    emptying_statement,
    mint,
    truncate_statement,
)

METHODS = methods_of(SERVICES)
PASSWORD = "correct horse battery staple"
NO_LIMITS = {group: RateLimit(rate=1_000_000, burst=1_000_000) for group in ("default", "auth")}
FORBIDDEN_CODES = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS", "RESOURCE_EXHAUSTED"})
CALL_TIMEOUT = 30.0
# A watch (server streaming only, WatchEvents) runs until its deadline and ends OK just before it:
# a short one, so that an accepted case is over at once. Its input is checked before it starts.
WATCH_TIMEOUT = 0.5
ANSWERS_FILE = os.environ.get("TALLY_TEST_HOSTILE_ANSWERS")
_serial = itertools.count()


@dataclass
class Seeds:
    """Resources that exist, for the fields of a request that name one (ids, tokens, secrets)."""

    account_id: str = ""
    user_id: str = ""
    user_email: str = ""
    refresh_token: str = ""
    service_account_id: str = ""
    client_secret: str = ""
    meter_id: str = ""
    plan_id: str = ""
    subscription_id: str = ""
    test_clock_id: str = ""


@dataclass
class Backend:
    name: str
    app: App
    channel: grpc.aio.Channel
    http: aiohttp.ClientSession
    headers: dict[str, str]
    health_account_id: str = ""
    seeds: Seeds = field(default_factory=Seeds)

    async def close(self) -> None:
        await self.http.close()
        await self.channel.close()
        await self.app.stop(grace=0)


async def start(name: str, settings: Settings) -> Backend:
    app = await build(settings.model_copy(update={"rate_limits": NO_LIMITS}), passwords=cheap_passwords())
    if not settings.is_sqlite:
        # Emptied before the app starts: its jobs (usage upkeep, the purger) would otherwise hold
        # locks the TRUNCATE waits for, while waiting for the TRUNCATE's (a deadlock).
        async with app.engine.begin() as connection:
            result = await connection.execute(text(emptying_statement(table_names())))
            statement = truncate_statement([row.name for row in result])
            if statement is not None:
                await connection.execute(text(statement))
    await app.start()
    token = mint(app)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    http = aiohttp.ClientSession()
    backend = Backend(name, app, channel, http, {"authorization": f"Bearer {token}"})
    backend.health_account_id = await create_account(backend)
    return backend


async def create_account(backend: Backend) -> str:
    accounts = account_pb2_grpc.AccountServiceStub(backend.channel)
    n = next(_serial)
    account = account_pb2.Account(
        display_name=f"Seed {n}", email=f"seed{n}@example.test", currency_code="USD"
    )
    created = await accounts.CreateAccount(
        account_pb2.CreateAccountRequest(account=account), metadata=tuple(backend.headers.items())
    )
    return str(created.id)


async def create_catalog(backend: Backend) -> tuple[str, str]:
    """A meter and a plan (the catalog's Get/Update/Archive cases name them)."""
    metadata = tuple(backend.headers.items())
    n = next(_serial)
    meter = await meter_pb2_grpc.MeterServiceStub(backend.channel).CreateMeter(
        meter_pb2.CreateMeterRequest(
            meter=meter_pb2.Meter(
                code=f"seed_{n}", display_name="Seed", aggregation=meter_pb2.Meter.AGGREGATION_SUM
            )
        ),
        metadata=metadata,
    )
    interval = plan_pb2.BillingInterval(unit=plan_pb2.BillingInterval.UNIT_MONTH)
    plan = await plan_pb2_grpc.PlanServiceStub(backend.channel).CreatePlan(
        plan_pb2.CreatePlanRequest(
            plan=plan_pb2.Plan(
                code=f"seed-{n}", display_name="Seed", currency_code="USD", billing_interval=interval
            )
        ),
        metadata=metadata,
    )
    return meter.id, plan.id


async def create_billing(backend: Backend, account_id: str, plan_id: str) -> tuple[str, str]:
    """A subscription of the seeded account to the seeded plan, and a test clock (the
    SubscriptionService and TestClockService cases name them)."""
    metadata = tuple(backend.headers.items())
    subscription = await subscription_pb2_grpc.SubscriptionServiceStub(backend.channel).CreateSubscription(
        subscription_pb2.CreateSubscriptionRequest(
            subscription=subscription_pb2.Subscription(account_id=account_id, plan_id=plan_id)
        ),
        metadata=metadata,
    )
    frozen = test_clock_pb2.TestClock(display_name="Seed")
    frozen.frozen_time.FromJsonString("2030-01-01T00:00:00Z")
    clock = await test_clock_pb2_grpc.TestClockServiceStub(backend.channel).CreateTestClock(
        test_clock_pb2.CreateTestClockRequest(test_clock=frozen), metadata=metadata
    )
    return subscription.id, clock.id


async def seed(backend: Backend) -> Seeds:
    """Fresh resources for one method's cases (its baselines may delete or revoke them)."""
    metadata = tuple(backend.headers.items())
    auth = auth_pb2_grpc.AuthServiceStub(backend.channel)
    email = f"user{next(_serial)}@example.test"
    user = await auth.CreateUser(
        auth_pb2.CreateUserRequest(
            user=auth_pb2.User(email=email, role=auth_pb2.User.ROLE_ADMIN), password=PASSWORD
        ),
        metadata=metadata,
    )
    tokens = await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD), metadata=metadata)
    service = await auth.CreateServiceAccount(
        auth_pb2.CreateServiceAccountRequest(
            service_account=auth_pb2.ServiceAccount(display_name="Seed", scopes=["accounts:read"])
        ),
        metadata=metadata,
    )
    meter, plan = await create_catalog(backend)
    account = await create_account(backend)
    subscription, clock = await create_billing(backend, account, plan)
    return Seeds(
        meter_id=meter,
        plan_id=plan,
        subscription_id=subscription,
        test_clock_id=clock,
        account_id=account,
        user_id=user.id,
        user_email=email,
        refresh_token=tokens.refresh_token,
        service_account_id=service.service_account.id,
        client_secret=service.client_secret,
    )


# Values of optional fields, set wherever their message is, so that a hostile value is the only fault.
KNOWN = {"currency_code": "USD", "region_code": "US", "language_code": "en", "phone": "+14155550100"}
# A customer user names an account: its account_id then reaches the database.
ENUM_SAMPLES = {"role": "ROLE_CUSTOMER"}


class Samples:
    """Valid values by field name and type, so the hostile value is the request's only fault.
    A top-level field names something that exists (a seed); one inside a resource makes it new."""

    def __init__(self, seeds: Seeds) -> None:
        self.seeds = seeds

    def __call__(self, field: FieldDescriptor, method: MethodDescriptor) -> Any:
        top_level = field.containing_type is method.input_type
        if field.enum_type is not None:
            named = ENUM_SAMPLES.get(field.name)
            if named is not None:
                return field.enum_type.values_by_name[named].number
            return next(value.number for value in field.enum_type.values if value.number != 0)
        if field.type == FieldDescriptor.TYPE_BOOL:
            return True
        if field.type != FieldDescriptor.TYPE_STRING:
            return 1
        name, n = field.name, next(_serial)
        known = {
            "code": f"sample_{n}",  # meter, plan and feature codes: a lower-case letter first
            "email": self.seeds.user_email if top_level else f"new{n}@example.test",
            "password": PASSWORD,
            "client_secret": self.seeds.client_secret,
            "client_id": self.seeds.service_account_id,
            "refresh_token": self.seeds.refresh_token,
            "scopes": ["accounts:read"],
            **KNOWN,
        }
        if name in known:
            return known[name]
        if is_id(field):
            return self._id(field, method)
        return f"Sample {n}"

    def knows(self, field: FieldDescriptor) -> bool:
        return field.name in KNOWN or field.name == "account_id"

    def _id(self, field: FieldDescriptor, method: MethodDescriptor) -> str:
        service = method.containing_service.name
        if field.name == "account_id":
            return self.seeds.account_id
        if field.name == "meter_id" or service == "MeterService":
            return self.seeds.meter_id
        if service == "PlanService" or field.name == "plan_id":
            return self.seeds.plan_id
        if service == "SubscriptionService":
            return self.seeds.subscription_id
        if service == "TestClockService":
            return self.seeds.test_clock_id
        if "ServiceAccount" in method.name:
            return self.seeds.service_account_id
        if "User" in method.name:
            return self.seeds.user_id
        return self.seeds.account_id


@pytest.fixture(scope="module")
async def backends(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[list[Backend]]:
    common: dict[str, Any] = {
        "secret_key": TEST_SECRET,
        "jwt_hs256_secret": JWT_SECRET,
        "grpc_addr": "127.0.0.1:0",
        "http_addr": "127.0.0.1:0",
        # Configured, so that Stripe's webhooks reach their signature check (400) rather than
        # answering 503 WEBHOOK_NOT_CONFIGURED to every case.
        "stripe_webhook_secret": SecretStr("whsec_hostile"),
    }
    started: list[Backend] = []
    try:
        started.append(
            await start("sqlite", Settings(data_dir=Path(tmp_path_factory.mktemp("hostile")), **common))
        )
        pg = Settings(
            data_dir=Path(tmp_path_factory.mktemp("hostile_pg")),
            database_url=postgres_url,
            migrate_on_start=True,
            **common,
        )
        started.append(await start("postgres", pg))
        yield started
    finally:
        for backend in started:
            await backend.close()


# --- calling -------------------------------------------------------------------------------------


async def call_grpc(backend: Backend, method: MethodDescriptor, payload: bytes) -> str:
    """The gRPC code name of one call with an encoded (maybe corrupt) request."""
    name = f"/{method.containing_service.full_name}/{method.name}"
    metadata = tuple(backend.headers.items())
    channel = backend.channel
    try:
        if method.client_streaming:
            make = channel.stream_stream if method.server_streaming else channel.stream_unary
            call = make(name)(iter([payload]), metadata=metadata, timeout=CALL_TIMEOUT)
        else:
            make = channel.unary_stream if method.server_streaming else channel.unary_unary
            timeout = WATCH_TIMEOUT if method.server_streaming else CALL_TIMEOUT
            call = make(name)(payload, metadata=metadata, timeout=timeout)
        if method.server_streaming:
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)
    return "OK"


async def call_rest(backend: Backend, case: Case, route: Route, base: Any) -> int | None:
    request = rest_request(case, route, base)
    if request is None:
        return None
    headers = {**backend.headers}
    if route.server_streaming and not route.client_streaming:
        headers["Grpc-Timeout"] = f"{int(WATCH_TIMEOUT * 1000)}m"
    if request.body is not None:
        headers["Content-Type"] = "application/json"
    url = URL(f"http://127.0.0.1:{backend.app.http_port}{request.path}", encoded=True)
    async with backend.http.request(request.method, url, data=request.body, headers=headers) as response:
        await response.read()
        return response.status


async def row_counts(backend: Backend) -> tuple[int, ...]:
    # The table names are Tally's own (app.modules), not input.
    counts = ", ".join(f"(SELECT count(*) FROM {table})" for table in table_names())  # noqa: S608
    async with backend.app.engine.connect() as connection:
        return tuple((await connection.execute(text(f"SELECT {counts}"))).one())


def log_problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{record.name} {record.levelname}: {record.getMessage()[:120]}"
        + (f" ({record.exc_info[0].__name__})" if record.exc_info and record.exc_info[0] else "")
        for record in caplog.records
        if record.levelno >= logging.ERROR or record.exc_info
    ]


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    answers: dict[tuple[str, str], dict[str, object]] = field(default_factory=dict)
    sent: int = 0

    def fail(self, backend: Backend, transport: str, case: Case, problem: str) -> None:
        self.failures.append(f"{backend.name} {transport} {case.id}: {problem}")


async def run_case(
    backend: Backend, case: Case, routes: list[Route], report: Report, caplog: pytest.LogCaptureFixture
) -> None:
    samples = Samples(backend.seeds)
    bound = frozenset(name for route in routes for name in route.path_fields)
    attempts: list[tuple[str, Route | None]] = [("grpc", None)]
    attempts += [(f"rest {route.http_method} {route.path}", route) for route in routes]
    for transport, route in attempts:
        # A baseline per call: its new emails and names must not clash with the call before.
        base = baseline_message(case.method, samples, bound, case.slot)
        before = await row_counts(backend)
        caplog.clear()
        if route is None:
            payload = grpc_payload(case, base)
            if payload is None:
                continue
            answer: object = await call_grpc(backend, case.method, payload)
            refused = answer != "OK"
            bad = answer in FORBIDDEN_CODES
        else:
            answer = await call_rest(backend, case, route, base)
            if answer is None:
                continue
            assert isinstance(answer, int)
            refused = answer >= 400
            bad = answer >= 500 or answer == 429
        report.sent += 1
        report.answers.setdefault((case.id, transport), {})[backend.name] = answer
        if bad:
            report.fail(backend, transport, case, f"answered {answer}")
        if refused and await row_counts(backend) != before:
            report.fail(backend, transport, case, f"refused ({answer}) but rows changed")
        for problem in log_problems(caplog):
            report.fail(backend, transport, case, f"logged {problem}")


async def assert_healthy(backend: Backend) -> None:
    health = health_pb2_grpc.HealthStub(backend.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING, backend.name
    accounts = account_pb2_grpc.AccountServiceStub(backend.channel)
    account = await accounts.GetAccount(
        account_pb2.GetAccountRequest(id=backend.health_account_id),
        metadata=tuple(backend.headers.items()),
        timeout=5,
    )
    assert account.id == backend.health_account_id
    async with backend.http.get(f"http://127.0.0.1:{backend.app.http_port}/healthz") as response:
        assert response.status == 200, backend.name


def write_answers(path: Path, report: Report) -> None:
    with path.open("a") as out:
        for (case_id, transport), answers in report.answers.items():
            out.write(json.dumps({"case": case_id, "transport": transport, **answers}) + "\n")


def summary(report: Report) -> str:
    kinds = Counter(line.split(": ", 1)[0].rsplit(":", 1)[-1] for line in report.failures)
    head = "\n".join(report.failures[:60])
    more = f"\n... and {len(report.failures) - 60} more" if len(report.failures) > 60 else ""
    return f"{len(report.failures)} failures of {report.sent} calls, by value: {dict(kinds)}\n{head}{more}"


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("method", "routes"), METHODS, ids=[f"{m.containing_service.name}.{m.name}" for m, _ in METHODS]
)
async def test_hostile_input_is_refused_cleanly_on_both_backends(
    backends: list[Backend], method: MethodDescriptor, routes: list[Route], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for backend in backends:
        backend.seeds = await seed(backend)
    report = Report()
    for case in cases_for(method, routes):
        for backend in backends:
            await run_case(backend, case, routes, report, caplog)
    for (case_id, transport), answers in report.answers.items():
        if len(set(answers.values())) > 1:
            report.failures.append(f"{transport} {case_id}: the backends disagree: {answers}")
    for backend in backends:
        await assert_healthy(backend)
    if ANSWERS_FILE:  # every answer, for reading what the suite saw (not only its failures)
        write_answers(Path(ANSWERS_FILE), report)
    assert report.sent > 0
    assert not report.failures, summary(report)


def test_every_method_has_cases_over_every_transport_it_has() -> None:
    """The walk reaches each method: string fields give cases, an http rule gives REST ones."""
    assert METHODS, "no services"
    for method, routes in METHODS:
        cases = cases_for(method, routes)
        assert any(case.slot is not None for case in cases) or not method.input_type.fields, method.full_name
        kinds = {case.hostile.kind for case in cases}
        assert {"corrupt_protobuf", "deep_protobuf"} <= kinds, method.full_name
