"""Per-request cost of each session implementation, calling the WSGI app directly."""

from __future__ import annotations

import typing as t

from apps import batch
from apps import build_app
from apps import check_ok
from apps import close_app
from apps import make_environ
from apps import seed_session
from apps import Spec
from flask import Flask
from lineup import lineup
from lineup import note
from lineup import Places
from stats import Budget
from stats import interleaved
from stats import ratio
from stats import spread
from stats import Summary
from stats import table
from stats import us
from targets import Scoreboard

SCENARIOS = {
    "untouched": "the view never reads the session",
    "read": "existing session, read one key",
    "write": "existing session, change one key",
    "new": "no cookie, create a session",
}


def prepare(specs: t.Sequence[Spec]) -> dict[Spec, tuple[Flask, str]]:
    """Build and seed each contender's app; drop (with a note) those that fail."""
    ready = {}
    for spec in specs:
        try:
            app = build_app(spec)
            ready[spec] = (app, seed_session(app))
        except Exception as e:  # a broken contender must not stop the others
            note(f"{spec.name} is skipped: setting it up failed: {type(e).__name__}: {e}")
    return ready


def measure(
    ready: t.Mapping[Spec, tuple[Flask, str]], scenario: str, budget: Budget
) -> dict[Spec, Summary]:
    batches = {}
    for spec, (app, cookie) in ready.items():
        environ = make_environ(f"/{scenario}", None if scenario == "new" else cookie)
        check_ok(app, environ)
        batches[spec] = batch(app, environ)
    by_name = interleaved({spec.name: b for spec, b in batches.items()}, budget)
    return {spec: by_name[spec.name] for spec in batches}


def reference(results: t.Mapping[Spec, Summary], family: str, backend: str) -> float | None:
    for spec, summary in results.items():
        if spec.family == family and spec.backend == backend:
            return summary.median
    return None


def render(scenario: str, results: t.Mapping[Spec, Summary]) -> str:
    cookie = reference(results, "cookie", "cookie")
    rows = []
    for spec, summary in results.items():
        flask_session = reference(results, "fs", spec.backend) if spec.family == "fss" else None
        rows.append(
            (
                spec.name,
                us(summary.median),
                spread(summary),
                ratio(summary.median, cookie),
                ratio(summary.median, flask_session),
            )
        )
    headers = ("contender", "median us", "min-max us", "/cookie", "/Flask-Session")
    return table(f"Per request: {scenario} ({SCENARIOS[scenario]})", headers, rows)


def score(scenario: str, results: t.Mapping[Spec, Summary], board: Scoreboard) -> None:
    cookie = reference(results, "cookie", "cookie")
    for spec, summary in results.items():
        if spec.family != "fss":
            continue
        name = f"{scenario}: {spec.backend}"
        if cookie is not None and (
            scenario == "untouched" or (scenario in ("read", "write") and spec.backend == "memory")
        ):
            board.at_most("no slower than cookie", name, summary.median / cookie, 1.0, "x")
        theirs = reference(results, "fs", spec.backend)
        if theirs is not None and scenario in ("read", "write"):
            board.at_most("2x faster than Flask-Session", name, summary.median / theirs, 0.5, "x")


def run(
    places: Places, budget: Budget, backends: t.Sequence[str], board: Scoreboard
) -> dict[str, dict[Spec, Summary]]:
    ready = prepare(lineup(places, "micro", backends=backends))
    results = {}
    try:
        for scenario in SCENARIOS:
            results[scenario] = measure(ready, scenario, budget)
            print(render(scenario, results[scenario]), flush=True)
            score(scenario, results[scenario], board)
    finally:
        for app, _cookie in ready.values():
            close_app(app)
    return results
