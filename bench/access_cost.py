"""What the access log line and the RPC metrics cost per call, in µs (a micro-bench, one process).

Each line times one piece of the per-call work of the observability stage
(interceptors/observability.py) many times over and prints the mean µs per call:

* metrics by label lookup (`Metrics.rpc_started` + `rpc_finished`, a `.labels()` per series
  per call) and by the precomputed children of `Metrics.for_method` (what the stage does);
* the access record through `Logger.log(..., extra=)` (with `findCaller`) and through
  `core.logs.log_fields` (what the stage does), each formatted by `core.logs.JsonFormatter`
  and written to an in-memory stream, as `tally serve` writes one JSON line to stderr;
* the JSON formatting alone, and the record alone (a handler that drops it).

    PYTHONPATH=$PWD:$PWD/generated .venv/bin/python bench/access_cost.py [--calls 100000]
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from collections.abc import Callable
from typing import Any

from core.logs import JsonFormatter, TraceContextFilter, log_fields
from core.metrics import Metrics

METHOD = "tally.account.v1.AccountService/GetAccount"
FIELDS: dict[str, Any] = {
    "method": METHOD,
    "code": "OK",
    "duration_ms": 1.234,
    "peer": "127.0.0.1:51234",
    "request_id": "0123456789abcdef0123456789abcdef",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "span_id": "00f067aa0ba902b7",
    "principal": "cli:bench",
}
WHERE = (__file__, 0, "access_log")


class _Drop(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"bench.access.{name}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def _json_handler() -> logging.Handler:
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TraceContextFilter())
    return handler


def timed(calls: int, work: Callable[[], None]) -> float:
    for _ in range(min(calls, 1000)):
        work()
    started = time.perf_counter()
    for _ in range(calls):
        work()
    return (time.perf_counter() - started) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000, help="calls per line (default 100000)")
    calls = parser.parse_args(argv).calls

    metrics = Metrics()
    children = metrics.for_method(METHOD)

    def by_labels() -> None:
        metrics.rpc_started(METHOD)
        metrics.rpc_finished(METHOD, "OK", 0.001)

    def by_children() -> None:
        children.started()
        children.finished("OK", 0.001)

    old_log = _logger("old", _json_handler())
    new_log = _logger("new", _json_handler())
    dropped = _logger("drop", _Drop())
    formatter = JsonFormatter()
    record = logging.makeLogRecord({"name": "tally.access", "msg": "rpc", "levelno": 20, "levelname": "INFO"})
    record.__dict__.update(FIELDS)

    lines = [
        ("metrics, .labels() per call (rpc_started + rpc_finished)", by_labels),
        ("metrics, precomputed children (Metrics.for_method)", by_children),
        ("access line, Logger.log(extra=) + JsonFormatter", lambda: old_log.info("rpc", extra=FIELDS)),
        (
            "access line, log_fields + JsonFormatter",
            lambda: log_fields(new_log, 20, "rpc", FIELDS, where=WHERE),
        ),
        ("record only, Logger.log(extra=), dropped", lambda: dropped.info("rpc", extra=FIELDS)),
        ("record only, log_fields, dropped", lambda: log_fields(dropped, 20, "rpc", FIELDS, where=WHERE)),
        ("JsonFormatter.format alone", lambda: formatter.format(record) and None),
    ]
    print(f"per-call cost, mean of {calls:,} calls each")
    for label, work in lines:
        print(f"  {timed(calls, work):7.2f} µs  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
