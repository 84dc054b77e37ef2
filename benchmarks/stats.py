"""Interleaved timing rounds, summaries and plain-text tables."""

from __future__ import annotations

import gc
import os
import statistics
import time
import typing as t
from dataclasses import dataclass

#: Runs a benchmark ``n`` times and returns the elapsed seconds.
Batch = t.Callable[[int], float]


@dataclass(frozen=True)
class Summary:
    """Per-call seconds of each round."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)


@dataclass(frozen=True)
class Budget:
    """How long to time things: rounds, seconds per batch, calls per batch."""

    rounds: int = 7
    batch_seconds: float = 0.15
    min_calls: int = 10
    max_calls: int = 20_000


def _timed(batch: Batch, n: int) -> float:
    gc.collect()
    gc.disable()
    try:
        return batch(n)
    finally:
        gc.enable()


def calibrate(batch: Batch, budget: Budget) -> int:
    """Return how many calls fill about ``budget.batch_seconds``."""
    batch(3)  # warm caches, connections and lazy imports
    n, elapsed = 1, 0.0
    while n < budget.max_calls:
        elapsed = _timed(batch, n)
        if elapsed >= budget.batch_seconds / 5:
            break
        n *= 4
    per_call = max(elapsed / n, 1e-9)
    return max(budget.min_calls, min(budget.max_calls, int(budget.batch_seconds / per_call)))


def interleaved(batches: t.Mapping[str, Batch], budget: Budget) -> dict[str, Summary]:
    """Time every batch once per round, rotating the order round by round.

    Rotation makes slow drift of the machine (thermal, other tenants) hit
    every contender alike instead of whoever happens to run last.
    """
    names = list(batches)
    calls = {name: calibrate(batches[name], budget) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(budget.rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            n = calls[name]
            samples[name].append(_timed(batches[name], n) / n)
    return {name: Summary(tuple(values)) for name, values in samples.items()}


def load() -> str:
    """The 1-minute load average and the number of usable cores, for table titles."""
    try:
        one = os.getloadavg()[0]
    except OSError:
        return "load unknown"
    return f"load {one:.2f} on {len(os.sched_getaffinity(0))} cores"


#: How long :func:`wait_for_quiet` may wait; set from the command line.
QUIET_WAIT_SECONDS = 0.0
#: Below this share of all cores busy, the machine counts as quiet.
QUIET_BUSY = 0.25


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of all cores busy over ``seconds``, from /proc/stat; NaN if unknown."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return float("nan")
    total = total1 - total0
    return 1 - (idle1 - idle0) / total if total > 0 else float("nan")


def wait_for_quiet(what: str) -> None:
    """Wait (at most ``QUIET_WAIT_SECONDS``) until other work leaves the cores mostly idle.

    Others' test runs on a shared machine make timings noisy; the wait and
    the busy share found are printed, so a table taken on a busy machine
    says so.
    """
    if QUIET_WAIT_SECONDS <= 0:
        return
    deadline = time.monotonic() + QUIET_WAIT_SECONDS
    start = time.monotonic()
    busy = cpu_busy()
    while busy >= QUIET_BUSY and time.monotonic() < deadline:
        busy = cpu_busy(2.0)
    waited = time.monotonic() - start
    state = "quiet" if busy < QUIET_BUSY else "STILL BUSY"
    print(f"  [{what}: waited {waited:.0f} s; cores {100 * busy:.0f}% busy, {state}]", flush=True)


def stopwatch() -> t.Callable[[], float]:
    """Return a function giving the seconds since this call."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def percentile(values: t.Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (which need not be sorted)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def us(seconds: float) -> str:
    """Microseconds, with precision that suits the size."""
    value = seconds * 1e6
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def ms(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def spread(summary: Summary) -> str:
    return f"{us(summary.low)}-{us(summary.high)}"


def ratio(value: float, reference: float | None) -> str:
    if reference is None or reference <= 0:
        return "-"
    return f"{value / reference:.2f}x"


def table(title: str, headers: t.Sequence[str], rows: t.Sequence[t.Sequence[str]]) -> str:
    """Render a plain-text table; the first column is left-aligned, the rest right."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: t.Sequence[str]) -> str:
        first, *rest = cells
        parts = [first.ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    body = [line(row) for row in rows]
    return "\n".join([title, "", line(headers), rule, *body, ""])
