from __future__ import annotations

import typing as t
from datetime import datetime
from datetime import timezone

from flask import Flask
from flask import request_finished

from ..backends.base import Backend
from .names import backend_label
from .names import COUNTED
from .receivers import Receivers
from .recorder import Recorder
from .wrapper import MeteredBackend

#: The values of ``SERVERSESSION_METRICS`` that turn metrics on.
KINDS = ("prometheus", "opentelemetry")


def _recorder(kind: str, registry: t.Any, backend: str) -> Recorder:
    if kind == "prometheus":
        from .prometheus import PrometheusRecorder

        if registry is None:
            from prometheus_client import REGISTRY as registry
        return PrometheusRecorder(registry, backend)
    from .opentelemetry import OpenTelemetryRecorder

    return OpenTelemetryRecorder(registry, backend)


def install(
    app: Flask, backend: Backend, kind: str, registry: t.Any, *, revoke_on_reuse: bool
) -> Backend:
    """Measure ``backend`` and the session signals of ``app``; return the backend to use.

    :param kind: ``"prometheus"`` or ``"opentelemetry"``.
    :param registry: the ``CollectorRegistry`` or ``MeterProvider``; the global one when None.
    :param revoke_on_reuse: a reused token ends its session.
    """
    label = backend_label(backend)
    recorder = _recorder(kind, registry, label)
    metered = MeteredBackend(backend, recorder)
    Receivers(recorder, revoke_on_reuse=revoke_on_reuse, settle=metered.settle).connect(app)
    if label in COUNTED:
        refresh = recorder.live(lambda: metered.count(datetime.now(timezone.utc)))
        if refresh is not None:
            request_finished.connect(lambda sender, **extra: refresh(), app, weak=False)
    return metered
