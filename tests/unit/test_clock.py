"""Two kinds of time: the wall clock for infrastructure, billing clocks resolved per account."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.clock import FrozenClock, SystemClock

START = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def test_frozen_clock_moves_only_when_told() -> None:
    clock = FrozenClock(START)
    assert clock.now() == START
    clock.advance(timedelta(days=29))
    assert clock.now() == START + timedelta(days=29)


def test_frozen_clock_refuses_naive_start() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FrozenClock(datetime(2026, 1, 1))


def test_system_clock_is_utc() -> None:
    assert SystemClock().now().tzinfo is UTC


def test_no_code_reads_the_time_behind_the_clocks_back() -> None:
    """Time comes from a clock object; only core/clock.py may ask the operating system."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    pattern = re.compile(r"\bdatetime\.(now|utcnow|today)\(|\bdate\.today\(|\btime\.time\(\)")
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for package in ("app", "core", "account_svc", "billing_svc", "interceptors", "gateway")
        for path in sorted((root / package).rglob("*.py"))
        if path != root / "core" / "clock.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert offenders == []
