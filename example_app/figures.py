"""The session metrics of the app, read back for a person: counts and store latency."""

from __future__ import annotations

import math
import typing as t

from prometheus_client import CollectorRegistry


def quantile(q: float, buckets: t.Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets, as PromQL's
    ``histogram_quantile`` reckons it: linear within the bucket it falls in."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def read(registry: CollectorRegistry) -> dict[str, t.Any]:
    """Counts by metric and reason, and p50/p99 store latency by operation, since start."""
    counts: dict[str, float] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if name == "serversession_sessions_created_total":
                counts["created"] = counts.get("created", 0) + sample.value
            elif name == "serversession_sessions_ended_total":
                key = f"ended: {labels['reason']}"
                counts[key] = counts.get(key, 0) + sample.value
            elif name == "serversession_tokens_rejected_total":
                counts[f"rejected: {labels['reason']}"] = sample.value
            elif name == "serversession_store_errors_total":
                counts["store errors"] = counts.get("store errors", 0) + sample.value
            elif name == "serversession_store_duration_seconds_bucket":
                buckets.setdefault(labels["operation"], []).append(
                    (float(labels["le"]), sample.value)
                )
    latency = {}
    for operation, found in buckets.items():
        found.sort()
        if found[-1][1]:
            p50, p99 = quantile(0.5, found), quantile(0.99, found)
            latency[operation] = (int(found[-1][1]), p50, p99)
    return {"counts": counts, "latency": latency}
