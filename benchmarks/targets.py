"""The performance targets, checked against measured figures."""

from __future__ import annotations

from dataclasses import dataclass

from stats import table


@dataclass(frozen=True)
class Check:
    target: str
    subject: str
    measured: str
    limit: str
    met: bool


class Scoreboard:
    """Collects target checks over a run and prints them at the end."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def at_most(self, target: str, subject: str, value: float, limit: float, unit: str) -> None:
        """Record ``value <= limit``; ``unit`` is ``"x"``, ``"s"`` or ``"ms"``."""
        self.checks.append(
            Check(target, subject, _fmt(value, unit), f"<= {_fmt(limit, unit)}", value <= limit)
        )

    def at_least(self, target: str, subject: str, value: float, limit: float, unit: str) -> None:
        """Record ``value >= limit``."""
        self.checks.append(
            Check(target, subject, _fmt(value, unit), f">= {_fmt(limit, unit)}", value >= limit)
        )

    def exactly(self, target: str, subject: str, value: int, wanted: int) -> None:
        self.checks.append(Check(target, subject, str(value), f"== {wanted}", value == wanted))

    def render(self) -> str:
        if not self.checks:
            return ""
        rows = [
            (c.target, c.subject, c.measured, c.limit, "met" if c.met else "MISSED")
            for c in self.checks
        ]
        missed = sum(not c.met for c in self.checks)
        title = f"Targets: {len(self.checks) - missed} met, {missed} missed"
        return table(title, ("target", "contender", "measured", "limit", "status"), rows)


def _fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:.2f} s"
