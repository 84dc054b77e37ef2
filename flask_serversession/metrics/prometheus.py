from __future__ import annotations

import typing as t
import weakref

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import values
from prometheus_client.core import GaugeMetricFamily

from .fast import Family
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

# Apps that share a registry share its metrics: a name can be registered once.
_families: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, t.Any]] = (
    weakref.WeakKeyDictionary()
)
_live: weakref.WeakKeyDictionary[CollectorRegistry, _LiveCollector] = weakref.WeakKeyDictionary()


def multiprocess() -> bool:
    """Whether ``prometheus_client`` writes its values to files that worker processes share.

    The library decided it when imported, from ``PROMETHEUS_MULTIPROC_DIR``.
    """
    return values.ValueClass is not values.MutexValue


def _family(registry: CollectorRegistry, metric: Metric) -> t.Any:
    families = _families.setdefault(registry, {})
    if metric.name in families:
        return families[metric.name]
    buckets = DURATION_BUCKETS if metric is DURATION else SIZE_BUCKETS
    kwargs: dict[str, t.Any] = {"labelnames": metric.labels, "registry": registry}
    made: t.Any
    if metric.kind == "gauge":
        # Every worker counts the same store: the newest reading of a live
        # worker is the right one, where a sum would multiply it and a max
        # would keep a stale peak.
        made = Gauge(metric.name, metric.doc, multiprocess_mode="livemostrecent", **kwargs)
    elif not multiprocess():
        made = Family(metric, buckets if metric.kind == "histogram" else ())
        registry.register(made)
    elif metric.kind == "counter":
        made = Counter(metric.name, metric.doc, **kwargs)
    else:
        made = Histogram(metric.name, metric.doc, buckets=buckets, **kwargs)
    families[metric.name] = made
    return made


class _LiveCollector:
    """The live gauge, read at scrape time from each backend's :class:`Every`."""

    def __init__(self) -> None:
        self.readers: dict[str, Every] = {}

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(LIVE.name, LIVE.doc, labels=LIVE.labels)]

    def collect(self) -> t.Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(LIVE.name, LIVE.doc, labels=LIVE.labels)
        for backend, read in self.readers.items():
            value = read()
            if value is not None:
                family.add_metric([backend], value)
        yield family


class PrometheusRecorder(Recorder):
    """Records into ``prometheus_client`` metrics on ``registry``.

    :param registry: where the metrics are registered.
    :param backend: the ``backend`` label.
    """

    def __init__(self, registry: CollectorRegistry, backend: str) -> None:
        super().__init__(backend)
        self.registry = registry
        for metric in METRICS:
            if metric is not LIVE:
                _family(registry, metric)

    def instrument(self, metric: Metric, **labels: str) -> Instrument:
        child = _family(self.registry, metric).labels(**labelled(metric, self.backend, labels))
        return child.inc if metric.kind == "counter" else child.observe  # type: ignore[no-any-return]

    def live(self, count: t.Callable[[], int]) -> t.Callable[[], None] | None:
        every = Every(count)
        if multiprocess():
            gauge = _family(self.registry, LIVE).labels(backend=self.backend)

            def refresh() -> None:
                if every.due():
                    value = every()
                    if value is not None:
                        gauge.set(value)

            return refresh
        collector = _live.get(self.registry)
        if collector is None:
            collector = _live[self.registry] = _LiveCollector()
            self.registry.register(collector)
        collector.readers[self.backend] = every
        return None
