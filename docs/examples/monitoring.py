from __future__ import annotations

import time
import typing as t

from flask import Flask
from flask import request_finished
from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Histogram
from prometheus_client import REGISTRY

from flask_serversession import ServerSession
from flask_serversession import SessionExpiredError
from flask_serversession import SessionNotFoundError
from flask_serversession import signals

EVENTS = ("created", "regenerated", "destroyed", "expired", "revoked")


def count_session_events(app: Flask, registry: CollectorRegistry = REGISTRY) -> None:
    """Count the session signals of ``app``, rejected tokens and 503 answers, into Prometheus."""
    events = Counter(
        "serversession_events", "Session events, by signal.", ["event"], registry=registry
    )
    unavailable = Counter(
        "serversession_unavailable_responses",
        "Responses with status 503, such as those of a session store that is down.",
        registry=registry,
    )
    for event in EVENTS:
        counter = events.labels(event)
        signal = getattr(signals, f"session_{event}")
        signal.connect(lambda sender, counter=counter, **extra: counter.inc(), app, weak=False)
    rejected = Counter(
        "serversession_tokens_rejected",
        "Tokens that opened no session, by reason.",
        ["reason"],
        registry=registry,
    )
    signals.session_token_rejected.connect(
        lambda sender, reason, **extra: rejected.labels(reason).inc(), app, weak=False
    )

    def count_unavailable(sender: Flask, response: t.Any, **extra: t.Any) -> None:
        if response.status_code == 503:
            unavailable.inc()

    request_finished.connect(count_unavailable, app, weak=False)


def add_health_check(
    app: Flask, server_session: ServerSession, registry: CollectorRegistry = REGISTRY
) -> None:
    """Add ``/healthz``: one read from the session store, timed; 503 while it fails."""
    latency = Histogram(
        "serversession_store_seconds", "One read of the session store.", registry=registry
    )
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
        latency.observe(elapsed)
        return {"status": "ok", "store_ms": round(elapsed * 1000, 1)}
