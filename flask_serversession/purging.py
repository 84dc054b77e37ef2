from __future__ import annotations

import itertools
import os
import random
import threading
import typing as t
import weakref
from datetime import timedelta

from flask import request_started

from .errors import BackendError
from .log import logger

if t.TYPE_CHECKING:
    from flask import Flask

    from .store import SessionStore

#: The ``app.extensions`` key of an app's :class:`Purger`.
EXTENSION_KEY = "serversession_purger"

#: Each wait is the interval stretched or shrunk by up to this fraction, so
#: the processes of one app drift apart instead of purging in step.
JITTER = 0.1


def seconds(interval: timedelta | float) -> float:
    """Return a purge interval in seconds.

    :raises ValueError: it is not a positive timedelta or number of seconds.
    """
    if isinstance(interval, timedelta):
        value = interval.total_seconds()
    elif isinstance(interval, (int, float)) and not isinstance(interval, bool):
        value = float(interval)
    else:
        value = 0.0
    if not value > 0:
        raise ValueError(
            f"interval = {interval!r} is not valid: expected a positive timedelta or number"
            " of seconds."
        )
    return value


class _Run:
    """The controls of one purge thread, valid only in the process that started it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.pid = os.getpid()
        self.stopping = False
        #: Set to end a wait early: to stop, or to wait anew after an interval change.
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def here(self) -> bool:
        """Whether the thread belongs to this process (a forked child has none)."""
        return self.pid == os.getpid()

    def running(self) -> bool:
        """Whether the thread runs in this process and has not been told to stop."""
        thread = self.thread
        return self.here() and thread is not None and thread.is_alive() and not self.stopping


def _purge(app: Flask, store: SessionStore) -> None:
    try:
        with app.app_context():
            removed = store.purge_expired()
    except BackendError as e:
        logger.error("Purging expired sessions failed; trying again at the next interval: %s", e)
    except Exception:
        logger.exception("Purging expired sessions failed; trying again at the next interval.")
    else:
        logger.debug("Purged %d expired sessions.", removed)


class EveryNRequests:
    """Purge from a short-lived thread after every ``every`` requests of this process.

    Backs ``SERVERSESSION_PURGE_EVERY``: a purge never runs twice at once and
    never in a request's path.

    :param every: requests between purges; 0 never purges.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self._requests = itertools.count(1)
        self._busy = threading.Lock()

    def count(self, app: Flask, store: SessionStore) -> None:
        """Count one request; start a purge if this one completes ``every``."""
        if self.every and next(self._requests) % self.every == 0 and self._busy.acquire(False):
            threading.Thread(
                target=self._run, args=(app, store), name="serversession-purge", daemon=True
            ).start()

    def _run(self, app: Flask, store: SessionStore) -> None:
        try:
            _purge(app, store)
        finally:
            self._busy.release()


def _jittered(interval: float) -> float:
    return interval * random.uniform(1 - JITTER, 1 + JITTER)


def _loop(app_ref: weakref.ref[Flask], run: _Run) -> None:
    # The first purge comes anywhere within the first interval, so processes
    # started together (a deploy) do not purge together, and a process that
    # lives shorter than the interval still purges sometimes.
    delay = run.interval * random.random()
    while not run.stopping:
        if run.wake.wait(min(delay, threading.TIMEOUT_MAX)):
            # Told to stop, or given a new interval to wait anew with.
            run.wake.clear()
            delay = _jittered(run.interval)
            continue
        # Only a weak reference between ticks: an app that is dropped without
        # stop_purging() ends its thread instead of being kept alive by it.
        app = app_ref()
        store = None if app is None else app.extensions.get("serversession")
        if app is None or store is None:
            return
        _purge(app, store)
        del app, store
        delay = _jittered(run.interval)


class Purger:
    """Purges one app's expired sessions every interval, from one daemon thread per process.

    A thread started before a ``fork()`` does not exist in the child: the
    first request each process handles starts the thread there (the process
    id tells a forked worker from its parent).

    :param app: the app whose store is purged.
    """

    def __init__(self, app: Flask) -> None:
        self._app_ref = weakref.ref(app)
        self._name = f"serversession-purger-{app.name}"
        self._lock = threading.Lock()
        self._interval = 0.0
        self._run: _Run | None = None

    @property
    def interval(self) -> float:
        """Seconds between purges; 0 when purging is off."""
        return self._interval

    @property
    def thread(self) -> threading.Thread | None:
        """The purge thread of this process, or None when there is none."""
        run = self._run
        return run.thread if run is not None and run.running() else None

    def enable(self, interval: float) -> None:
        """Purge every ``interval`` seconds, starting with the next request of each process."""
        with self._lock:
            self._interval = interval

    def start(self, interval: float) -> None:
        """Purge every ``interval`` seconds, starting now in this process.

        With a thread already running here, only its interval changes: the
        current wait ends and the next purge comes one new interval later.
        """
        with self._lock:
            self._interval = interval
            run = self._run
            if run is not None and run.running():
                if run.interval != interval:
                    run.interval = interval
                    run.wake.set()
                return
            run = _Run(interval)
            run.thread = threading.Thread(
                target=_loop, args=(self._app_ref, run), name=self._name, daemon=True
            )
            run.thread.start()
            self._run = run

    def stop(self, timeout: float | None = None) -> None:
        """Stop purging; wait up to ``timeout`` seconds for a purge in progress."""
        with self._lock:
            self._interval = 0.0
            run, self._run = self._run, None
        if run is None or not run.here() or run.thread is None:
            return
        run.stopping = True
        run.wake.set()
        if run.thread is not threading.current_thread():
            run.thread.join(timeout)

    def on_request(self, sender: Flask, **extra: t.Any) -> None:
        """Start the thread in a process that has none yet, such as a new worker."""
        run = self._run
        if not self._interval or (run is not None and run.here()):
            return
        try:
            self.start(self._interval)
        except RuntimeError:
            # No thread can be started now; the next request tries again.
            logger.exception("Starting the session purge thread failed.")


def purger_of(app: Flask) -> Purger:
    """Return the app's :class:`Purger`, creating it on first use."""
    purger: Purger | None = app.extensions.get(EXTENSION_KEY)
    if purger is not None:
        return purger
    created = Purger(app)
    # setdefault is atomic: two threads asking at once get one purger.
    purger = app.extensions.setdefault(EXTENSION_KEY, created)
    if purger is created:
        request_started.connect(created.on_request, app)
    return t.cast(Purger, purger)
