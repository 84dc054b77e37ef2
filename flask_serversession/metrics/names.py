from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ..backends.base import Backend
from ..backends.base import innermost


@dataclass(frozen=True)
class Metric:
    """One metric as both exporters name it.

    :param name: the Prometheus name, without the ``_total`` a counter gets.
    :param otel: the OpenTelemetry instrument name.
    :param kind: ``"counter"``, ``"histogram"`` or ``"gauge"``.
    :param labels: the label names, in order.
    :param unit: the OpenTelemetry unit.
    :param doc: the help text.
    """

    name: str
    otel: str
    kind: str
    labels: tuple[str, ...]
    unit: str
    doc: str


CREATED = Metric(
    "serversession_sessions_created", "serversession.sessions.created", "counter",
    ("backend",), "{session}", "Sessions written for the first time.",
)  # fmt: skip
ENDED = Metric(
    "serversession_sessions_ended", "serversession.sessions.ended", "counter",
    ("backend", "reason"), "{session}", "Sessions ended, by reason.",
)  # fmt: skip
PURGED = Metric(
    "serversession_sessions_purged", "serversession.sessions.purged", "counter",
    ("backend",), "{session}", "Expired records a purge removed.",
)  # fmt: skip
REJECTED = Metric(
    "serversession_tokens_rejected", "serversession.tokens.rejected", "counter",
    ("reason",), "{token}", "Tokens that opened no session, by reason.",
)  # fmt: skip
ROTATIONS = Metric(
    "serversession_rotations", "serversession.rotations", "counter",
    ("backend",), "{rotation}", "Session ids rotated (SERVERSESSION_ROTATE_EVERY).",
)  # fmt: skip
DURATION = Metric(
    "serversession_store_duration_seconds", "serversession.store.duration", "histogram",
    ("backend", "operation"), "s", "Time of each backend call, by operation.",
)  # fmt: skip
ERRORS = Metric(
    "serversession_store_errors", "serversession.store.errors", "counter",
    ("backend", "operation"), "{error}", "Backend calls that raised BackendError, by operation.",
)  # fmt: skip
SIZE = Metric(
    "serversession_size_bytes", "serversession.size", "histogram",
    ("backend",), "By", "Stored size of a session at each save.",
)  # fmt: skip
LIVE = Metric(
    "serversession_live_sessions", "serversession.live_sessions", "gauge",
    ("backend",), "{session}", "Live sessions, counted at most once a minute.",
)  # fmt: skip

#: Every metric, in the order of the Monitoring page.
METRICS = (CREATED, ENDED, PURGED, REJECTED, ROTATIONS, DURATION, ERRORS, SIZE, LIVE)

#: Why a session ended: the ``reason`` label of :data:`ENDED`.
END_REASONS = ("destroyed", "regenerated", "revoked", "capped", "reused", "expired")
#: Why a token opened no session: the ``reason`` label of :data:`REJECTED`.
REJECT_REASONS = ("malformed", "bad_signature", "unknown")
#: The backend calls timed: the ``operation`` label of :data:`DURATION` and :data:`ERRORS`.
OPERATIONS = (
    "load", "create", "update", "touch", "take", "delete",
    "purge", "count", "items", "clear", "user_records", "add", "rewrite",
)  # fmt: skip

#: Seconds of the duration buckets: a loopback call takes 0.1 to 2 ms, a
#: remote one a few ms; the upper ones catch a store that stalls.
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
#: Bytes of the size buckets, up to the default SERVERSESSION_MAX_SIZE (1 MiB).
SIZE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)

#: The ``backend`` label of the project's own backends, by class name.
_BUILT_IN = {
    "MemoryBackend": "memory",
    "FileSystemBackend": "filesystem",
    "SQLAlchemyBackend": "sqlalchemy",
    "RedisBackend": "redis",
}
#: The backends whose count() is cheap enough for the live gauge (see the Scaling page).
COUNTED = frozenset({"memory", "sqlalchemy"})


def backend_label(backend: Backend) -> str:
    """The ``backend`` label of ``backend``: never an id, a path or a URL.

    Wrappers are looked through (:func:`~flask_serversession.backends.base.innermost`);
    a project backend, or a subclass of one, is named by its kind, any other by
    its class name, so the label set stays bounded.
    """
    for cls in type(innermost(backend)).__mro__:
        if cls.__module__.startswith("flask_serversession.") and cls.__name__ in _BUILT_IN:
            return _BUILT_IN[cls.__name__]
    return type(innermost(backend)).__name__


def labelled(metric: Metric, backend: str, labels: t.Mapping[str, str]) -> dict[str, str]:
    """The full label set of one series of ``metric``."""
    if "backend" in metric.labels:
        return {"backend": backend, **labels}
    return dict(labels)
