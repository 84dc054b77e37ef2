from __future__ import annotations

import threading
import typing as t
from bisect import bisect_left

from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .names import Metric

# prometheus_client's own Counter and Histogram take a lock per value and
# walk the buckets one by one: about 4,000 and 9,000 CPU instructions a
# call, several times a request. Here a series takes one lock and finds
# its bucket by bisection, and the families are built only at scrape time.
# Multiprocess mode keeps the library's classes, which write the shared files.


class Series:
    """One counter or histogram series: its values, added to under one lock."""

    __slots__ = ("_lock", "bounds", "counts", "total")

    def __init__(self, bounds: t.Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float) -> None:
        with self._lock:
            self.total += amount

    def observe(self, amount: float) -> None:
        index = bisect_left(self.bounds, amount)
        with self._lock:
            self.counts[index] += 1
            self.total += amount

    def read(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self.counts), self.total


class Family(Collector):
    """The series of one metric, exposed at scrape time as a counter or histogram family."""

    def __init__(self, metric: Metric, bounds: t.Sequence[float] = ()) -> None:
        self.metric = metric
        self.bounds = tuple(bounds)
        self._series: dict[tuple[str, ...], Series] = {}
        self._lock = threading.Lock()

    def labels(self, **labels: str) -> Series:
        values = tuple(labels[name] for name in self.metric.labels)
        with self._lock:
            return self._series.setdefault(values, Series(self.bounds))

    def _empty(self) -> CounterMetricFamily | HistogramMetricFamily:
        metric = self.metric
        if metric.kind == "counter":
            return CounterMetricFamily(metric.name, metric.doc, labels=metric.labels)
        return HistogramMetricFamily(metric.name, metric.doc, labels=metric.labels)

    def describe(self) -> list[CounterMetricFamily | HistogramMetricFamily]:
        return [self._empty()]

    def collect(self) -> t.Iterator[CounterMetricFamily | HistogramMetricFamily]:
        family = self._empty()
        with self._lock:
            series = list(self._series.items())
        for values, one in series:
            counts, total = one.read()
            if isinstance(family, CounterMetricFamily):
                family.add_metric(list(values), total)
                continue
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            family.add_metric(list(values), buckets, total)
        yield family
