"""Per-request cost as the number of stored sessions grows."""

from __future__ import annotations

import typing as t

import bulk
import sizing
from apps import close_app
from apps import Spec
from flask import Flask
from lineup import available
from lineup import note
from lineup import Places
from micro import measure
from micro import prepare
from ratios import paired
from stats import Budget
from stats import load as load_average
from stats import spread
from stats import stopwatch
from stats import Summary
from stats import table
from stats import us
from stats import wait_for_quiet
from targets import Scoreboard

BACKENDS = ("sqlite", "postgres", "redis")
COUNTS = (1_000, 100_000, 1_000_000)
LIMIT = 1.2


def specs(places: Places, backends: t.Sequence[str], counts: t.Sequence[int]) -> list[Spec]:
    result = []
    for backend in [b for b in BACKENDS if b in backends]:
        reason = available(places, "fss", backend)
        if reason is not None:
            note(f"ServerSession {backend} is skipped: {reason}.")
            continue
        for index, count in enumerate(counts):
            too_big = sizing.redis_too_big(sum(counts)) if backend == "redis" else None
            if too_big is not None:
                note(f"ServerSession redis is skipped at {count:,} sessions: {too_big}.")
                continue
            # Own table, file or Redis database per size, so sizes can be interleaved.
            spec = places.spec("fss", backend, f"scale{count}", redis_db=index + 1)
            result.append(Spec(spec.family, spec.backend, spec.location, spec.table, {"n": count}))
    return result


def load(ready: t.Mapping[Spec, tuple[Flask, str]]) -> None:
    for spec, (app, _cookie) in ready.items():
        elapsed = stopwatch()
        count = spec.extra["n"]
        bulk.fill(app, spec, count - 1)  # the seeded session is one of them
        print(f"  loaded {count:,} sessions into {spec.backend} in {elapsed():.1f} s", flush=True)


def largest(ready: t.Mapping[Spec, tuple[Flask, str]]) -> list[tuple[Spec, Flask, str, int]]:
    """The store of the most sessions of each backend, as (spec, app, cookie, count)."""
    chosen: dict[str, tuple[Spec, Flask, str, int]] = {}
    for spec, (app, cookie) in ready.items():
        count = spec.extra["n"]
        if spec.backend not in chosen or count > chosen[spec.backend][3]:
            chosen[spec.backend] = (spec, app, cookie, count)
    return list(chosen.values())


def render(scenario: str, results: t.Mapping[Spec, Summary], load_note: str) -> str:
    rows = []
    for spec, summary in results.items():
        smallest = min(
            (s for s in results if s.backend == spec.backend), key=lambda s: s.extra["n"]
        )
        rows.append(
            (
                spec.backend,
                f"{spec.extra['n']:,}",
                us(summary.median),
                spread(summary),
                f"{paired(summary, results[smallest]):.2f}x",
            )
        )
    headers = ("backend", "stored", "median us", "min-max us", "/smallest")
    return table(f"Scale: {scenario} cost by stored sessions; {load_note}", headers, rows)


def score(scenario: str, results: t.Mapping[Spec, Summary], board: Scoreboard) -> None:
    for backend in dict.fromkeys(s.backend for s in results):
        sizes = sorted((s for s in results if s.backend == backend), key=lambda s: s.extra["n"])
        if len(sizes) < 2:
            continue
        low, high = sizes[0], sizes[-1]
        value = paired(results[high], results[low])
        subject = f"{scenario}: {backend} {high.extra['n']:,} vs {low.extra['n']:,}"
        board.at_most("scale cost", subject, value, LIMIT, "x")


def run(
    places: Places,
    budget: Budget,
    backends: t.Sequence[str],
    board: Scoreboard,
    *,
    counts: t.Sequence[int] | None = None,
) -> None:
    counts = sorted(counts or COUNTS)
    ready = prepare(specs(places, backends, counts))
    if not ready:
        note("the scale section has no backend to run.")
        return
    try:
        load(ready)
        for scenario in ("read", "write"):
            wait_for_quiet(f"scale {scenario}")
            note_load = load_average()
            results = measure(ready, scenario, budget)
            print(render(scenario, results, f"{note_load}, after: {load_average()}"), flush=True)
            score(scenario, results, board)
        sizing.run(places, largest(ready), board, load_average)
    finally:
        for app, _cookie in ready.values():
            close_app(app)
