"""The timed purge: SERVERSESSION_PURGE_INTERVAL, start_purging and stop_purging (purging.rst)."""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
import traceback
import typing as t
from datetime import datetime
from datetime import timedelta
from functools import partial

import pytest
from flask import current_app
from flask import Flask
from flask import has_app_context

from flask_serversession import ConfigError
from flask_serversession import ServerSession
from flask_serversession.backends.base import Backend
from flask_serversession.backends.filesystem import FileSystemBackend
from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend
from flask_serversession.purging import EXTENSION_KEY

from .conftest import Clock
from .conftest import store_of

server_session = ServerSession()

DOWN_URI = "postgresql+psycopg://nobody@127.0.0.1:9/nothing"


class CountsPurges:
    """Counts the purges of a real backend and the records they removed."""

    purges = 0
    removed = 0
    in_app_context: bool | None = None

    def purge_expired(self, now: datetime, *, longest_lifetime: timedelta | None = None) -> int:
        removed: int = super().purge_expired(  # type: ignore[misc]
            now, longest_lifetime=longest_lifetime
        )
        self.in_app_context = has_app_context() and current_app.name == "tests"
        self.purges += 1
        self.removed += removed
        return removed


class CountingFileSystem(CountsPurges, FileSystemBackend):
    pass


class CountingSQL(CountsPurges, SQLAlchemyBackend):
    pass


def wait_for(condition: t.Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def purge_threads() -> list[threading.Thread]:
    return [th for th in threading.enumerate() if th.name.startswith("serversession-purger-")]


def purger_thread(app: Flask) -> threading.Thread | None:
    purger = app.extensions.get(EXTENSION_KEY)
    return None if purger is None else purger.thread


@pytest.fixture
def stop_later() -> t.Iterator[t.Callable[[Flask], Flask]]:
    """Stops the timed purge of the apps it is given when the test ends.

    List it last among a test's fixtures, so that it runs before backends close.
    """
    apps: list[Flask] = []

    def register(app: Flask) -> Flask:
        apps.append(app)
        return app

    yield register
    for app in apps:
        server_session.stop_purging(app, timeout=3)


def add_sessions(app: Flask, clock: Clock, *, expired: int, live: int) -> list[str]:
    """Store sessions that are expired at ``clock``'s new time; return the live tokens."""
    with app.app_context():
        for n in range(expired):
            server_session.create({"n": n})
        clock.advance(hours=25)
        return [server_session.create({"live": n}) for n in range(live)]


@pytest.mark.parametrize("backend_name", ["memory", "sqlite", "postgres", "filesystem"])
def test_expired_sessions_are_removed_without_any_request(
    make_app: t.Callable[..., Flask], backend: Backend, stop_later: t.Callable[[Flask], Flask]
) -> None:
    app = stop_later(make_app(backend))
    clock = Clock()
    store_of(app).clock = clock
    (token,) = add_sessions(app, clock, expired=3, live=1)
    before = clock.now - timedelta(hours=26)
    assert backend.count(before) == 4

    server_session.start_purging(app, 0.05)

    assert wait_for(lambda: backend.count(before) == 1)
    with app.app_context():
        assert server_session.get(token) == {"live": 0}
        assert server_session.count() == 1


def test_stop_purging_ends_the_thread_and_the_purges(
    make_app: t.Callable[..., Flask], tmp_path: t.Any, stop_later: t.Callable[[Flask], Flask]
) -> None:
    backend = CountingFileSystem(tmp_path / "sessions")
    app = stop_later(make_app(backend))
    server_session.start_purging(app, 0.02)
    thread = purger_thread(app)
    assert thread is not None and thread.daemon
    assert wait_for(lambda: backend.purges >= 3)
    assert backend.in_app_context

    server_session.stop_purging(app, timeout=3)

    assert not thread.is_alive()
    assert thread not in threading.enumerate()
    assert purger_thread(app) is None
    purges = backend.purges
    time.sleep(0.2)
    assert backend.purges == purges


def test_stop_does_not_wait_for_the_interval(
    make_app: t.Callable[..., Flask], stop_later: t.Callable[[Flask], Flask]
) -> None:
    app = stop_later(make_app())
    server_session.start_purging(app, timedelta(hours=1))
    thread = purger_thread(app)
    assert thread is not None

    started = time.monotonic()
    server_session.stop_purging(app, timeout=3)

    assert time.monotonic() - started < 0.5
    assert not thread.is_alive()


def test_stop_then_start_again(
    make_app: t.Callable[..., Flask], tmp_path: t.Any, stop_later: t.Callable[[Flask], Flask]
) -> None:
    backend = CountingFileSystem(tmp_path / "sessions")
    app = stop_later(make_app(backend))
    server_session.stop_purging(app, timeout=3)
    server_session.start_purging(app, 0.02)
    server_session.stop_purging(app, timeout=3)
    server_session.stop_purging(app, timeout=3)
    server_session.start_purging(app, 0.02)
    assert wait_for(lambda: backend.purges >= 2)
    assert len([th for th in purge_threads() if th is purger_thread(app)]) == 1


def test_start_is_idempotent_and_takes_a_new_interval_at_once(
    make_app: t.Callable[..., Flask], tmp_path: t.Any, stop_later: t.Callable[[Flask], Flask]
) -> None:
    backend = CountingFileSystem(tmp_path / "sessions")
    app = stop_later(make_app(backend))
    threads_before = len(purge_threads())
    server_session.start_purging(app, timedelta(hours=1))
    thread = purger_thread(app)
    server_session.start_purging(app, 3600)
    assert purger_thread(app) is thread
    assert len(purge_threads()) == threads_before + 1
    assert backend.purges == 0

    # A shorter interval applies now, not after the hour already being waited.
    server_session.start_purging(app, 0.02)

    assert wait_for(lambda: backend.purges >= 3)
    assert purger_thread(app) is thread
    assert len(purge_threads()) == threads_before + 1


def test_config_starts_the_thread_at_the_first_request(
    make_app: t.Callable[..., Flask], tmp_path: t.Any, stop_later: t.Callable[[Flask], Flask]
) -> None:
    backend = CountingFileSystem(tmp_path / "sessions")
    app = stop_later(make_app(backend, SERVERSESSION_PURGE_INTERVAL=timedelta(milliseconds=20)))
    time.sleep(0.1)
    assert purger_thread(app) is None
    assert backend.purges == 0

    client = app.test_client()
    client.get("/untouched")

    thread = purger_thread(app)
    assert thread is not None and thread.daemon
    assert wait_for(lambda: backend.purges >= 2)
    for _ in range(3):
        client.get("/untouched")
    assert purger_thread(app) is thread

    # Stopped for good: later requests do not start it again.
    server_session.stop_purging(app, timeout=3)
    client.get("/untouched")
    assert purger_thread(app) is None


def test_off_by_default(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()
    app.test_client().get("/untouched")
    assert app.config["SERVERSESSION_PURGE_INTERVAL"] == 0
    assert store_of(app).settings.purge_interval == timedelta(0)
    assert EXTENSION_KEY not in app.extensions


def run_forked(*checks: t.Callable[[], bool]) -> None:
    """Run ``checks`` in order in a forked child; fail naming the first that does not hold."""
    pid = os.fork()
    if pid == 0:
        failed = len(checks) + 1
        try:
            failed = next((n for n, check in enumerate(checks, 1) if not check()), 0)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(failed)
    deadline = time.monotonic() + 3
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child did not finish in time")
    code = os.waitstatus_to_exitcode(done[1])
    assert code == 0, f"check {code} failed in the forked child (an error: {len(checks) + 1})"


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


@needs_fork
def test_each_forked_worker_starts_its_own_thread(
    make_app: t.Callable[..., Flask], tmp_path: t.Any, stop_later: t.Callable[[Flask], Flask]
) -> None:
    # As a preloading server does: the parent sets the app up and forks
    # workers; it serves no request itself.
    backend = CountingFileSystem(tmp_path / "sessions")
    app = stop_later(make_app(backend, SERVERSESSION_PURGE_INTERVAL=0.02))
    clock = Clock()
    store_of(app).clock = clock
    add_sessions(app, clock, expired=3, live=1)
    stored = partial(backend.count, clock.now - timedelta(days=2))

    def serve_a_request() -> bool:
        return app.test_client().get("/untouched").status_code == 200

    def no_purges_before_a_request() -> bool:
        time.sleep(0.1)
        return purger_thread(app) is None and backend.purges == 0

    run_forked(
        no_purges_before_a_request,
        serve_a_request,
        lambda: wait_for(lambda: backend.purges >= 2, timeout=2),
        lambda: wait_for(lambda: stored() == 1, timeout=2),
    )

    assert purger_thread(app) is None
    assert backend.purges == 0
    assert stored() == 1


@needs_fork
def test_a_thread_started_before_fork_is_started_anew_in_the_child(
    make_app: t.Callable[..., Flask], stop_later: t.Callable[[Flask], Flask]
) -> None:
    app = stop_later(make_app())
    # Long enough that the parent's thread only waits while the child runs.
    server_session.start_purging(app, timedelta(hours=1))
    parent_thread = purger_thread(app)
    assert parent_thread is not None

    def serve_a_request() -> bool:
        return app.test_client().get("/untouched").status_code == 200

    def child_has_its_own_thread() -> bool:
        thread = purger_thread(app)
        return thread is not None and thread is not parent_thread and thread.is_alive()

    def stops_at_once() -> bool:
        thread = purger_thread(app)
        started = time.monotonic()
        server_session.stop_purging(app, timeout=3)
        return thread is not None and not thread.is_alive() and time.monotonic() - started < 0.5

    run_forked(
        lambda: purger_thread(app) is None,
        serve_a_request,
        child_has_its_own_thread,
        stops_at_once,
    )

    assert purger_thread(app) is parent_thread and parent_thread.is_alive()


def test_a_store_that_is_down_is_logged_and_tried_again(
    make_app: t.Callable[..., Flask],
    caplog: pytest.LogCaptureFixture,
    stop_later: t.Callable[[Flask], Flask],
) -> None:
    caplog.set_level(logging.ERROR, logger="flask_serversession")
    app = stop_later(make_app("sqlalchemy", SERVERSESSION_SQLALCHEMY_URI=DOWN_URI))
    server_session.start_purging(app, 0.02)

    def failures() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "flask_serversession" and "Purging expired sessions failed" in r.message
        ]

    assert wait_for(lambda: len(failures()) >= 3)
    assert all(r.levelno == logging.ERROR for r in failures())
    thread = purger_thread(app)
    assert thread is not None and thread.is_alive()


class BrokenOnce(FileSystemBackend):
    """A real filesystem store whose first purge fails with an unexpected error."""

    purges = 0

    def purge_expired(self, now: datetime, *, longest_lifetime: timedelta | None = None) -> int:
        self.purges += 1
        if self.purges == 1:
            raise ValueError("unexpected")
        return super().purge_expired(now, longest_lifetime=longest_lifetime)


def test_an_unexpected_error_does_not_end_the_thread(
    make_app: t.Callable[..., Flask],
    tmp_path: t.Any,
    caplog: pytest.LogCaptureFixture,
    stop_later: t.Callable[[Flask], Flask],
) -> None:
    caplog.set_level(logging.ERROR, logger="flask_serversession")
    backend = BrokenOnce(tmp_path / "sessions")
    app = stop_later(make_app(backend))
    clock = Clock()
    store_of(app).clock = clock
    add_sessions(app, clock, expired=2, live=0)

    server_session.start_purging(app, 0.02)

    assert wait_for(lambda: backend.count(clock.now - timedelta(days=2)) == 0)
    (record,) = [r for r in caplog.records if r.name == "flask_serversession"]
    assert record.exc_info is not None and record.exc_info[0] is ValueError


@pytest.mark.parametrize("kind", ["sqlite", "filesystem"])
def test_two_purgers_on_one_store(
    make_app: t.Callable[..., Flask],
    tmp_path: t.Any,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    stop_later: t.Callable[[Flask], Flask],
) -> None:
    # Two apps with backends of their own on the same file or directory, as
    # two worker processes have.
    caplog.set_level(logging.WARNING, logger="flask_serversession")
    backends: list[CountingSQL | CountingFileSystem]
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
        backends = [CountingSQL.from_url(url) for _ in range(2)]  # type: ignore[misc]
    else:
        backends = [CountingFileSystem(tmp_path / "shared") for _ in range(2)]
    apps = [stop_later(make_app(backend)) for backend in backends]
    clock = Clock()
    for app in apps:
        store_of(app).clock = clock
    for app in apps:
        server_session.start_purging(app, 0.005)

    expired = 0
    for _ in range(3):
        add_sessions(apps[0], clock, expired=40, live=0)
        expired += 40
        assert wait_for(lambda n=expired: sum(b.removed for b in backends) >= n)
    tokens = add_sessions(apps[1], clock, expired=0, live=2)
    time.sleep(0.05)

    assert sum(b.removed for b in backends) == expired
    assert all(b.purges > 0 for b in backends)
    assert [r.getMessage() for r in caplog.records if r.name == "flask_serversession"] == []
    with apps[0].app_context():
        assert server_session.count() == 2
        assert [server_session.get(token) for token in tokens] == [{"live": 0}, {"live": 1}]
    for backend in backends:
        backend.close()


def test_a_dropped_app_ends_its_thread(make_app: t.Callable[..., Flask], tmp_path: t.Any) -> None:
    backend = CountingFileSystem(tmp_path / "sessions")
    app = make_app(backend)
    server_session.start_purging(app, 0.02)
    thread = purger_thread(app)
    assert thread is not None
    assert wait_for(lambda: backend.purges >= 2)
    del app

    assert wait_for(lambda: gc.collect() >= 0 and not thread.is_alive())


BAD_INTERVALS = [-1, timedelta(seconds=-1), "10m", True, None]


@pytest.mark.parametrize("value", BAD_INTERVALS, ids=repr)
def test_a_bad_interval_setting_names_the_key(tmp_path: t.Any, value: t.Any) -> None:
    app = Flask("purging_config", instance_path=str(tmp_path / "instance"))
    app.config.update(
        SECRET_KEY="secret", SERVERSESSION_BACKEND="memory", SERVERSESSION_PURGE_INTERVAL=value
    )
    with pytest.raises(ConfigError) as info:
        ServerSession(app)
    message = str(info.value)
    assert "SERVERSESSION_PURGE_INTERVAL" in message and repr(value) in message
    assert "serversession" not in app.extensions


@pytest.mark.parametrize("value", [0, -1, timedelta(0), "10", True], ids=repr)
def test_a_bad_interval_argument_is_refused(make_app: t.Callable[..., Flask], value: t.Any) -> None:
    app = make_app()
    with pytest.raises(ValueError, match="interval"):
        server_session.start_purging(app, value)
    assert purger_thread(app) is None


def test_start_without_an_interval_uses_the_setting(
    make_app: t.Callable[..., Flask], stop_later: t.Callable[[Flask], Flask]
) -> None:
    app = stop_later(make_app())
    with pytest.raises(ValueError, match="SERVERSESSION_PURGE_INTERVAL"):
        server_session.start_purging(app)

    configured = stop_later(make_app(SERVERSESSION_PURGE_INTERVAL=3600))
    server_session.start_purging(configured)
    assert purger_thread(configured) is not None


def test_an_app_without_init_app_is_refused(tmp_path: t.Any) -> None:
    app = Flask("no_init")
    with pytest.raises(RuntimeError, match="init_app"):
        server_session.start_purging(app, 1)
    with pytest.raises(RuntimeError, match="init_app"):
        server_session.stop_purging(app, timeout=3)
