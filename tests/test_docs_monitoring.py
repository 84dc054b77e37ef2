"""The Monitoring page (docs/monitoring.rst): its code runs, its table names the
metrics the code registers, and every query of its alerts and of the Grafana
dashboard reads series and labels that exist."""

from __future__ import annotations

import functools
import io
import json
import re
import typing as t
from pathlib import Path

import pytest
import yaml
from flask import Flask

from flask_serversession.metrics import names

from .support.metrics import PrometheusReadings

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGE = DOCS / "monitoring.rst"
DASHBOARD = DOCS / "_static" / "grafana-dashboard.json"


def blocks(language: str) -> list[str]:
    text = PAGE.read_text(encoding="utf-8")
    found = re.findall(rf"\.\. code-block:: {language}\n\n((?:    .*\n|\n)+)", text)
    return [re.sub(r"^    ", "", block, flags=re.M) for block in found]


def registered(make_app: t.Callable[..., Flask]) -> dict[str, set[str]]:
    """The series names the code registers, each with its label names."""
    read = PrometheusReadings()
    make_app("memory", **read.config).test_client().post("/set", json={"a": 1})
    series: dict[str, set[str]] = {}
    for family in read.registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def check_query(query: str, series: dict[str, set[str]]) -> None:
    used = re.findall(r"\bserversession_\w+", query)
    assert used, query
    for name in used:
        assert name in series, (name, query)
        for group in re.findall(r"by \(([^)]*)\)", query):
            labels = {label.strip() for label in group.split(",")} - {"le"}
            assert labels <= series[name], (labels, name)
        for label in re.findall(r"\{(\w+)=", query):
            assert label in series[name], (label, name)


def test_the_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import metrics

    setup, multiprocess, gunicorn_conf, opentelemetry = blocks("python")
    monkeypatch.chdir(tmp_path)  # the example's SQLite file goes to its instance folder
    namespace: dict[str, t.Any] = {"__name__": "monitoring_example"}
    exec(setup, namespace)
    app = namespace["app"]
    app.add_url_rule("/visit", "visit", lambda: __import__("flask").session.update(n=1) or "ok")
    assert app.test_client().get("/visit").status_code == 200
    scraped = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'serversession_sessions_created_total{backend="sqlalchemy"}' in scraped

    (tmp_path / "multiproc").mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "multiproc"))
    exec(multiprocess, namespace)
    assert app.test_client().get("/metrics").status_code == 200
    exec(gunicorn_conf, namespace)
    namespace["child_exit"](None, type("Worker", (), {"pid": 999999})())

    # The global meter provider can be set once per process: the example's is
    # taken as it is set, and handed to the extension as the global one.
    from opentelemetry.sdk.metrics import export

    from flask_serversession.metrics import opentelemetry as recorder_module

    exported = io.StringIO()
    console = functools.partial(export.ConsoleMetricExporter, out=exported)
    monkeypatch.setattr(export, "ConsoleMetricExporter", console)
    provided: list[t.Any] = []
    monkeypatch.setattr(metrics, "set_meter_provider", provided.append)
    monkeypatch.setattr(recorder_module, "get_meter_provider", lambda: provided[0])
    second = Flask("second")
    second.secret_key = "change me"
    exec(opentelemetry, {**namespace, "app": second})
    second.add_url_rule("/visit", "visit", lambda: __import__("flask").session.update(n=1) or "ok")
    assert second.test_client().get("/visit").status_code == 200
    provided[0].shutdown()
    assert "serversession.sessions.created" in exported.getvalue()


def test_the_table_names_every_metric_as_the_code_does() -> None:
    text = PAGE.read_text(encoding="utf-8")
    table = text.split("   * - Prometheus name\n", 1)[1].split("\n\n", 1)[0]
    rows = [row.split("\n     - ") for row in table.split("   * - ")[1:]]
    documented = [tuple(" ".join(cell.split()) for cell in row[:4]) for row in rows]
    suffix = {"counter": "_total", "histogram": "", "gauge": ""}
    assert documented == [
        (
            f"``{m.name}{suffix[m.kind]}``",
            f"``{m.otel}``",
            m.kind,
            ", ".join(f"``{label}``" for label in m.labels),
        )
        for m in names.METRICS
    ]


def test_every_alert_reads_series_that_exist(make_app: t.Callable[..., Flask]) -> None:
    (rules,) = blocks("yaml")
    series = registered(make_app)
    alerts = yaml.safe_load(rules)["groups"][0]["rules"]
    assert len(alerts) == 6
    for alert in alerts:
        check_query(alert["expr"], series)


def test_every_dashboard_panel_reads_series_that_exist(make_app: t.Callable[..., Flask]) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    series = registered(make_app)
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            check_query(target["expr"], series)
            queried.update(re.findall(r"\bserversession_\w+", target["expr"]))
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for wanted in ("created", "ended", "p50", "p99", "error", "rejected", "live", "size"):
        assert wanted in titles
    # Every metric of the table has a panel.
    assert {re.sub(r"_(total|bucket|count)$", "", name) for name in queried} >= {
        m.name for m in names.METRICS
    }
