"""Trace sampling (core.telemetry.sampler_from_env) through a real server and an instrumented engine.

The harness of test_observability (tracing and observability stages, an in-memory exporter,
SQLite with SQL spans) with the sampler chosen by OTEL_TRACES_SAMPLER / _ARG, as
`tally serve` does. A sampled call has its SERVER span and one CLIENT span per statement;
an unsampled one has neither, and its span attributes are never computed; a caller's
sampled traceparent is honoured whatever the ratio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import SpanKind

import interceptors.tracing
from core.telemetry import TracingConfigError, sampler_from_env
from interceptors.peer import Peer, parse_peer
from tests.integration.test_observability import HEX32, method, running

TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def _sampler(monkeypatch: pytest.MonkeyPatch, name: str, argument: str | None = None) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    if argument is None:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", argument)


class PeerParses:
    """Counts the peer parses of the tracing stage: the span attribute an unsampled call must not pay."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = parse_peer

        def counted(peer: str | None) -> Peer:
            self.count += 1
            return real(peer)

        monkeypatch.setattr(interceptors.tracing, "parse_peer", counted)


class SqlSpanStarts:
    """Counts the statements OpenTelemetry's engine tracer starts a span for (attributes included)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = EngineTracer._before_cur_exec

        def counted(tracer: EngineTracer, *args: Any) -> Any:
            self.count += 1
            return real(tracer, *args)

        monkeypatch.setattr(EngineTracer, "_before_cur_exec", counted)


async def test_an_unsampled_call_has_no_server_or_sql_span(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sampler(monkeypatch, "parentbased_traceidratio", "0")
    parses = PeerParses(monkeypatch)
    statements = SqlSpanStarts(monkeypatch)
    async with running(tmp_path) as harness:
        assert await harness.unary("Query") == b"2"
        assert harness.exporter.get_finished_spans() == ()
        assert parses.count == 0
        assert statements.count == 0  # not even a non-recording span per statement
        (record,) = harness.rpc_records()
        assert record["code"] == "OK"
        # Unsampled, the call still has a trace id: the log line and downstream calls carry it.
        assert HEX32.fullmatch(record["trace_id"])


async def test_a_sampled_call_has_its_server_span_and_sql_spans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sampler(monkeypatch, "parentbased_traceidratio", "1")
    parses = PeerParses(monkeypatch)
    statements = SqlSpanStarts(monkeypatch)
    async with running(tmp_path) as harness:
        assert await harness.unary("Query") == b"2"
        assert statements.count == 1
        (server,) = harness.spans(SpanKind.SERVER)
        (sql,) = harness.spans(SpanKind.CLIENT)
        assert server.name == method("Query")
        assert server.attributes is not None
        assert server.attributes["network.peer.address"] == "127.0.0.1"
        assert sql.parent is not None
        assert sql.parent.span_id == server.context.span_id
        assert parses.count == 1
        (record,) = harness.rpc_records()
        assert record["trace_id"] == f"{server.context.trace_id:032x}"


async def test_a_sampled_traceparent_is_honoured_at_ratio_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sampler(monkeypatch, "parentbased_traceidratio", "0")
    async with running(tmp_path) as harness:
        sampled = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
        assert await harness.unary("Query", metadata=sampled) == b"2"
        (server,) = harness.spans(SpanKind.SERVER)
        (sql,) = harness.spans(SpanKind.CLIENT)
        assert server.context.trace_id == int(TRACE_ID, 16)
        assert server.parent is not None
        assert server.parent.span_id == int(PARENT_ID, 16)
        assert sql.context.trace_id == int(TRACE_ID, 16)


async def test_an_unsampled_traceparent_is_honoured_when_always_on_below_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sampler(monkeypatch, "parentbased_always_on")
    async with running(tmp_path) as harness:
        unsampled = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00"),)
        assert await harness.unary("Query", metadata=unsampled) == b"2"
        assert harness.exporter.get_finished_spans() == ()
        (record,) = harness.rpc_records()
        assert record["trace_id"] == TRACE_ID  # the caller's trace, not sampled here either
        assert await harness.unary("Query") == b"2"  # no parent: sampled
        assert len(harness.spans(SpanKind.SERVER)) == 1
        assert len(harness.spans(SpanKind.CLIENT)) == 1


@pytest.mark.parametrize(
    ("name", "argument", "expected"),
    [
        (None, None, "ParentBased{root:AlwaysOnSampler"),
        ("parentbased_traceidratio", "0.25", "ParentBased{root:TraceIdRatioBased{0.25}"),
        ("traceidratio", "0.5", "TraceIdRatioBased{0.5}"),
        ("always_off", None, "AlwaysOffSampler"),
        ("PARENTBASED_ALWAYS_OFF", None, "ParentBased{root:AlwaysOffSampler"),
    ],
)
def test_sampler_from_env(name: str | None, argument: str | None, expected: str) -> None:
    env = {
        key: value
        for key, value in (("OTEL_TRACES_SAMPLER", name), ("OTEL_TRACES_SAMPLER_ARG", argument))
        if value
    }
    sampler = sampler_from_env(env)
    assert isinstance(sampler, sampling.Sampler)
    assert sampler.get_description().startswith(expected)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
    ],
)
def test_a_sampler_tally_cannot_honour_is_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(TracingConfigError, match=named):
        sampler_from_env(env)
