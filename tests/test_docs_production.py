from __future__ import annotations

import json
import os
import secrets
import typing as t
import uuid
from datetime import timedelta

import pytest
from flask import Flask

from flask_serversession import ServerSession
from flask_serversession.checks.servers import PLATFORM_VARIABLES

from .conftest import add_views
from .conftest import store_of
from .support.redis_servers import RedisServer

if t.TYPE_CHECKING:
    from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend

MakeApp = t.Callable[..., Flask]


@pytest.fixture(autouse=True)
def one_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, _platform in PLATFORM_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def check(app: Flask, *args: str) -> t.Any:
    return app.test_cli_runner().invoke(args=["serversession", "check", *args])


@pytest.fixture
def redis_as_configured(make_redis_server: t.Callable[..., RedisServer]) -> RedisServer:
    """A Redis with the page's two lines of redis.conf."""
    return make_redis_server("--maxmemory-policy", "noeviction", "--appendonly", "yes")


def production_app(tmp_path: t.Any, **changes: t.Any) -> Flask:
    """The page's configuration, with ``changes`` made before ``init_app``."""
    app = Flask("tests", instance_path=str(tmp_path / "instance"))
    app.config.update(
        SECRET_KEY=os.environ["SECRET_KEY"],
        SESSION_COOKIE_NAME="__Host-session",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SERVERSESSION_ABSOLUTE_LIFETIME=timedelta(days=30),
        SERVERSESSION_BACKEND="redis",
        SERVERSESSION_REDIS_URL=os.environ["REDIS_URL"],
    )
    app.config.update(changes)
    ServerSession(app)
    add_views(app)
    return app


def assert_insecure_cookie_and_no_cap(lines: list[str]) -> None:
    """The first two findings of the docs' examples: Secure off, no absolute lifetime."""
    assert lines[0].startswith(
        "error serversession.E001 SESSION_COOKIE_SECURE = False: The browser also sends the"
        " session cookie over plain HTTP, "
    )
    assert lines[0].endswith(
        " Fix: set SESSION_COOKIE_SECURE = True and serve the app over HTTPS only."
    )
    assert lines[1].startswith(
        "warning serversession.W006 SERVERSESSION_ABSOLUTE_LIFETIME = None: A session that is"
        " used now and then is renewed for ever, "
    )


def test_production_config_passes(
    tmp_path: t.Any, redis_as_configured: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_KEY", secrets.token_hex(32))
    monkeypatch.setenv("REDIS_URL", redis_as_configured.url)
    app = production_app(tmp_path)
    result = check(app)
    assert (result.exit_code, result.output) == (0, "No problems found.\n")
    result = check(app, "--json")
    assert (result.exit_code, json.loads(result.output)) == (0, [])
    with app.test_client() as client:
        client.post("/set", json={"user": "alice"})
        assert client.get_cookie("__Host-session") is not None


def test_check_example_output(
    tmp_path: t.Any, redis_as_configured: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_KEY", secrets.token_hex(32))
    monkeypatch.setenv("REDIS_URL", redis_as_configured.url)
    redis_as_configured.client().config_set("maxmemory-policy", "allkeys-lru")
    app = production_app(
        tmp_path,
        SESSION_COOKIE_NAME="session",
        SESSION_COOKIE_SECURE=False,
        SERVERSESSION_ABSOLUTE_LIFETIME=None,
    )
    result = check(app)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert_insecure_cookie_and_no_cap(lines)
    assert " Fix: set SERVERSESSION_ABSOLUTE_LIFETIME, e.g. timedelta(days=30), " in lines[1]
    assert lines[2].startswith(
        "error serversession.E012 Redis maxmemory-policy = 'allkeys-lru': When Redis reaches"
        " maxmemory it deletes any key, "
    )
    assert " Fix: CONFIG SET maxmemory-policy noeviction " in lines[2]
    assert lines[3:] == ["2 errors, 1 warning."]

    listed = json.loads(check(app, "--json").output)
    assert [list(finding) for finding in listed] == [
        ["id", "severity", "setting", "value", "why", "fix"]
    ] * 3


def test_ignore_a_check_that_does_not_apply(
    make_app: MakeApp, tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(
        "sqlalchemy",
        SECRET_KEY=secrets.token_hex(32),
        SESSION_COOKIE_NAME="__Host-session",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SERVERSESSION_ABSOLUTE_LIFETIME=timedelta(days=30),
    )
    monkeypatch.setenv("FLY_ALLOC_ID", "one-machine")
    assert check(app).output.startswith("warning serversession.W009 ")
    result = check(app, "--ignore", "serversession.W009")
    assert (result.exit_code, result.output) == (0, "No problems found.\n")


def test_synchronous_commit_on_for_the_role(make_app: MakeApp, postgres_url: str) -> None:
    import sqlalchemy as sa

    # The test server runs with synchronous_commit off for everyone.
    role = f"myapp_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
    app = make_app(
        "sqlalchemy",
        SECRET_KEY=secrets.token_hex(32),
        SESSION_COOKIE_NAME="__Host-session",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SERVERSESSION_ABSOLUTE_LIFETIME=timedelta(days=30),
        SERVERSESSION_SQLALCHEMY_URI=postgres_url.replace("//postgres@", f"//{role}@"),
    )
    try:
        assert check(app).output.startswith(
            "warning serversession.W014 PostgreSQL synchronous_commit = 'off': "
        )
        with admin.connect() as conn:
            conn.execute(sa.text(f"ALTER ROLE {role} SET synchronous_commit = on;"))
        # A new login sees the role's setting, as the next run of the command does.
        t.cast("SQLAlchemyBackend", store_of(app).backend).engine.dispose()
        result = check(app)
        assert (result.exit_code, result.output) == (0, "No problems found.\n")
    finally:
        store_of(app).backend.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()


def test_session_directory_for_the_app_alone(make_app: MakeApp, tmp_path: t.Any) -> None:
    directory = tmp_path / "sessions"
    app = make_app(
        "filesystem",
        SECRET_KEY=secrets.token_hex(32),
        SESSION_COOKIE_NAME="__Host-session",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SERVERSESSION_ABSOLUTE_LIFETIME=timedelta(days=30),
        SERVERSESSION_FILE_DIR=str(directory),
    )
    os.chmod(directory, 0o770)
    assert check(app).output.startswith("error serversession.E015 SERVERSESSION_FILE_DIR = ")
    os.chown(directory, os.geteuid(), -1)
    os.chmod(directory, 0o700)
    result = check(app)
    assert (result.exit_code, result.output) == (0, "No problems found.\n")


def test_cli_page_check_example(tmp_path: t.Any) -> None:
    # The example of docs/cli.rst.
    app = Flask("tests", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY=secrets.token_hex(32), SESSION_COOKIE_SAMESITE="Lax")
    ServerSession(app)
    result = check(app)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert_insecure_cookie_and_no_cap(lines)
    assert lines[2:] == ["1 error, 1 warning."]
