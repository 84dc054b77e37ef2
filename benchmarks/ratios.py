"""The floors table and the ratio tables, with each target marked met or missed."""

from __future__ import annotations

import statistics
import typing as t
from dataclasses import dataclass
from dataclasses import field

from floors import OPERATIONS
from stats import Summary
from stats import table
from stats import us
from targets import Scoreboard

#: Ours over the floor, at most.
FLOOR_LIMIT = 1.25
#: Flask-Session's time over ours, at least; every other cell: 1.0 (never faster).
FLASK_SESSION_TARGETS = {
    ("sqlite", "read"): 8.0,
    ("sqlite", "write"): 8.0,
    ("postgres", "read"): 4.0,
    ("postgres", "write"): 2.0,
    ("redis", "read"): 1.3,
    ("redis", "write"): 1.1,
    ("redis", "new"): 1.1,
    ("filesystem", "read"): 2.0,
    ("filesystem", "write"): 1.5,
}
FLOOR_SCENARIOS = ("read", "write", "new")


@dataclass
class Rounds:
    """Per-round seconds per request (or per driver operation) of one scenario.

    Every contender and floor ran once in each round, so round ``i`` of one
    and round ``i`` of another were taken close in time: a ratio is the
    median of the per-round ratios, which cancels drift of a busy machine
    better than a ratio of medians.
    """

    cookie: Summary | None = None
    ours: dict[str, Summary] = field(default_factory=dict)
    flask_session: dict[str, Summary] = field(default_factory=dict)
    #: Driver rounds by backend, then floor label ("" or "fsync" / "no fsync").
    drivers: dict[str, dict[str, Summary]] = field(default_factory=dict)


def paired(numerator: Summary, denominator: Summary) -> float:
    """The median over rounds of ``numerator / denominator``."""
    pairs = zip(numerator.samples, denominator.samples, strict=True)
    return statistics.median(n / d for n, d in pairs)


def plus(a: Summary, b: Summary) -> Summary:
    """Round by round sum: the floor is the memory backend's round plus the driver's."""
    return Summary(tuple(x + y for x, y in zip(a.samples, b.samples, strict=True)))


def _status(met: bool) -> str:
    return "met" if met else "MISSED"


def _label(backend: str, label: str) -> str:
    return f"{backend} ({label})" if label else backend


@dataclass(frozen=True)
class FloorRow:
    backend: str
    label: str
    scenario: str
    memory: Summary
    driver: Summary

    @property
    def floor(self) -> Summary:
        return plus(self.memory, self.driver)


def floor_rows(by_scenario: t.Mapping[str, Rounds]) -> list[FloorRow]:
    """Every floor measured, by backend, label and scenario."""
    rows = []
    for scenario in FLOOR_SCENARIOS:
        m = by_scenario.get(scenario)
        if m is None or "memory" not in m.ours:
            continue
        for backend, labels in m.drivers.items():
            for label, driver in labels.items():
                rows.append(FloorRow(backend, label, scenario, m.ours["memory"], driver))
    return sorted(rows, key=lambda r: (r.backend, r.label, FLOOR_SCENARIOS.index(r.scenario)))


def render_floors(by_scenario: t.Mapping[str, Rounds]) -> str:
    rows = [
        (
            _label(r.backend, r.label),
            r.scenario,
            OPERATIONS[r.scenario],
            us(r.memory.median),
            us(r.driver.median),
            us(r.floor.median),
        )
        for r in floor_rows(by_scenario)
    ]
    headers = ("backend", "scenario", "driver operations", "memory us", "driver us", "floor us")
    title = (
        "Floors: the memory backend's cost through the app + the bare driver's time"
        " for the scenario's storage operations (medians; floor: median over rounds of the sum)"
    )
    return table(title, headers, rows)


def render_against_floor(
    by_scenario: t.Mapping[str, Rounds], matching: t.Mapping[str, str], board: Scoreboard
) -> str:
    """Ours over the floor; ``matching`` names the floor label a target applies to."""
    rows = []
    for r in floor_rows(by_scenario):
        ours = by_scenario[r.scenario].ours.get(r.backend)
        if ours is None:
            continue
        value = paired(ours, r.floor)
        counted = matching.get(r.backend, "") == r.label
        status = _status(value <= FLOOR_LIMIT) if counted else "(other floor)"
        if counted:
            board.at_most("ours/floor", f"{r.scenario}: {r.backend}", value, FLOOR_LIMIT, "x")
        rows.append(
            (
                _label(r.backend, r.label),
                r.scenario,
                us(ours.median),
                us(r.floor.median),
                f"{value:.2f}x",
                f"<= {FLOOR_LIMIT:.2f}x",
                status,
            )
        )
    headers = ("backend", "scenario", "ours us", "floor us", "ours/floor", "target", "status")
    title = "Ours against the floor (ratios: median of per-round ratios)"
    return table(title, headers, rows)


def render_against_flask_session(by_scenario: t.Mapping[str, Rounds], board: Scoreboard) -> str:
    rows = []
    backends = sorted({b for m in by_scenario.values() for b in m.flask_session})
    for backend in backends:
        for scenario, m in by_scenario.items():
            ours, theirs = m.ours.get(backend), m.flask_session.get(backend)
            if ours is None or theirs is None:
                continue
            value = paired(theirs, ours)
            wanted = FLASK_SESSION_TARGETS.get((backend, scenario), 1.0)
            board.at_least("Flask-Session/ours", f"{scenario}: {backend}", value, wanted, "x")
            rows.append(
                (
                    backend,
                    scenario,
                    us(ours.median),
                    us(theirs.median),
                    f"{value:.2f}x",
                    f">= {wanted:.2f}x",
                    _status(value >= wanted),
                )
            )
    headers = ("backend", "scenario", "ours us", "Flask-Session us", "FS/ours", "target", "status")
    title = (
        "Flask-Session 0.8 against ours (above 1: Flask-Session is slower;"
        " median of per-round ratios)"
    )
    return table(title, headers, rows)


def render_against_cookie(by_scenario: t.Mapping[str, Rounds], board: Scoreboard) -> str:
    """``untouched`` on every backend, ``read`` and ``write`` on memory: no slower than cookie."""
    rows = []
    for scenario, m in by_scenario.items():
        if m.cookie is None:
            continue
        for backend, ours in m.ours.items():
            if not (scenario == "untouched" or (backend == "memory" and scenario != "new")):
                continue
            value = paired(ours, m.cookie)
            board.at_most("no slower than cookie", f"{scenario}: {backend}", value, 1.0, "x")
            rows.append(
                (
                    backend,
                    scenario,
                    us(ours.median),
                    us(m.cookie.median),
                    f"{value:.2f}x",
                    "<= 1.00x",
                    _status(value <= 1.0),
                )
            )
    headers = ("backend", "scenario", "ours us", "cookie us", "ours/cookie", "target", "status")
    title = "Ours against Flask's cookie session (median of per-round ratios)"
    return table(title, headers, rows)
