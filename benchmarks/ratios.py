"""The floors table and the ratio tables, with each target marked met or missed."""

from __future__ import annotations

import typing as t
from dataclasses import dataclass
from dataclasses import field

from floors import OPERATIONS
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
    ("filesystem", "read"): 2.0,
    ("filesystem", "write"): 1.5,
}
FLOOR_SCENARIOS = ("read", "write", "new")


@dataclass
class Medians:
    """Median seconds per request (or per driver operation) of one scenario."""

    cookie: float | None = None
    ours: dict[str, float] = field(default_factory=dict)
    flask_session: dict[str, float] = field(default_factory=dict)
    #: Driver medians by backend, then floor label ("" or "fsync" / "no fsync").
    drivers: dict[str, dict[str, float]] = field(default_factory=dict)


def _status(met: bool) -> str:
    return "met" if met else "MISSED"


def _label(backend: str, label: str) -> str:
    return f"{backend} ({label})" if label else backend


def floor_rows(by_scenario: t.Mapping[str, Medians]) -> list[tuple[str, str, str, float, float]]:
    """(backend, label, scenario, memory, driver) for every floor measured."""
    rows = []
    for scenario in FLOOR_SCENARIOS:
        m = by_scenario.get(scenario)
        if m is None or "memory" not in m.ours:
            continue
        for backend, labels in m.drivers.items():
            for label, driver in labels.items():
                rows.append((backend, label, scenario, m.ours["memory"], driver))
    return sorted(rows, key=lambda r: (r[0], r[1], FLOOR_SCENARIOS.index(r[2])))


def render_floors(by_scenario: t.Mapping[str, Medians]) -> str:
    rows = [
        (_label(b, label), s, OPERATIONS[s], us(memory), us(driver), us(memory + driver))
        for b, label, s, memory, driver in floor_rows(by_scenario)
    ]
    headers = ("backend", "scenario", "driver operations", "memory us", "driver us", "floor us")
    title = (
        "Floors: the memory backend's cost through the app + the bare driver's time"
        " for the scenario's storage operations (medians, same rounds)"
    )
    return table(title, headers, rows)


def render_against_floor(
    by_scenario: t.Mapping[str, Medians], matching: t.Mapping[str, str], board: Scoreboard
) -> str:
    """Ours over the floor; ``matching`` names the floor label a target applies to."""
    rows = []
    for backend, label, scenario, memory, driver in floor_rows(by_scenario):
        ours = by_scenario[scenario].ours.get(backend)
        if ours is None:
            continue
        value = ours / (memory + driver)
        counted = matching.get(backend, "") == label
        status = _status(value <= FLOOR_LIMIT) if counted else "(other floor)"
        if counted:
            board.at_most("ours/floor", f"{scenario}: {backend}", value, FLOOR_LIMIT, "x")
        rows.append(
            (
                _label(backend, label),
                scenario,
                us(ours),
                us(memory + driver),
                f"{value:.2f}x",
                f"<= {FLOOR_LIMIT:.2f}x",
                status,
            )
        )
    headers = ("backend", "scenario", "ours us", "floor us", "ours/floor", "target", "status")
    return table("Ours against the floor", headers, rows)


def render_against_flask_session(by_scenario: t.Mapping[str, Medians], board: Scoreboard) -> str:
    rows = []
    backends = sorted({b for m in by_scenario.values() for b in m.flask_session})
    for backend in backends:
        for scenario, m in by_scenario.items():
            ours, theirs = m.ours.get(backend), m.flask_session.get(backend)
            if ours is None or theirs is None:
                continue
            value = theirs / ours
            wanted = FLASK_SESSION_TARGETS.get((backend, scenario), 1.0)
            board.at_least("Flask-Session/ours", f"{scenario}: {backend}", value, wanted, "x")
            rows.append(
                (
                    backend,
                    scenario,
                    us(ours),
                    us(theirs),
                    f"{value:.2f}x",
                    f">= {wanted:.2f}x",
                    _status(value >= wanted),
                )
            )
    headers = ("backend", "scenario", "ours us", "Flask-Session us", "FS/ours", "target", "status")
    title = "Flask-Session 0.8 against ours (above 1: Flask-Session is slower)"
    return table(title, headers, rows)


def render_against_cookie(by_scenario: t.Mapping[str, Medians], board: Scoreboard) -> str:
    """``untouched`` on every backend, ``read`` and ``write`` on memory: no slower than cookie."""
    rows = []
    for scenario, m in by_scenario.items():
        if m.cookie is None:
            continue
        for backend, ours in m.ours.items():
            if not (scenario == "untouched" or (backend == "memory" and scenario != "new")):
                continue
            value = ours / m.cookie
            board.at_most("no slower than cookie", f"{scenario}: {backend}", value, 1.0, "x")
            rows.append(
                (
                    backend,
                    scenario,
                    us(ours),
                    us(m.cookie),
                    f"{value:.2f}x",
                    "<= 1.00x",
                    _status(value <= 1.0),
                )
            )
    headers = ("backend", "scenario", "ours us", "cookie us", "ours/cookie", "target", "status")
    return table("Ours against Flask's cookie session", headers, rows)
