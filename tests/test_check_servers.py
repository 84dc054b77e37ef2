"""``flask serversession check`` against servers that misbehave (issue 28, point 14): no
password from a URL's query string in its output, and an end for a Redis that trickles
its reply or a PostgreSQL that accepts and never answers (fake servers on loopback)."""

from __future__ import annotations

import contextlib
import socket
import threading
import typing as t

import pytest
from flask import Flask

from flask_serversession.checks import reads

from .support.redis_servers import free_port
from .test_check import check
from .test_check import one_host  # noqa: F401 (an autouse fixture)
from .test_check import postgres_app
from .test_check import PRODUCTION

MakeApp = t.Callable[..., Flask]
#: How long the fake servers run at most, whatever the test does.
SERVE_FOR = 30.0


class SilentServer:
    """Accepts connections on loopback; sends ``trickle`` a byte every 50 ms, or nothing."""

    def __init__(self, trickle: bytes = b"") -> None:
        self.trickle = trickle
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        sent = 0
        for _ in range(int(SERVE_FOR / 0.05)):
            if self.stop.wait(0.05):
                return
            with contextlib.suppress(TimeoutError):
                self.connections.append(self.listener.accept()[0])
            if self.trickle:
                for conn in self.connections:
                    try:
                        conn.sendall(self.trickle[sent % len(self.trickle) :][:1])
                    except OSError:
                        continue
                sent += 1

    def __enter__(self) -> SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.connections:
            conn.close()
        self.listener.close()


@pytest.fixture
def short_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reads, "READ_TIMEOUT", 1.0)


def test_a_redis_password_in_the_query_string_is_not_shown(make_app: MakeApp) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?password=hunter2&db=0"
    result = check(make_app("redis", SERVERSESSION_REDIS_URL=url, **PRODUCTION))
    assert result.exit_code == 1
    assert result.output.startswith("error serversession.E010 SERVERSESSION_REDIS_URL = ")
    assert "password=***" in result.output
    assert "hunter2" not in result.output


def test_a_postgres_password_in_the_query_string_is_not_shown(make_app: MakeApp) -> None:
    url = f"postgresql+psycopg://app@127.0.0.1:{free_port()}/sessions?password=hunter2"
    result = check(postgres_app(make_app, url))
    assert result.exit_code == 1
    assert result.output.startswith("error serversession.E010 SERVERSESSION_SQLALCHEMY_URI = ")
    assert "password=***" in result.output
    assert "hunter2" not in result.output


@pytest.mark.usefixtures("short_reads")
def test_a_redis_that_trickles_its_reply_is_unreachable(make_app: MakeApp) -> None:
    # A reply that never ends: an array header, then one more character at a time.
    with SilentServer(trickle=b"*3\r\n$16\r\nmaxmemory-policy\r\n$99999\r\n" + b"x" * 99) as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        result = check(make_app("redis", SERVERSESSION_REDIS_URL=url, **PRODUCTION))
    assert result.exit_code == 1
    assert result.output.startswith("error serversession.E010 SERVERSESSION_REDIS_URL = ")
    assert "did not answer within 1 s" in result.output


@pytest.mark.usefixtures("short_reads")
def test_a_postgres_that_never_answers_is_unreachable(make_app: MakeApp) -> None:
    with SilentServer() as server:
        url = f"postgresql+psycopg://app@127.0.0.1:{server.port}/sessions"
        app = postgres_app(make_app, url)
        result = check(app)
    assert result.exit_code == 1
    assert result.output.startswith("error serversession.E010 SERVERSESSION_SQLALCHEMY_URI = ")
    assert "did not answer within 1 s" in result.output
