from __future__ import annotations

import threading
import typing as t
from abc import ABC
from abc import abstractmethod
from time import monotonic

from ..errors import BackendError
from ..log import logger
from .names import Metric

#: Adds to a counter or observes into a histogram: one series, labels bound.
Instrument = t.Callable[[float], None]

#: The live gauge is counted at most this often, in seconds.
LIVE_EVERY = 60.0


class Recorder(ABC):
    """Where the measurements go: Prometheus or OpenTelemetry.

    Series are bound once, when the metrics are set up, so a request only
    calls the returned :data:`Instrument`.

    :param backend: the ``backend`` label of every series that has one.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend

    @abstractmethod
    def instrument(self, metric: Metric, **labels: str) -> Instrument:
        """Return the callable that records into one series of ``metric``."""

    @abstractmethod
    def live(self, count: t.Callable[[], int]) -> t.Callable[[], None] | None:
        """Publish the live gauge, reading it through ``count``.

        Returns a callable to run after each request where the exporter
        cannot read at scrape time (Prometheus' multiprocess mode), else None.
        """


class Every:
    """A count kept for ``every`` seconds: read at most that often, whoever asks."""

    def __init__(self, count: t.Callable[[], int], every: float = LIVE_EVERY) -> None:
        self._count = count
        self._every = every
        self._lock = threading.Lock()
        self._value: int | None = None
        self._read_at = 0.0

    def due(self) -> bool:
        return self._value is None or monotonic() - self._read_at >= self._every

    def __call__(self) -> int | None:
        """The last count, read anew when due; None while the store cannot say."""
        with self._lock:
            if self.due():
                # A failing store is counted by the errors counter; the gauge
                # keeps its last value and asks again next time.
                try:
                    self._value = self._count()
                except BackendError as e:
                    logger.warning("The live sessions could not be counted: %s", e)
                self._read_at = monotonic()
            return self._value
