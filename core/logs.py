"""Structured logging: one JSON object per line (or plain text on a terminal).

Fields passed with `extra=` appear as keys of the JSON object (as key=value
pairs in text). Records logged while an OpenTelemetry span is current get its
`trace_id` and `span_id` unless they already carry them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record carries beyond the standard LogRecord attributes."""
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


def log_fields(
    logger: logging.Logger, level: int, msg: str, fields: dict[str, Any], *, where: tuple[str, int, str]
) -> None:
    """`logger.log(level, msg, extra=fields)` for a hot path, where `where` is the (pathname,
    lineno, funcName) to report: the same record (through the record factory, the logger's
    filters, handlers and propagation), without `Logger.findCaller` walking the stack for the
    caller's file and line, which costs more than the rest of the record together. The caller
    checks `logger.isEnabledFor(level)` first; `fields` must not name LogRecord attributes."""
    pathname, lineno, func = where
    record = logging.getLogRecordFactory()(logger.name, level, pathname, lineno, msg, None, None, func)
    record.__dict__.update(fields)
    logger.handle(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, msg, the extra fields, exc when there is one.

    Made for one line per call: the encoder is built once, and the time's text up to the second
    is kept for the next record of the same second."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = json.JSONEncoder(default=str)
        self._second = -1
        self._prefix = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        millis = int((created - second) * 1000)
        return f"{self._prefix}.{millis:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(extra_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self._encoder.encode(entry)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        fields = extra_fields(record)
        if fields:
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return text


class TraceContextFilter(logging.Filter):
    """Adds trace_id/span_id of the current span; install it on handlers that format synchronously."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            span_context = trace.get_current_span().get_span_context()
            if span_context.is_valid:
                record.trace_id = trace.format_trace_id(span_context.trace_id)
                record.span_id = trace.format_span_id(span_context.span_id)
        return True


def configure(level: str, fmt: str) -> None:
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
