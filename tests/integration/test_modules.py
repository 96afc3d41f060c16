"""The one list of service modules is the single source for everything derived from it."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from app.modules import MODULES, PLATFORM_MODELS, SERVICES, table_names
from app.server import App
from core.db import Base

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())


def test_every_table_belongs_to_a_module_or_the_platform() -> None:
    for module in MODULES:
        importlib.import_module(module.package)
    assert set(Base.metadata.tables) == set(table_names())
    assert len(table_names()) == len(set(table_names())), "a table is claimed twice"
    assert {str(m.__tablename__) for m in PLATFORM_MODELS} <= set(table_names())


def test_services_are_the_modules_services_without_duplicates() -> None:
    names = [service.full_name for service in SERVICES]
    assert names == [s.full_name for module in MODULES for s in module.services]
    assert len(names) == len(set(names))
    assert len({module.name for module in MODULES}) == len(MODULES)


def test_every_module_package_is_type_checked_and_layered() -> None:
    checked = set(PYPROJECT["tool"]["mypy"]["packages"])
    linter = PYPROJECT["tool"]["importlinter"]
    layers = {name.strip() for layer in linter["contracts"][0]["layers"] for name in layer.split("|")}
    for module in MODULES:
        assert module.package in checked, f"add {module.package} to [tool.mypy] packages"
        assert module.package in linter["root_packages"], f"add {module.package} to importlinter roots"
        assert module.package in layers, f"put {module.package} in the layers contract"
    assert {"app", "core", "tests", "billing_svc"} <= checked


async def test_the_server_serves_reflects_and_reports_health_for_every_module(app: App) -> None:
    """register() adds the declared services, and reflection and health follow the same list."""
    expected = {service.full_name for service in SERVICES}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(iter([request])):
            listed = {service.name for service in reply.list_services_response.service}
        assert listed == expected | {
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "grpc.reflection.v1.ServerReflection",
        }
        health = health_pb2_grpc.HealthStub(channel)
        for name in expected:
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
    for module in MODULES:
        for service in module.services:
            for method in service.methods:
                assert app.policies.get(f"/{service.full_name}/{method.name}") is not None
