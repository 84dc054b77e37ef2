"""Which contenders can run here, and where each keeps its sessions."""

from __future__ import annotations

import os
import typing as t
from dataclasses import dataclass

from apps import FLASK_SESSION_BACKENDS
from apps import flask_session_installed
from apps import SERVERSESSION_BACKENDS
from apps import serversession_has
from apps import Spec
from servers import Servers

ALL_BACKENDS = ("memory", "filesystem", "sqlite", "postgres", "redis")


@dataclass
class Places:
    """The scratch directory and servers of one run."""

    directory: str
    servers: Servers

    def server_missing(self, backend: str) -> str | None:
        if backend == "postgres" and self.servers.postgres is None:
            return "no PostgreSQL server"
        if backend == "redis" and self.servers.redis is None:
            return "no Redis server"
        return None

    def spec(self, family: str, backend: str, tag: str, *, redis_db: int = 0) -> Spec:
        """Return a spec whose storage no other section or contender shares."""
        if family == "cookie":
            return Spec("cookie", "cookie")
        base = os.path.join(self.directory, f"{tag}-{family}")
        if backend == "filesystem":
            return Spec(family, backend, base + "-files")
        if backend == "sqlite":
            return Spec(family, backend, f"sqlite:///{base}.sqlite")
        if backend == "postgres":
            assert self.servers.postgres is not None
            table = f"{tag}_{family}_sessions".replace("-", "_")
            return Spec(family, backend, self.servers.postgres.url(), table)
        if backend == "redis":
            assert self.servers.redis is not None
            return Spec(family, backend, self.servers.redis.url(redis_db), f"{tag}:{family}:")
        return Spec(family, backend)


def available(places: Places, family: str, backend: str) -> str | None:
    """Return why ``family`` cannot run on ``backend`` here, or None if it can."""
    if family == "fss":
        if backend not in SERVERSESSION_BACKENDS:
            return "no such backend"
        if not serversession_has(backend):
            module = SERVERSESSION_BACKENDS[backend][0]
            return f"flask_serversession.backends.{module} does not exist yet"
    elif family == "fs":
        if backend not in FLASK_SESSION_BACKENDS:
            return "Flask-Session 0.8 has no such backend"
        if not flask_session_installed():
            return "flask_session is not installed (pip install 'flask-session==0.8.*')"
    return places.server_missing(backend)


def lineup(
    places: Places,
    tag: str,
    *,
    families: t.Sequence[str] = ("cookie", "fss", "fs"),
    backends: t.Sequence[str] = ALL_BACKENDS,
) -> list[Spec]:
    """Return the runnable contenders, printing a note for each one skipped."""
    specs = []
    if "cookie" in families:
        specs.append(places.spec("cookie", "cookie", tag))
    for family in [f for f in families if f != "cookie"]:
        for backend in backends:
            if family == "fs" and backend not in FLASK_SESSION_BACKENDS:
                continue
            reason = available(places, family, backend)
            if reason is None:
                specs.append(places.spec(family, backend, tag))
            else:
                note(f"{Spec(family, backend).name} is skipped: {reason}.")
    return specs


_seen_notes: set[str] = set()


def note(message: str) -> None:
    """Print a note once per run."""
    if message not in _seen_notes:
        _seen_notes.add(message)
        print(f"NOTE: {message}", flush=True)
