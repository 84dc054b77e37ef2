"""Built-in metrics (docs: monitoring.rst): each counter after a known sequence of
requests, on every backend, through a real prometheus_client registry and the real
OpenTelemetry SDK; a Redis outage; safe, bounded labels; the live gauge's pace."""

from __future__ import annotations

import gc
import typing as t

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_serversession import ConfigError
from flask_serversession import ServerSession
from flask_serversession import SessionExpiredError
from flask_serversession import signals
from flask_serversession.backends.base import Backend
from flask_serversession.backends.base import innermost
from flask_serversession.backends.memory import MemoryBackend
from flask_serversession.metrics import names
from flask_serversession.metrics import recorder
from flask_serversession.metrics.names import backend_label

from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of
from .support.metrics import OpenTelemetryReadings
from .support.metrics import PrometheusReadings
from .support.metrics import readings
from .support.redis_servers import RedisServer

#: The backends measured, and the ``backend`` label each one gets.
LABELS = {
    "memory": "memory",
    "filesystem": "filesystem",
    "sqlite": "sqlalchemy",
    "postgres": "sqlalchemy",
    "redis": "redis",
}
EXPORTERS = ("prometheus", "opentelemetry")


def counted(read: t.Any, metric: names.Metric, **labels: str) -> float:
    """A series' value; a series OpenTelemetry has not seen yet counts 0."""
    value = read.value(metric, **labels)
    return 0.0 if value is None else value


def client_with(app: Flask, cookie: str) -> FlaskClient:
    client = app.test_client()
    client.set_cookie("session", cookie)
    return client


def forged(token: str) -> str:
    sid, signature = token.split(".")
    return sid + "." + ("A" if signature[0] != "A" else "B") + signature[1:]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("backend_name", list(LABELS))
def test_each_counter_after_a_known_sequence(
    make_app: t.Callable[..., Flask], backend: Backend, backend_name: str, exporter: str
) -> None:
    read = readings(exporter)
    app = make_app(
        backend,
        SERVERSESSION_USER_KEY="user",
        SERVERSESSION_MAX_SESSIONS_PER_USER=2,
        **read.config,
    )
    store_of(app).clock = clock = Clock()
    label = LABELS[backend_name]

    def ended(reason: str) -> float:
        return counted(read, names.ENDED, backend=label, reason=reason)

    def calls(operation: str) -> float:
        return counted(read, names.DURATION, backend=label, operation=operation)

    visitor = app.test_client()
    visitor.post("/set", json={"x": 1})  # create
    assert visitor.get("/dump").json == {"x": 1}  # read
    visitor.post("/set", json={"y": "2"})  # write
    visitor.post("/regenerate")
    token = t.cast(str, session_cookie(visitor))
    visitor.post("/destroy")
    for _ in range(3):  # one user, three sign-ins, a cap of two
        app.test_client().post("/set", json={"user": "u"})
    with app.test_request_context():
        (kept, *_), extension = store_of(app).users.sessions("u"), ServerSession()
        assert extension.revoke(kept.storage_key)
    late = app.test_client()
    late.post("/set", json={"z": 1})
    clock.advance(hours=25)
    assert late.get("/dump").json == {}  # met expired
    with app.app_context():
        purged = extension.purge_expired()
    for cookie in ("not a token", forged(token), token):
        client_with(app, cookie).get("/dump")

    assert counted(read, names.CREATED, backend=label) == 5
    assert {reason: ended(reason) for reason in names.END_REASONS} == {
        "destroyed": 1, "regenerated": 1, "revoked": 1, "capped": 1, "reused": 0, "expired": 1,
    }  # fmt: skip
    assert counted(read, names.PURGED, backend=label) == purged
    assert purged == (0 if backend_name == "redis" else 2)  # Redis expires records by itself
    assert {reason: counted(read, names.REJECTED, reason=reason) for reason in
            names.REJECT_REASONS} == {"malformed": 1, "bad_signature": 1, "unknown": 1}  # fmt: skip
    assert counted(read, names.ROTATIONS, backend=label) == 0
    assert calls("create") == 6  # five sessions and the regenerated one
    assert calls("take") == 3  # regenerate, the cap, the revoke
    assert calls("delete") == 1
    assert calls("purge") == 1
    assert calls("update") >= 1
    assert calls("load") >= 5
    assert counted(read, names.SIZE, backend=label) == calls("create") + calls("update")
    for operation in names.OPERATIONS:
        assert counted(read, names.ERRORS, backend=label, operation=operation) == 0


@pytest.mark.parametrize("backend_name", list(LABELS))
def test_rotations_and_a_reused_token(
    make_app: t.Callable[..., Flask], backend: Backend, backend_name: str
) -> None:
    read = PrometheusReadings()
    app = make_app(backend, SERVERSESSION_ROTATE_EVERY=3600, **read.config)
    store_of(app).clock = clock = Clock()
    label = LABELS[backend_name]
    owner = app.test_client()
    owner.post("/set", json={"user": "alice"})
    old = t.cast(str, session_cookie(owner))
    clock.advance(minutes=61)
    assert owner.get("/dump").json == {"user": "alice"}  # rotates
    assert session_cookie(owner) != old
    assert owner.get("/dump").json == {"user": "alice"}  # the new token is used
    clock.advance(seconds=61)
    assert client_with(app, old).get("/dump").json == {}  # a thief's copy, after the grace

    assert read.value(names.ROTATIONS, backend=label) == 1
    assert read.value(names.ENDED, backend=label, reason="reused") == 1
    assert read.value(names.ENDED, backend=label, reason="revoked") == 0
    assert read.value(names.CREATED, backend=label) == 1


def test_a_redis_outage_is_counted_by_operation_and_answered_503(
    make_app: t.Callable[..., Flask], make_redis_server: t.Callable[..., RedisServer]
) -> None:
    read = PrometheusReadings()
    server = make_redis_server()
    app = make_app("redis", SERVERSESSION_REDIS=server.client(), **read.config)
    client = app.test_client()
    client.post("/set", json={"cart": ["tea"]})

    server.kill()
    assert client.get("/dump").status_code == 503
    assert client.post("/append/cart", json="milk").status_code == 503
    assert app.test_client().post("/set", json={"a": 1}).status_code == 503

    def errors(operation: str) -> float | None:
        return read.value(names.ERRORS, backend="redis", operation=operation)

    assert errors("load") == 2
    assert errors("create") == 1
    assert errors("update") == 0
    assert read.value(names.DURATION, backend="redis", operation="load") == 2
    assert read.value(names.CREATED, backend="redis") == 1
    server.start()
    assert client.get("/dump").status_code == 200
    assert errors("load") == 2


def test_labels_hold_no_id_token_key_or_user(make_app: t.Callable[..., Flask]) -> None:
    read = PrometheusReadings()
    app = make_app(
        "memory", SERVERSESSION_USER_KEY="user", SERVERSESSION_MAX_SESSIONS_PER_USER=1,
        SERVERSESSION_ROTATE_EVERY=3600, **read.config,
    )  # fmt: skip
    for user in ("alice", "alice", "bob"):
        client = app.test_client()
        client.post("/set", json={"user": user})
        client.post("/regenerate")
        client.post("/destroy")
        client_with(app, "x" * 43).get("/dump")
    allowed = {
        "backend": {"memory"},
        "reason": {*names.END_REASONS, *names.REJECT_REASONS},
        "operation": set(names.OPERATIONS),
        "le": None,
    }
    found = read.label_values()
    assert set(found) == set(allowed)
    for name, values in found.items():
        if allowed[name] is not None:
            assert values <= t.cast(set[str], allowed[name]), name


class Custom(MemoryBackend):
    """A backend of an app's own, which its class name labels."""


class Wrapper(MemoryBackend):
    """A wrapper that names the backend it wraps, as metered ones do."""

    def __init__(self, wrapped: Backend) -> None:
        super().__init__()
        self.wrapped = wrapped


def test_the_backend_label_is_the_innermost_backends_kind_or_class(
    make_app: t.Callable[..., Flask], tmp_path: t.Any
) -> None:
    assert backend_label(Custom()) == "memory"  # a subclass of ours keeps its kind
    assert backend_label(Wrapper(Wrapper(MemoryBackend()))) == "memory"

    class Elsewhere(Backend):
        """An app's own backend, not built on one of ours."""

    Elsewhere.__abstractmethods__ = frozenset()
    assert backend_label(Elsewhere()) == "Elsewhere"
    read = PrometheusReadings()
    app = make_app(Custom(), **read.config)
    assert isinstance(innermost(store_of(app).backend), Custom)
    app.test_client().post("/set", json={"a": 1})
    assert read.value(names.CREATED, backend="memory") == 1


@pytest.mark.parametrize("backend_name", list(LABELS))
def test_the_live_gauge_only_where_counting_is_cheap_and_at_most_once_a_minute(
    make_app: t.Callable[..., Flask],
    backend: Backend,
    backend_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(recorder, "monotonic", lambda: now[0])
    for read in (PrometheusReadings(), OpenTelemetryReadings()):
        app = make_app(backend, **read.config)
        for _ in range(2):
            app.test_client().post("/set", json={"a": 1})
        label = LABELS[backend_name]
        if label not in ("memory", "sqlalchemy"):
            assert read.value(names.LIVE, backend=label) is None
            continue
        assert read.value(names.LIVE, backend=label) == 2
        app.test_client().post("/set", json={"a": 1})
        now[0] += 59
        assert read.value(names.LIVE, backend=label) == 2  # read less than a minute ago
        now[0] += 1
        assert read.value(names.LIVE, backend=label) == 3
        with app.app_context():
            ServerSession().clear()


def test_metrics_off_leaves_the_backend_unwrapped(make_app: t.Callable[..., Flask]) -> None:
    backend = MemoryBackend()
    app = make_app(backend)
    assert store_of(app).backend is backend


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"SERVERSESSION_METRICS": "statsd"}, "SERVERSESSION_METRICS = 'statsd'"),
        ({"SERVERSESSION_METRICS": True}, "None, 'prometheus' or 'opentelemetry'"),
        (
            {"SERVERSESSION_METRICS": "prometheus", "SERVERSESSION_METRICS_REGISTRY": {}},
            "SERVERSESSION_METRICS_REGISTRY = {} is not valid: expected a prometheus_client",
        ),
        (
            {"SERVERSESSION_METRICS": "opentelemetry", "SERVERSESSION_METRICS_REGISTRY": 1},
            "expected an OpenTelemetry MeterProvider",
        ),
        ({"SERVERSESSION_METRICS_REGISTRY": object()}, "SERVERSESSION_METRICS = None"),
    ],
)
def test_bad_settings_name_the_key_and_the_fix(
    make_app: t.Callable[..., Flask], config: dict[str, t.Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{")):
        make_app(**config)


def test_the_checks_see_the_backend_under_the_wrapper(make_app: t.Callable[..., Flask]) -> None:
    from flask_serversession.checks import run_checks

    app = make_app("memory", **PrometheusReadings().config)
    assert store_of(app).backend is not innermost(store_of(app).backend)
    with app.app_context():
        assert "serversession.E008" in {finding.id for finding in run_checks(app)}


def test_the_receivers_go_with_the_app(make_app: t.Callable[..., Flask]) -> None:
    gc.collect()
    before = len(signals.session_expired.receivers)
    app = make_app("memory", **PrometheusReadings().config)
    assert len(signals.session_expired.receivers) == before + 1
    del app
    gc.collect()
    assert len(signals.session_expired.receivers) == before


def test_another_apps_metrics_do_not_need_an_app_context_for_the_store_api(
    make_app: t.Callable[..., Flask],
) -> None:
    """A store used outside any app context sends nothing, whoever else listens.

    With one app's metrics listening, another app's store API called from a
    script raised RuntimeError ("Working outside of application context")
    where it should raise SessionExpiredError.
    """
    listening = make_app("memory", **PrometheusReadings().config)
    app = make_app("memory")
    clock = Clock()
    store_of(app).clock = clock
    with app.app_context():
        token = store_of(app).create({"a": 1})
    clock.advance(days=30)
    assert signals.session_expired.receivers
    with pytest.raises(SessionExpiredError):
        store_of(app).fetch(token)
    del listening
