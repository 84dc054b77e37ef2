from __future__ import annotations

import typing as t
from functools import partial

from opentelemetry.metrics import CallbackOptions
from opentelemetry.metrics import get_meter_provider
from opentelemetry.metrics import MeterProvider
from opentelemetry.metrics import Observation

from .names import DURATION
from .names import DURATION_BUCKETS
from .names import labelled
from .names import LIVE
from .names import Metric
from .names import METRICS
from .names import SIZE_BUCKETS
from .recorder import Every
from .recorder import Instrument
from .recorder import Recorder

#: The meter every instrument belongs to.
METER_NAME = "flask_serversession"


class OpenTelemetryRecorder(Recorder):
    """Records through the OpenTelemetry metrics API; the app owns the SDK and exporter.

    :param provider: the meter provider; the global one when None.
    :param backend: the ``backend`` attribute.
    """

    def __init__(self, provider: MeterProvider | None, backend: str) -> None:
        super().__init__(backend)
        provider = provider if provider is not None else get_meter_provider()
        self.meter = provider.get_meter(METER_NAME)
        self._instruments: dict[str, t.Any] = {}
        for metric in METRICS:
            if metric.kind == "counter":
                made: t.Any = self.meter.create_counter(metric.otel, metric.unit, metric.doc)
            elif metric.kind == "histogram":
                buckets = DURATION_BUCKETS if metric is DURATION else SIZE_BUCKETS
                made = self.meter.create_histogram(
                    metric.otel, metric.unit, metric.doc,
                    explicit_bucket_boundaries_advisory=list(buckets),
                )  # fmt: skip
            else:
                continue
            self._instruments[metric.name] = made

    def instrument(self, metric: Metric, **labels: str) -> Instrument:
        made = self._instruments[metric.name]
        record = made.add if metric.kind == "counter" else made.record
        return partial(record, attributes=labelled(metric, self.backend, labels))

    def live(self, count: t.Callable[[], int]) -> t.Callable[[], None] | None:
        every = Every(count)
        attributes = {"backend": self.backend}

        def observe(options: CallbackOptions) -> t.Iterator[Observation]:
            value = every()
            if value is not None:
                yield Observation(value, attributes)

        self.meter.create_observable_gauge(LIVE.otel, [observe], LIVE.unit, LIVE.doc)
        return None
