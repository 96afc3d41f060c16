"""The bench's results: one row per measured run, rounds merged, the tables, and uvloop vs asyncio."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# A difference smaller than this is treated as run-to-run noise on a loopback bench.
NOISE_FRACTION = 0.05


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 when there are none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Measurement:
    """One timed run, or several runs of the same kind merged by `merge_rounds`."""

    target: str  # "echo" or "tally"
    rpc: str
    generator: str  # "h2load" or "python"
    loop: str  # the server's event loop
    seconds: float  # length of the timed part
    responses: int  # calls answered, whatever their status
    latencies_ms: list[float] = field(repr=False)
    successes: int
    sent: int
    counted_by: str
    round_rps: list[float] = field(default_factory=list)  # req/s of each round, set by merge_rounds

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.target, self.rpc, self.generator, self.loop)

    @property
    def rps(self) -> float:
        return self.responses / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(sorted(self.latencies_ms), 50)

    @property
    def p99_ms(self) -> float:
        return percentile(sorted(self.latencies_ms), 99)


def merge_rounds(rows: Sequence[Measurement]) -> list[Measurement]:
    """Rows with the same key become one: time, counts and latency samples pooled, first-seen order."""
    merged: dict[tuple[str, str, str, str], Measurement] = {}
    for row in rows:
        into = merged.get(row.key)
        if into is None:
            merged[row.key] = Measurement(
                **{**vars(row), "latencies_ms": list(row.latencies_ms), "round_rps": [row.rps]}
            )
            continue
        into.round_rps.append(row.rps)
        into.seconds += row.seconds
        into.responses += row.responses
        into.latencies_ms.extend(row.latencies_ms)
        into.successes += row.successes
        into.sent += row.sent
    return list(merged.values())


def _echo_for(row: Measurement, rows: Sequence[Measurement]) -> Measurement | None:
    """The echo ceiling for a Tally row: same load generator, same server event loop."""
    for other in rows:
        if other.target == "echo" and other.generator == row.generator and other.loop == row.loop:
            return other
    return None


def _ratio(value: float, base: float, digits: int = 2) -> str:
    return f"{value / base:.{digits}f}x" if base else "-"


def _cells(row: Measurement, rows: Sequence[Measurement]) -> list[str]:
    echo = _echo_for(row, rows) if row.target == "tally" else None
    ratios = (
        [_ratio(row.rps, echo.rps), _ratio(row.p50_ms, echo.p50_ms), _ratio(row.p99_ms, echo.p99_ms)]
        if echo
        else ["", "", ""]
    )
    return [
        row.target,
        row.rpc,
        row.generator,
        row.loop,
        f"{row.rps:,.0f}",
        f"{row.p50_ms:.2f}",
        f"{row.p99_ms:.2f}",
        f"{row.successes}/{row.sent}",
        row.counted_by,
        *ratios,
    ]


HEADERS = [
    "target",
    "rpc",
    "generator",
    "loop",
    "req/s",
    "p50 ms",
    "p99 ms",
    "ok/sent",
    "successes counted by",
    "req/s÷echo",
    "p50÷echo",
    "p99÷echo",
]
_RIGHT_ALIGNED = {"req/s", "p50 ms", "p99 ms", "ok/sent", "req/s÷echo", "p50÷echo", "p99÷echo"}


def render(headers: Sequence[str], body: Sequence[Sequence[str]], right_aligned: set[str]) -> str:
    """A plain-text table: the headers, a rule, one line per row; `right_aligned` columns by header."""
    widths = [max(len(line[i]) for line in [headers, *body]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if header in right_aligned else cell.ljust(width)
            for cell, width, header in zip(cells, widths, headers, strict=True)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(cells) for cells in body)])


def table(rows: Sequence[Measurement]) -> str:
    return render(HEADERS, [_cells(row, rows) for row in rows], _RIGHT_ALIGNED)


# ---- the interceptor-chain part: full chain vs no interceptors vs the echo ceiling ----

CHAIN_HEADERS = ["target", "rpc", "req/s", "p50 ms", "p99 ms", "ok/sent", "runs", "req/s of each run"]
_CHAIN_RIGHT = {"req/s", "p50 ms", "p99 ms", "ok/sent", "runs"}
RATIO_HEADERS = ["ratio", "req/s", "p50", "p99"]


def find(rows: Sequence[Measurement], target: str, rpc: str, generator: str, loop: str) -> Measurement | None:
    return next((row for row in rows if row.key == (target, rpc, generator, loop)), None)


def chain_table(rows: Sequence[tuple[str, Measurement]]) -> str:
    """One line per (label, merged row): req/s, p50, p99, ok/sent and the req/s of each run."""
    body = [
        [
            label,
            row.rpc,
            f"{row.rps:,.0f}",
            f"{row.p50_ms:.2f}",
            f"{row.p99_ms:.2f}",
            f"{row.successes}/{row.sent}",
            str(len(row.round_rps)),
            _rounds(row),
        ]
        for label, row in rows
    ]
    return render(CHAIN_HEADERS, body, _CHAIN_RIGHT)


def _figures(row: Measurement) -> tuple[float, float, float]:
    return row.rps, row.p50_ms, row.p99_ms


def ratio_table(pairs: Sequence[tuple[str, Measurement, Measurement]]) -> str:
    """One line per (label, numerator, denominator): req/s, p50 and p99 ratios."""
    body = [
        [label, *(_ratio(value, of, 3) for value, of in zip(_figures(top), _figures(base), strict=True))]
        for label, top, base in pairs
    ]
    return render(RATIO_HEADERS, body, {"req/s", "p50", "p99"})


def _change(new: float, old: float) -> float:
    return (new - old) / old if old else 0.0


def _loop_pairs(rows: Sequence[Measurement]) -> list[tuple[Measurement, Measurement]]:
    """(uvloop row, asyncio row) for every target, rpc and generator measured on both loops."""
    asyncio_rows = {(row.target, row.rpc, row.generator): row for row in rows if row.loop == "asyncio"}
    return [
        (row, asyncio_rows[(row.target, row.rpc, row.generator)])
        for row in rows
        if row.loop == "uvloop" and (row.target, row.rpc, row.generator) in asyncio_rows
    ]


def _verdict(fast: Measurement, base: Measurement) -> str:
    """'uvloop faster'/'uvloop slower' only past the noise margin and with no overlap between rounds."""
    change = _change(fast.rps, base.rps)
    if abs(change) < NOISE_FRACTION:
        return "level"
    if change > 0 and min(fast.round_rps) > max(base.round_rps):
        return "uvloop faster"
    if change < 0 and max(fast.round_rps) < min(base.round_rps):
        return "uvloop slower"
    return "noise: rounds overlap"


def _rounds(row: Measurement) -> str:
    return "[" + " ".join(f"{rps:,.0f}" for rps in row.round_rps) + "]"


def loop_comparison(rows: Sequence[Measurement]) -> list[str]:
    """One line per target, rpc and generator: uvloop against asyncio, req/s (each round) and p99."""
    lines = []
    for fast, base in _loop_pairs(rows):
        lines.append(
            f"{fast.target} {fast.rpc} via {fast.generator}: "
            f"uvloop {fast.rps:,.0f} {_rounds(fast)} vs asyncio {base.rps:,.0f} {_rounds(base)} req/s "
            f"({_change(fast.rps, base.rps):+.1%}, {_verdict(fast, base)}); "
            f"p99 {fast.p99_ms:.1f} vs {base.p99_ms:.1f} ms ({_change(fast.p99_ms, base.p99_ms):+.1%})"
        )
    return lines


def loop_verdict(rows: Sequence[Measurement]) -> str:
    pairs = [(fast, base) for fast, base in _loop_pairs(rows) if fast.target == "tally"]
    if not pairs:
        return "uvloop vs asyncio for Tally: not measured"
    verdicts = [_verdict(fast, base) for fast, base in pairs]
    mean = sum(_change(fast.rps, base.rps) for fast, base in pairs) / len(pairs)
    faster, slower = verdicts.count("uvloop faster"), verdicts.count("uvloop slower")
    prefix = f"uvloop vs asyncio for Tally (mean req/s change {mean:+.1%} over {len(pairs)} measurements):"
    if faster and slower:
        return f"{prefix} mixed, faster in {faster}, slower in {slower}"
    if faster:
        return f"{prefix} uvloop helps in {faster} of {len(pairs)}, no clear difference in the rest"
    if slower:
        return f"{prefix} uvloop is slower in {slower} of {len(pairs)}, no clear difference in the rest"
    return (
        f"{prefix} no clear difference; every change is under {NOISE_FRACTION:.0%} "
        "or inside the round-to-round spread"
    )
