from __future__ import annotations

import json
import os
import secrets
import typing as t
import uuid
from datetime import timedelta

import pytest
from click.testing import Result
from flask import Flask

from flask_serversession.checks import CHECKS
from flask_serversession.checks.servers import PLATFORM_VARIABLES

from .conftest import store_of
from .support.redis_servers import free_port
from .support.redis_servers import RedisCluster
from .support.redis_servers import RedisServer

#: A configuration that passes every check of the app's own settings.
PRODUCTION: dict[str, t.Any] = {
    "SECRET_KEY": secrets.token_hex(32),
    "SESSION_COOKIE_NAME": "__Host-session",
    "SESSION_COOKIE_SECURE": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "SERVERSESSION_ABSOLUTE_LIFETIME": timedelta(days=30),
}

MakeApp = t.Callable[..., Flask]


@pytest.fixture(autouse=True)
def one_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test as on one host, whatever platform runs the tests."""
    for name, _platform in PLATFORM_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def check(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["serversession", "check", *args])


def findings(app: Flask, *args: str) -> dict[str, dict[str, t.Any]]:
    """The findings of ``check --json``, by id (each id at most once here)."""
    result = check(app, "--json", *args)
    listed = json.loads(result.output)
    assert len({f["id"] for f in listed}) == len(listed), listed
    errors = any(f["severity"] == "error" for f in listed)
    assert result.exit_code == (1 if errors else 0), result.output
    return {f["id"]: f for f in listed}


def sqlite_app(make_app: MakeApp, tmp_path: t.Any, **config: t.Any) -> Flask:
    uri = f"sqlite:///{tmp_path / 'sessions.sqlite'}"
    return make_app("sqlalchemy", **{"SERVERSESSION_SQLALCHEMY_URI": uri, **config})


def test_clean_production_config_exits_0(make_app: MakeApp, tmp_path: t.Any) -> None:
    result = check(sqlite_app(make_app, tmp_path, **PRODUCTION))
    assert result.exit_code == 0, result.output
    assert result.output == "No problems found.\n"


def test_flask_defaults_are_reported_one_line_each(make_app: MakeApp) -> None:
    result = check(make_app("memory", SECRET_KEY=None))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["error", "serversession.E001"],
        ["warning", "serversession.W003"],
        ["error", "serversession.E004"],
        ["warning", "serversession.W006"],
        ["error", "serversession.E008"],
    ]
    assert lines[0].startswith("error serversession.E001 SESSION_COOKIE_SECURE = False: ")
    assert " Fix: set SESSION_COOKIE_SECURE = True" in lines[0]
    assert lines[-1] == "3 errors, 2 warnings."


def test_warnings_alone_exit_0(make_app: MakeApp, tmp_path: t.Any) -> None:
    config = {**PRODUCTION, "SESSION_COOKIE_SAMESITE": None}
    result = check(sqlite_app(make_app, tmp_path, **config))
    assert result.exit_code == 0
    assert result.output.startswith("warning serversession.W003 SESSION_COOKIE_SAMESITE = None: ")
    assert result.output.endswith("\n0 errors, 1 warning.\n")


def test_json_lists_every_field(make_app: MakeApp, tmp_path: t.Any) -> None:
    app = sqlite_app(
        make_app,
        tmp_path,
        **{**PRODUCTION, "SESSION_COOKIE_NAME": "session", "SESSION_COOKIE_SECURE": False},
    )
    result = check(app, "--json")
    assert result.exit_code == 1
    [finding] = json.loads(result.output)
    assert finding["id"] == "serversession.E001"
    assert finding["severity"] == "error"
    assert finding["setting"] == "SESSION_COOKIE_SECURE"
    assert finding["value"] == "False"
    assert finding["why"].endswith(".")
    assert finding["fix"].startswith("set SESSION_COOKIE_SECURE = True")


def test_ignore_leaves_a_check_out(make_app: MakeApp, tmp_path: t.Any) -> None:
    app = sqlite_app(
        make_app,
        tmp_path,
        **{**PRODUCTION, "SESSION_COOKIE_NAME": "session", "SESSION_COOKIE_SECURE": False},
    )
    result = check(app, "--ignore", "serversession.E001")
    assert result.exit_code == 0, result.output
    result = check(app, "--ignore", "serversession.E999")
    assert result.exit_code == 2
    assert "No check has the id 'serversession.E999'" in result.output


def test_check_ids_say_their_severity() -> None:
    for check_id in CHECKS:
        prefix, number = check_id.split(".")
        assert prefix == "serversession"
        assert number[0] in "EW" and number[1:].isdigit() and len(number) == 4


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (None, "not set"),
        ("", "not set"),
        ("dev-only-secret-key", "14 bytes of key material"),
        (secrets.token_hex(31), "31 bytes of key material"),
        (b"k" * 31, "31 bytes of key material"),
        ("correct horse battery staple, 32", None),
        (secrets.token_hex(32), None),
        (secrets.token_urlsafe(32), None),
        (secrets.token_bytes(32), None),
    ],
)
def test_secret_key_needs_32_bytes_of_key_material(
    make_app: MakeApp, tmp_path: t.Any, key: str | bytes | None, value: str | None
) -> None:
    found = findings(sqlite_app(make_app, tmp_path, **{**PRODUCTION, "SECRET_KEY": key}))
    if value is None:
        assert found == {}
        return
    finding = found["serversession.E004"]
    assert finding["setting"] == "SECRET_KEY"
    assert finding["value"] == value
    assert "python -c 'import secrets; print(secrets.token_hex(32))'" in finding["fix"]


def test_short_fallback_key_is_an_error(make_app: MakeApp, tmp_path: t.Any) -> None:
    config = {**PRODUCTION, "SECRET_KEY_FALLBACKS": [secrets.token_hex(32), "old key"]}
    finding = findings(sqlite_app(make_app, tmp_path, **config))["serversession.E004"]
    assert finding["setting"] == "SECRET_KEY_FALLBACKS[1]"


def test_cookie_readable_by_scripts_is_an_error(make_app: MakeApp, tmp_path: t.Any) -> None:
    config = {**PRODUCTION, "SESSION_COOKIE_HTTPONLY": False}
    assert set(findings(sqlite_app(make_app, tmp_path, **config))) == {"serversession.E002"}


@pytest.mark.parametrize("samesite", [None, "None"])
def test_samesite_unset_or_none_is_a_warning(
    make_app: MakeApp, tmp_path: t.Any, samesite: str | None
) -> None:
    config = {**PRODUCTION, "SESSION_COOKIE_SAMESITE": samesite}
    assert set(findings(sqlite_app(make_app, tmp_path, **config))) == {"serversession.W003"}


def test_unsigned_ids_are_a_warning(make_app: MakeApp, tmp_path: t.Any) -> None:
    config = {**PRODUCTION, "SERVERSESSION_SIGN_ID": False}
    assert set(findings(sqlite_app(make_app, tmp_path, **config))) == {"serversession.W005"}


def test_no_absolute_lifetime_is_a_warning(make_app: MakeApp, tmp_path: t.Any) -> None:
    config = {**PRODUCTION, "SERVERSESSION_ABSOLUTE_LIFETIME": None}
    found = findings(sqlite_app(make_app, tmp_path, **config))
    assert set(found) == {"serversession.W006"}
    assert found["serversession.W006"]["setting"] == "SERVERSESSION_ABSOLUTE_LIFETIME"


def test_header_mode_in_an_app_with_pages_is_a_warning(make_app: MakeApp, tmp_path: t.Any) -> None:
    config = {**PRODUCTION, "SERVERSESSION_HEADER_NAME": "X-Session-Token"}
    api = sqlite_app(make_app, tmp_path, **config)
    assert findings(api) == {}
    pages = sqlite_app(make_app, tmp_path, **config)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "index.html").write_text("<p>{{ session.user }}</p>")
    pages.template_folder = str(tmp_path / "templates")
    found = findings(pages)
    assert set(found) == {"serversession.W007"}
    assert found["serversession.W007"]["value"] == "'X-Session-Token'"


def test_memory_backend_is_an_error(make_app: MakeApp) -> None:
    found = findings(make_app("memory", **PRODUCTION))
    assert set(found) == {"serversession.E008"}
    assert found["serversession.E008"]["setting"] == "SERVERSESSION_BACKEND"


def test_sqlite_in_memory_is_an_error(make_app: MakeApp) -> None:
    app = make_app("sqlalchemy", SERVERSESSION_SQLALCHEMY_URI="sqlite://", **PRODUCTION)
    assert set(findings(app)) == {"serversession.E008"}


@pytest.mark.parametrize(("variable", "platform"), PLATFORM_VARIABLES)
def test_sqlite_on_a_multi_host_platform_is_a_warning(
    make_app: MakeApp,
    tmp_path: t.Any,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    platform: str,
) -> None:
    app = sqlite_app(make_app, tmp_path, **PRODUCTION)
    monkeypatch.setenv(variable, "1")
    found = findings(app)
    assert set(found) == {"serversession.W009"}
    assert found["serversession.W009"]["setting"] == "SERVERSESSION_SQLALCHEMY_URI"
    assert f"{variable} is set ({platform})" in found["serversession.W009"]["why"]


def test_sqlite_default_file_on_one_host_passes(make_app: MakeApp) -> None:
    app = make_app("sqlalchemy", **PRODUCTION)
    assert findings(app) == {}


def filesystem_app(make_app: MakeApp, directory: t.Any) -> Flask:
    return make_app("filesystem", SERVERSESSION_FILE_DIR=str(directory), **PRODUCTION)


def test_filesystem_directory_of_the_app_alone_passes(make_app: MakeApp, tmp_path: t.Any) -> None:
    assert findings(filesystem_app(make_app, tmp_path / "sessions")) == {}


@pytest.mark.parametrize(("mode", "problem"), [(0o777, "others"), (0o770, "its group")])
def test_filesystem_directory_others_can_write_is_an_error(
    make_app: MakeApp, tmp_path: t.Any, mode: int, problem: str
) -> None:
    directory = tmp_path / "sessions"
    app = filesystem_app(make_app, directory)
    os.chmod(directory, mode)
    found = findings(app)
    assert set(found) == {"serversession.E015"}
    finding = found["serversession.E015"]
    assert finding["value"] == f"{str(directory)!r} (mode {mode:04o})"
    assert f"{problem} can write it" in finding["why"]
    assert finding["fix"].startswith(f"chmod 0700 {directory}")


def test_filesystem_parent_others_can_write_is_an_error(make_app: MakeApp, tmp_path: t.Any) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    app = filesystem_app(make_app, parent / "sessions")
    os.chmod(parent, 0o777)
    found = findings(app)
    assert found["serversession.E015"]["value"] == f"parent {str(parent)!r} (mode 0777)"
    os.chmod(parent, 0o1777)
    assert findings(app) == {}


def test_filesystem_directory_gone_is_an_error(make_app: MakeApp, tmp_path: t.Any) -> None:
    directory = tmp_path / "sessions"
    app = filesystem_app(make_app, directory)
    directory.rmdir()
    result = check(app)
    assert result.exit_code == 1
    assert result.output.startswith("error serversession.E010 SERVERSESSION_FILE_DIR = ")


def test_filesystem_on_a_multi_host_platform_is_a_warning(
    make_app: MakeApp, tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = filesystem_app(make_app, tmp_path / "sessions")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert set(findings(app)) == {"serversession.W009"}


def redis_app(make_app: MakeApp, server: RedisServer) -> Flask:
    return make_app("redis", SERVERSESSION_REDIS=server.client(), **PRODUCTION)


@pytest.fixture
def durable_redis(make_redis_server: t.Callable[..., RedisServer]) -> RedisServer:
    """A Redis of this test's own that keeps an append-only file and never evicts."""
    server = make_redis_server("--appendonly", "yes", "--maxmemory-policy", "noeviction")
    return server


@pytest.mark.usefixtures("redis_library")
def test_redis_that_never_evicts_and_persists_passes(
    make_app: MakeApp, durable_redis: RedisServer
) -> None:
    assert findings(redis_app(make_app, durable_redis)) == {}
    client = durable_redis.client()
    client.config_set("appendonly", "no")
    client.config_set("save", "3600 1")
    assert findings(redis_app(make_app, durable_redis)) == {}


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru"])
@pytest.mark.usefixtures("redis_library")
def test_redis_eviction_policy_is_an_error(
    make_app: MakeApp, durable_redis: RedisServer, policy: str
) -> None:
    durable_redis.client().config_set("maxmemory-policy", policy)
    found = findings(redis_app(make_app, durable_redis))
    assert set(found) == {"serversession.E012"}
    assert found["serversession.E012"]["setting"] == "Redis maxmemory-policy"
    assert found["serversession.E012"]["value"] == repr(policy)
    assert "noeviction" in found["serversession.E012"]["fix"]


@pytest.mark.usefixtures("redis_library")
def test_redis_without_persistence_is_a_warning(
    make_app: MakeApp, durable_redis: RedisServer
) -> None:
    client = durable_redis.client()
    client.config_set("appendonly", "no")
    client.config_set("save", "")
    found = findings(redis_app(make_app, durable_redis))
    assert set(found) == {"serversession.W013"}
    assert found["serversession.W013"]["setting"] == "Redis save, appendonly"


@pytest.mark.usefixtures("redis_library")
def test_redis_that_refuses_config_get_is_not_guessed(
    make_app: MakeApp, make_redis_server: t.Callable[..., RedisServer]
) -> None:
    server = make_redis_server("--rename-command", "CONFIG", "")
    result = check(redis_app(make_app, server))
    assert result.exit_code == 0, result.output
    [line, summary] = result.output.splitlines()
    assert line.startswith("warning serversession.W011 Redis maxmemory-policy, save, appendonly")
    assert "CONFIG GET maxmemory-policy: unknown command" in line
    assert summary == "0 errors, 1 warning."


def test_redis_that_cannot_be_reached_is_an_error(make_app: MakeApp, redis_library: str) -> None:
    url = f"{redis_library}://user:hunter2@127.0.0.1:{free_port()}/0"
    result = check(make_app("redis", SERVERSESSION_REDIS_URL=url, **PRODUCTION))
    assert result.exit_code == 1
    assert result.output.startswith("error serversession.E010 SERVERSESSION_REDIS_URL = ")
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("redis_library")
def test_redis_cluster_is_read_on_every_primary(
    make_app: MakeApp, redis_cluster: RedisCluster
) -> None:
    app = make_app("redis", SERVERSESSION_REDIS=redis_cluster.client(), **PRODUCTION)
    result = check(app, "--json")
    listed = json.loads(result.output)
    # The test cluster keeps nothing on disk.
    assert sorted(f["setting"] for f in listed) == sorted(
        f"Redis 127.0.0.1:{port} save, appendonly" for port in redis_cluster.ports
    )
    assert result.exit_code == 0


@pytest.fixture
def postgres_database(postgres_url: str) -> t.Iterator[t.Callable[..., str]]:
    """Make databases of this test's own, with settings: ``make(synchronous_commit="off")``."""
    import sqlalchemy as sa

    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make(**settings: str) -> str:
        name = f"check_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
            made.append(name)
            for setting, value in settings.items():
                conn.execute(sa.text(f"ALTER DATABASE {name} SET {setting} = {value}"))
        return postgres_url.rsplit("/", 1)[0] + f"/{name}"

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


def postgres_app(make_app: MakeApp, url: str, **config: t.Any) -> Flask:
    return make_app("sqlalchemy", SERVERSESSION_SQLALCHEMY_URI=url, **PRODUCTION, **config)


def test_postgres_synchronous_commit_on_passes(
    make_app: MakeApp, postgres_database: t.Callable[..., str]
) -> None:
    app = postgres_app(make_app, postgres_database(synchronous_commit="on"))
    assert findings(app) == {}
    store_of(app).backend.close()


def test_postgres_synchronous_commit_off_is_a_warning(
    make_app: MakeApp, postgres_database: t.Callable[..., str]
) -> None:
    app = postgres_app(make_app, postgres_database(synchronous_commit="off"))
    found = findings(app)
    assert set(found) == {"serversession.W014"}
    assert found["serversession.W014"]["setting"] == "PostgreSQL synchronous_commit"
    assert found["serversession.W014"]["value"] == "'off'"
    store_of(app).backend.close()


def test_postgres_synchronous_commit_of_the_role_is_seen(
    make_app: MakeApp, postgres_database: t.Callable[..., str]
) -> None:
    import sqlalchemy as sa

    url = postgres_database(synchronous_commit="on")
    role = f"check_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(sa.text(f"ALTER ROLE {role} SET synchronous_commit = off"))
    try:
        app = postgres_app(make_app, url.replace("//postgres@", f"//{role}@"))
        assert set(findings(app)) == {"serversession.W014"}
        store_of(app).backend.close()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()


def test_postgres_writes_that_set_synchronous_commit_themselves(
    make_app: MakeApp, postgres_database: t.Callable[..., str]
) -> None:
    url = postgres_database(synchronous_commit="off")
    app = postgres_app(make_app, url, SERVERSESSION_SQLALCHEMY_SYNCHRONOUS_COMMIT=True)
    assert findings(app) == {}
    store_of(app).backend.close()
    app = postgres_app(make_app, url, SERVERSESSION_SQLALCHEMY_SYNCHRONOUS_COMMIT=False)
    found = findings(app)
    assert found["serversession.W014"]["setting"] == "SERVERSESSION_SQLALCHEMY_SYNCHRONOUS_COMMIT"
    store_of(app).backend.close()


def test_postgres_that_cannot_be_reached_is_an_error(make_app: MakeApp) -> None:
    url = f"postgresql+psycopg://app:hunter2@127.0.0.1:{free_port()}/sessions"
    result = check(postgres_app(make_app, url))
    assert result.exit_code == 1
    assert result.output.startswith(
        "error serversession.E010 SERVERSESSION_SQLALCHEMY_URI = 'postgresql+psycopg://app:***@"
    )
    assert "hunter2" not in result.output


@pytest.mark.parametrize("name", ["session", "__Secure-session", "__Http-session"])
def test_a_cookie_that_could_have_the_host_prefix_is_a_warning(
    make_app: MakeApp, tmp_path: t.Any, name: str
) -> None:
    app = sqlite_app(make_app, tmp_path, **{**PRODUCTION, "SESSION_COOKIE_NAME": name})
    found = findings(app)
    assert set(found) == {"serversession.W017"}
    finding = found["serversession.W017"]
    assert (finding["setting"], finding["value"]) == ("SESSION_COOKIE_NAME", repr(name))
    assert finding["fix"].startswith("set SESSION_COOKIE_NAME = '__Host-session'")


@pytest.mark.parametrize(
    "config",
    [
        {"SESSION_COOKIE_NAME": "__Host-Http-session"},
        {"SESSION_COOKIE_NAME": "__host-session"},
        {"SESSION_COOKIE_NAME": "session", "SESSION_COOKIE_DOMAIN": "example.test"},
        {"SESSION_COOKIE_NAME": "session", "SESSION_COOKIE_PATH": "/app"},
        {"SESSION_COOKIE_NAME": "session", "APPLICATION_ROOT": "/app"},
    ],
)
def test_no_host_prefix_warning_where_it_is_there_or_could_not_be(
    make_app: MakeApp, tmp_path: t.Any, config: dict[str, str]
) -> None:
    app = sqlite_app(make_app, tmp_path, **{**PRODUCTION, **config})
    assert findings(app) == {}
