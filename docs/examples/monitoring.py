from __future__ import annotations

import time
import typing as t

from flask import Flask

from flask_serversession import ServerSession
from flask_serversession import SessionExpiredError
from flask_serversession import SessionNotFoundError


def add_health_check(app: Flask, server_session: ServerSession) -> None:
    """Add ``/healthz``: one read from the session store, timed; 503 while it fails."""
    probe: dict[str, str] = {}

    @app.get("/healthz")
    def healthz() -> dict[str, t.Any]:
        started = time.perf_counter()
        try:
            server_session.get(probe["token"])
        except (KeyError, SessionNotFoundError, SessionExpiredError):
            # First call, or the probe's own session expired: make a new one.
            probe["token"] = server_session.create({"health_check": True})
        elapsed = time.perf_counter() - started
        return {"status": "ok", "store_ms": round(elapsed * 1000, 1)}
