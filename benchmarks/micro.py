"""Per-request cost of each session implementation, calling the WSGI app directly."""

from __future__ import annotations

import os
import typing as t

from apps import batch
from apps import build_app
from apps import call
from apps import check_ok
from apps import close_app
from apps import make_environ
from apps import seed_session
from apps import Spec
from flask import Flask
from floors import Floor
from floors import floors_for
from lineup import lineup
from lineup import note
from lineup import Places
from ratios import paired
from ratios import render_against_cookie
from ratios import render_against_flask_session
from ratios import render_against_floor
from ratios import render_floors
from ratios import Rounds
from stats import Batch
from stats import Budget
from stats import interleaved
from stats import load
from stats import spread
from stats import Summary
from stats import table
from stats import us
from stats import wait_for_quiet
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
    ready: t.Mapping[Spec, tuple[Flask, str]],
    scenario: str,
    budget: Budget,
    extra: t.Mapping[str, Batch] | None = None,
) -> dict[Spec, Summary]:
    """Time each contender's request; ``extra`` batches run in the same rounds.

    The summaries of ``extra`` are returned under ``Spec("extra", name)``.
    """
    batches = {}
    for spec, (app, cookie) in ready.items():
        environ = make_environ(f"/{scenario}", None if scenario == "new" else cookie)
        check_ok(app, environ)
        batches[spec] = batch(app, environ)
    named: dict[str, Batch] = {spec.name: b for spec, b in batches.items()}
    extra = extra or {}
    named.update(extra)
    by_name = interleaved(named, budget)
    results = {spec: by_name[spec.name] for spec in batches}
    results.update({Spec("extra", name): by_name[name] for name in extra})
    return results


def reference(results: t.Mapping[Spec, Summary], family: str, backend: str) -> Summary | None:
    for spec, summary in results.items():
        if spec.family == family and spec.backend == backend:
            return summary
    return None


def paired_ratio(summary: Summary, reference: Summary | None) -> str:
    """A table cell: the median of per-round ratios, or "-"."""
    return "-" if reference is None else f"{paired(summary, reference):.2f}x"


def render(scenario: str, results: t.Mapping[Spec, Summary], load: str = "") -> str:
    cookie = reference(results, "cookie", "cookie")
    rows = []
    for spec, summary in results.items():
        if spec.family == "extra":
            continue
        flask_session = reference(results, "fs", spec.backend) if spec.family == "fss" else None
        rows.append(
            (
                spec.name,
                us(summary.median),
                spread(summary),
                paired_ratio(summary, cookie),
                paired_ratio(summary, flask_session),
            )
        )
    headers = ("contender", "median us", "min-max us", "/cookie", "/Flask-Session")
    title = f"Per request: {scenario} ({SCENARIOS[scenario]})"
    return table(f"{title}; {load}" if load else title, headers, rows)


def build_floors(
    places: Places, ready: t.Mapping[Spec, tuple[Flask, str]]
) -> dict[str, dict[str, Floor]]:
    """The driver floors of every backend whose contender runs, by backend and label."""
    result = {}
    for spec in ready:
        if spec.family != "fss" or spec.backend == "memory":
            continue
        try:
            result[spec.backend] = floors_for(spec.backend, spec.location, places.directory)
        except Exception as e:  # a missing driver must not stop the rest
            note(f"the {spec.backend} floor is skipped: {type(e).__name__}: {e}")
    return result


def floor_batches(floors: t.Mapping[str, t.Mapping[str, Floor]], scenario: str) -> dict[str, Batch]:
    batches = {}
    for backend, labels in floors.items():
        for label, floor in labels.items():
            if scenario in floor.batches():
                batches[_floor_name(backend, label)] = floor.batches()[scenario]
    return batches


def _floor_name(backend: str, label: str) -> str:
    return f"driver {backend} {label}".rstrip()


def rounds(
    results: t.Mapping[Spec, Summary], floors: t.Mapping[str, t.Mapping[str, Floor]]
) -> Rounds:
    """Sort one scenario's summaries into contenders and floors."""
    m = Rounds()
    by_extra = {spec.backend: s for spec, s in results.items() if spec.family == "extra"}
    for spec, summary in results.items():
        if spec.family == "cookie":
            m.cookie = summary
        elif spec.family == "fss":
            m.ours[spec.backend] = summary
        elif spec.family == "fs":
            m.flask_session[spec.backend] = summary
    for backend, labels in floors.items():
        for label in labels:
            name = _floor_name(backend, label)
            if name in by_extra:
                m.drivers.setdefault(backend, {})[label] = by_extra[name]
    return m


def fsync_floor(ready: t.Mapping[Spec, tuple[Flask, str]]) -> str:
    """The filesystem floor that matches our backend: does a save call ``fsync``?"""
    for spec, (app, cookie) in ready.items():
        if spec.family == "fss" and spec.backend == "filesystem":
            return "fsync" if _fsyncs(app, cookie) else "no fsync"
    return "fsync"


def _fsyncs(app: Flask, cookie: str) -> int:
    calls = []
    original = os.fsync

    def counted(fd: t.Any) -> None:
        calls.append(fd)
        original(fd)

    os.fsync = counted
    try:
        call(app, make_environ("/write", cookie))
    finally:
        os.fsync = original
    return len(calls)


def run(
    places: Places, budget: Budget, backends: t.Sequence[str], board: Scoreboard
) -> dict[str, Rounds]:
    ready = prepare(lineup(places, "micro", backends=backends))
    floors = build_floors(places, ready)
    by_scenario = {}
    try:
        for scenario in SCENARIOS:
            wait_for_quiet(f"micro {scenario}")
            before = load()
            results = measure(ready, scenario, budget, floor_batches(floors, scenario))
            print(render(scenario, results, f"{before}, after: {load()}"), flush=True)
            by_scenario[scenario] = rounds(results, floors)
        print(render_floors(by_scenario), flush=True)
        matching = {"filesystem": fsync_floor(ready)}
        print(render_against_floor(by_scenario, matching, board), flush=True)
        print(render_against_flask_session(by_scenario, board), flush=True)
        print(render_against_cookie(by_scenario, board), flush=True)
    finally:
        for app, _cookie in ready.values():
            close_app(app)
        for labels in floors.values():
            for floor in labels.values():
                floor.close()
    return by_scenario
