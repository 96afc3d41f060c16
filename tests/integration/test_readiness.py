"""Readiness in-process: the probe's threshold and recovery, and a drain that outranks the database."""

from __future__ import annotations

from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.health import DatabaseProbe, probe_engine
from app.server import App
from core.settings import Settings
from tests.support import channel_as

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_two_failures_in_a_row_make_unready_and_one_success_ready(tmp_path: Path) -> None:
    # A SQLite file in a directory that does not exist yet cannot be opened: a real failure.
    missing = tmp_path / "not-yet"
    engine = probe_engine(Settings(database_url=f"sqlite+aiosqlite:///{missing / 'probe.db'}"))
    changes: list[bool] = []

    async def changed(up: bool) -> None:
        changes.append(up)

    probe = DatabaseProbe(engine, 1.0, changed)
    try:
        await probe.probe_once()
        assert (probe.up, changes) == (True, [])  # one failure is not an outage
        await probe.probe_once()
        assert (probe.up, changes) == (False, [False])
        await probe.probe_once()
        assert changes == [False]  # reported once, not per failed probe
        missing.mkdir()
        await probe.probe_once()
        assert (probe.up, changes) == (True, [False, True])
    finally:
        await engine.dispose()


async def test_a_drain_is_not_undone_by_the_database_coming_back(app: App) -> None:
    async with channel_as(app, None) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING
        await app.readiness.database(False)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == NOT_SERVING
        assert "tally_ready 0.0" in app.metrics.render().decode()
        await app.readiness.database(True)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING
        assert "tally_ready 1.0" in app.metrics.render().decode()

        await app.drain()
        await app.readiness.database(False)
        await app.readiness.database(True)
        listed = await health.List(health_pb2.HealthListRequest())
    assert not app.readiness.ready
    assert {entry.status for entry in listed.statuses.values()} == {NOT_SERVING}
    assert set(listed.statuses) == {"", *app.components.service_names()}
    assert "tally_ready 0.0" in app.metrics.render().decode()
