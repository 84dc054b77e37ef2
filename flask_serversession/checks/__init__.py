from __future__ import annotations

import typing as t
from dataclasses import asdict
from dataclasses import dataclass

if t.TYPE_CHECKING:
    from flask import Flask

Severity = t.Literal["error", "warning"]

#: Every check by its stable id: what it looks for. The letter says the
#: severity (E: error, W: warning), as in Django's check ids.
CHECKS: dict[str, str] = {
    "serversession.E001": "SESSION_COOKIE_SECURE is off",
    "serversession.E002": "SESSION_COOKIE_HTTPONLY is off",
    "serversession.W003": "SESSION_COOKIE_SAMESITE is unset or 'None'",
    "serversession.E004": "SECRET_KEY (or a fallback) is missing or under 32 bytes",
    "serversession.W005": "SERVERSESSION_SIGN_ID is off",
    "serversession.W006": "SERVERSESSION_ABSOLUTE_LIFETIME is unset",
    "serversession.W007": "header mode is on in an app that serves pages",
    "serversession.E008": "sessions live in the memory of one process",
    "serversession.W009": "sessions live on this host's disk and the app looks multi-host",
    "serversession.E010": "the session store cannot be reached",
    "serversession.W011": "a setting of the session store could not be read",
    "serversession.E012": "Redis may evict live sessions (maxmemory-policy)",
    "serversession.W013": "Redis keeps no copy on disk (no RDB save, no AOF)",
    "serversession.W014": "PostgreSQL synchronous_commit is off for session writes",
    "serversession.E015": "others can write the session directory or a parent of it",
    "serversession.E016": "device-bound sessions with SESSION_COOKIE_SECURE off",
    "serversession.W017": "the session cookie could have the __Host- prefix and has not",
    "serversession.E018": "a SERVERSESSION_* key that no setting has (a typo?)",
    "serversession.E019": "the session table in the app's database lacks a column it needs",
    "serversession.W020": "SERVERSESSION_SQLALCHEMY_EXTRAS copies values into clear columns"
    " while encryption is on",
}


@dataclass(frozen=True)
class Finding:
    """One problem that ``flask serversession check`` reports.

    :param id: the check's stable id, a key of :data:`CHECKS`.
    :param setting: the config key or server setting at fault.
    :param value: what it is now, as shown to the user (never a secret); None
        when there is nothing to show.
    :param why: why it matters, one sentence.
    :param fix: what to do about it.
    """

    id: str
    setting: str
    value: str | None
    why: str
    fix: str

    @property
    def severity(self) -> Severity:
        """``"error"`` or ``"warning"``, from the letter of the id."""
        return "error" if self.id.split(".")[-1].startswith("E") else "warning"

    def line(self) -> str:
        """The finding as one line of text."""
        subject = self.setting if self.value is None else f"{self.setting} = {self.value}"
        return f"{self.severity} {self.id} {subject}: {self.why} Fix: {self.fix}"

    def as_dict(self) -> dict[str, t.Any]:
        """The finding as a JSON object: ``id``, ``severity``, then the other fields."""
        return {"id": self.id, "severity": self.severity, **asdict(self)}


def run_checks(app: Flask, *, ignore: t.Collection[str] = ()) -> list[Finding]:
    """Every finding for ``app``, config first, then its session store.

    Reads server settings only; changes nothing.

    :param ignore: ids of checks to leave out, keys of :data:`CHECKS`.
    :raise ValueError: an id in ``ignore`` names no check.
    """
    from .keys import check_keys
    from .servers import check_store
    from .settings import check_settings

    unknown = sorted(set(ignore) - CHECKS.keys())
    if unknown:
        raise ValueError(f"No check has the id {', '.join(map(repr, unknown))}.")
    findings = [*check_keys(app), *check_settings(app), *check_store(app)]
    return [finding for finding in findings if finding.id not in ignore]
