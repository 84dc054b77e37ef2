"""The app that ``tests/test_metrics_gunicorn.py`` serves with gunicorn, metrics on.

Configured from ``METRICS_*`` environment variables (Flask's ``from_prefixed_env``):
``METRICS_SECRET_KEY`` and the backend's keys. ``PROMETHEUS_MULTIPROC_DIR`` puts
``prometheus_client`` in multiprocess mode; ``/metrics`` adds every worker's
counts up, as the Monitoring page shows. ``/park`` holds a sync worker until
``n`` of them are parked, so that ``n`` parked requests are served by ``n``
workers. Gunicorn loads it as ``tests.support.metrics_app:create_app()``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from flask import abort
from flask import Flask
from flask import jsonify
from flask import session
from flask.typing import ResponseReturnValue
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client import multiprocess

from flask_serversession import ServerSession

#: How long a parked request waits for the others, at most.
PARK_TIMEOUT = 20.0


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.from_prefixed_env("METRICS")
    app.config["SERVERSESSION_METRICS"] = "prometheus"
    ServerSession(app)

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return jsonify(pid=os.getpid())

    @app.post("/new")
    def new() -> ResponseReturnValue:
        session["n"] = 1
        return jsonify(pid=os.getpid())

    @app.post("/park/<int:n>")
    def park(n: int) -> ResponseReturnValue:
        directory = Path(app.config["PARK_DIR"])
        (directory / str(os.getpid())).touch()
        deadline = time.monotonic() + PARK_TIMEOUT
        while len(list(directory.iterdir())) < n:
            if time.monotonic() > deadline:
                abort(504)
            time.sleep(0.01)
        session["n"] = 1
        return jsonify(pid=os.getpid())

    @app.get("/metrics")
    def metrics() -> ResponseReturnValue:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), 200, {"Content-Type": "text/plain; version=0.0.4"}

    return app
