"""Reading what the metrics recorded, the same way for Prometheus and OpenTelemetry."""

from __future__ import annotations

import typing as t

from flask_serversession.metrics.names import Metric


class Readings(t.Protocol):
    config: dict[str, t.Any]

    def value(self, metric: Metric, **labels: str) -> float | None:
        """A counter's total, a histogram's count or a gauge's value; None for no series."""


class PrometheusReadings:
    """Reads a fresh ``prometheus_client`` registry."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        self.config = {"SERVERSESSION_METRICS": "prometheus",
                       "SERVERSESSION_METRICS_REGISTRY": self.registry}  # fmt: skip

    def value(self, metric: Metric, **labels: str) -> float | None:
        suffix = {"counter": "_total", "histogram": "_count", "gauge": ""}[metric.kind]
        return self.registry.get_sample_value(metric.name + suffix, labels)

    def sum(self, metric: Metric, **labels: str) -> float | None:
        return self.registry.get_sample_value(metric.name + "_sum", labels)

    def label_values(self) -> dict[str, set[str]]:
        """Every value each label takes, over every sample of the registry."""
        found: dict[str, set[str]] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                for name, value in sample.labels.items():
                    found.setdefault(name, set()).add(value)
        return found


class OpenTelemetryReadings:
    """Reads the real OpenTelemetry SDK through an ``InMemoryMetricReader``."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.config = {"SERVERSESSION_METRICS": "opentelemetry",
                       "SERVERSESSION_METRICS_REGISTRY": self.provider}  # fmt: skip

    def points(self) -> dict[str, list[t.Any]]:
        found: dict[str, list[t.Any]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                assert scope.scope.name == "flask_serversession"
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found

    def value(self, metric: Metric, **labels: str) -> float | None:
        for point in self.points().get(metric.otel, []):
            if dict(point.attributes) == labels:
                return float(point.count if metric.kind == "histogram" else point.value)
        return None


def readings(kind: str) -> PrometheusReadings | OpenTelemetryReadings:
    return PrometheusReadings() if kind == "prometheus" else OpenTelemetryReadings()
