"""Metrics under a real gunicorn (docs: monitoring.rst): in prometheus_client's
multiprocess mode the counts of four workers add up in one scrape."""

from __future__ import annotations

import http.client
import json
import secrets
import threading
import typing as t
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .support.gunicorn import Gunicorn
from .support.gunicorn import HOST

APP = "tests.support.metrics_app:create_app()"
WORKERS = 4
#: Requests after the parked ones; a bounded loop, on loopback only.
REQUESTS = 60


def post(port: int, path: str) -> tuple[int, dict[str, t.Any]]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("POST", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_four_workers_counts_add_up(tmp_path: Path) -> None:
    multiproc, parked = tmp_path / "multiproc", tmp_path / "parked"
    multiproc.mkdir()
    parked.mkdir()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "METRICS_SECRET_KEY": secrets.token_hex(16),
        "METRICS_SERVERSESSION_BACKEND": "sqlalchemy",
        "METRICS_SERVERSESSION_SQLALCHEMY_URI": f"sqlite:///{tmp_path / 'sessions.db'}",
        "METRICS_PARK_DIR": str(parked),
    }
    with Gunicorn(
        APP, env=env, log_file=tmp_path / "gunicorn.log", workers=WORKERS, threads=1
    ) as server:
        # Sync workers serve one request each: four parked requests take four workers.
        answers: list[tuple[int, dict[str, t.Any]]] = []
        threads = [
            threading.Thread(target=lambda: answers.append(post(server.port, f"/park/{WORKERS}")))
            for _ in range(WORKERS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [status for status, _ in answers] == [200] * WORKERS, server.log()
        assert len({body["pid"] for _, body in answers}) == WORKERS
        for _ in range(REQUESTS):
            assert post(server.port, "/new")[0] == 200
        samples = scrape(server.port)

    created = samples[("serversession_sessions_created_total", (("backend", "sqlalchemy"),))]
    assert created == WORKERS + REQUESTS
    calls = (("backend", "sqlalchemy"), ("operation", "create"))
    assert samples[("serversession_store_duration_seconds_count", calls)] == WORKERS + REQUESTS
    assert samples[("serversession_store_errors_total", calls)] == 0
    # Each worker wrote its own file; the scrape read them all.
    assert len({path.name.rsplit("_", 1)[1] for path in multiproc.glob("counter_*.db")}) >= WORKERS
    # The live gauge: a worker counted at the end of a request; the newest reading wins.
    live = samples[("serversession_live_sessions", (("backend", "sqlalchemy"),))]
    assert 1 <= live <= WORKERS + REQUESTS
