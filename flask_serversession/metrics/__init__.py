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

#: Where an app keeps its metrics' signal receivers alive.
EXTENSION_KEY = "serversession.metrics"


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
    receivers = Receivers(recorder, revoke_on_reuse=revoke_on_reuse, settle=metered.settle)
    receivers.connect(app)
    # Signals hold receivers weakly: the app keeps them, and they end with it.
    kept: list[object] = [receivers]
    if label in COUNTED:
        refresh = recorder.live(lambda: metered.count(datetime.now(timezone.utc)))
        if refresh is not None:

            def refresh_after(sender: Flask, **extra: t.Any) -> None:
                refresh()

            request_finished.connect(refresh_after, app)
            kept.append(refresh_after)
    app.extensions[EXTENSION_KEY] = kept
    return metered
