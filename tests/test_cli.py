from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from flask_serversession import ServerSession
from flask_serversession.backends.memory import MemoryBackend

from .conftest import Clock
from .conftest import store_of


def fill(app: Flask, live: int, expired: int) -> None:
    clock = Clock()
    store_of(app).clock = clock
    extension = ServerSession()
    with app.app_context():
        for n in range(expired):
            extension.create({"n": n})
        clock.advance(hours=25)
        for n in range(live):
            extension.create({"n": n})


@pytest.fixture
def app(make_app: t.Callable[..., Flask]) -> Flask:
    """An app whose store other processes see, as the commands need."""
    return make_app("filesystem")


def test_purge_reports_removed_sessions(backend_app: Flask) -> None:
    if isinstance(store_of(backend_app).backend, MemoryBackend):
        pytest.skip("the commands refuse the memory backend (test_memory_backend_is_refused)")
    fill(backend_app, live=2, expired=3)
    result = backend_app.test_cli_runner().invoke(args=["serversession", "purge"])
    assert result.exit_code == 0, result.output
    expected = 0 if "Redis" in type(store_of(backend_app).backend).__name__ else 3
    assert result.output == f"Removed {expected} expired sessions.\n"
    result = backend_app.test_cli_runner().invoke(args=["serversession", "count"])
    assert result.output == "2\n"


def test_counts_of_one_are_singular(app: Flask) -> None:
    fill(app, live=1, expired=1)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["serversession", "purge"]).output == "Removed 1 expired session.\n"
    assert runner.invoke(args=["serversession", "purge"]).output == "Removed 0 expired sessions.\n"
    result = runner.invoke(args=["serversession", "clear", "--yes"])
    assert result.output == "Removed 1 session.\n"


def test_clear_asks_first(app: Flask) -> None:
    fill(app, live=2, expired=0)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["serversession", "clear"], input="n\n")
    assert result.exit_code == 1
    assert "Aborted" in result.output
    assert runner.invoke(args=["serversession", "count"]).output == "2\n"
    result = runner.invoke(args=["serversession", "clear"], input="y\n")
    assert result.exit_code == 0
    assert result.output.endswith("Removed 2 sessions.\n")


def test_clear_yes_skips_the_question(app: Flask) -> None:
    fill(app, live=3, expired=0)
    result = app.test_cli_runner().invoke(args=["serversession", "clear", "--yes"])
    assert result.output == "Removed 3 sessions.\n"


def test_commands_fail_cleanly_when_the_store_is_down(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(
        "sqlalchemy", SERVERSESSION_SQLALCHEMY_URI="postgresql+psycopg://nobody@127.0.0.1:9/x"
    )
    for command in (["purge"], ["count"], ["clear", "--yes"]):
        result = app.test_cli_runner().invoke(args=["serversession", *command])
        assert result.exit_code == 1
        assert result.output.startswith("Error: ")
        assert "Traceback" not in result.output


def test_memory_backend_is_refused_by_commands_that_need_the_servers_sessions(
    make_app: t.Callable[..., Flask],
) -> None:
    app = make_app("memory")
    fill(app, live=2, expired=1)
    for command in (["count"], ["purge"], ["clear", "--yes"]):
        result = app.test_cli_runner().invoke(args=["serversession", *command])
        assert result.exit_code == 1, command
        assert result.output.startswith(
            "Error: The memory backend keeps sessions in the memory of each server process,"
            " which this command, a process of its own, cannot see"
        )
    assert store_of(app).count() == 2  # nothing was purged or cleared


def test_check_ignores_a_short_id(make_app: t.Callable[..., Flask]) -> None:
    app = make_app("filesystem", SESSION_COOKIE_SECURE=True, SESSION_COOKIE_SAMESITE="Lax")
    runner = app.test_cli_runner()
    full = runner.invoke(args=["serversession", "check", "--ignore", "serversession.W006"])
    short = runner.invoke(args=["serversession", "check", "--ignore", "W006"])
    assert "W006" in runner.invoke(args=["serversession", "check"]).output
    assert short.exit_code == full.exit_code and short.output == full.output
    assert "W006" not in short.output
    result = runner.invoke(args=["serversession", "check", "--ignore", "W999"])
    assert result.exit_code == 2 and "'serversession.W999'" in result.output
