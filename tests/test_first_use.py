from __future__ import annotations

import ast
import configparser
import importlib
import inspect
import json
import re
import subprocess
import sys
import typing as t
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask

from flask_serversession import ServerSession
from flask_serversession.extras import EXTRAS
from flask_serversession.leftover_keys import FLASK_SESSION_KEYS

ROOT = Path(__file__).resolve().parent.parent
FLASK_SESSION_DEFAULTS = [
    name
    for name in dir(pytest.importorskip("flask_session.defaults").Defaults)
    if name.startswith("SESSION_")
]


def make_app(tmp_path: Path, **config: t.Any) -> Flask:
    app = Flask("first_use", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="secret", SERVERSESSION_BACKEND="memory")
    app.config.update(config)
    return app


def init(tmp_path: Path, **config: t.Any) -> list[str]:
    """Run init_app on an app with ``config``; return the warnings it gave."""
    app = make_app(tmp_path, **config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ServerSession(app)
    assert all(w.category is UserWarning for w in caught)
    return [str(w.message) for w in caught]


def test_every_key_flask_session_reads_is_known() -> None:
    assert set(FLASK_SESSION_DEFAULTS) == set(FLASK_SESSION_KEYS)
    # The keys its set-up reads, beside the defaults it declares.
    source = inspect.getsource(importlib.import_module("flask_session"))
    read = set(re.findall(r'config\.get\(\s*"(SESSION_\w+)"', source))
    assert read == set(FLASK_SESSION_KEYS)


def test_warning_points_at_the_apps_own_line(tmp_path: Path) -> None:
    with pytest.warns(UserWarning) as direct:
        ServerSession(make_app(tmp_path, SESSION_TYPE="redis"))
    with pytest.warns(UserWarning) as factory:
        ServerSession().init_app(make_app(tmp_path, SESSION_TYPE="redis"))
    assert [w.filename for w in (*direct, *factory)] == [__file__, __file__]


def test_flask_session_keys_left_over_warn_with_their_replacement(tmp_path: Path) -> None:
    messages = init(tmp_path, SESSION_TYPE="redis", SESSION_REDIS=object())
    assert len(messages) == 2
    kind, client = messages
    assert kind.startswith("SESSION_TYPE is a Flask-Session setting")
    assert "set SERVERSESSION_BACKEND instead" in kind
    assert "SERVERSESSION_BACKEND = 'memory'" in kind
    assert client.startswith("SESSION_REDIS is a Flask-Session setting")
    assert "set SERVERSESSION_REDIS instead" in client


@pytest.mark.parametrize("key", sorted(FLASK_SESSION_KEYS))
def test_each_flask_session_key_warns_once(tmp_path: Path, key: str) -> None:
    (message,) = init(tmp_path, **{key: None})
    assert message.startswith(f"{key} is a Flask-Session setting")
    replacement = FLASK_SESSION_KEYS[key]
    if replacement is None:
        assert message.split(": ", 1)[1].startswith("no key replaces it (")
    else:
        assert f"set {replacement} instead" in message


def test_no_warning_while_adopting_flask_sessions(tmp_path: Path) -> None:
    messages = init(
        tmp_path,
        SERVERSESSION_ADOPT_FLASK_SESSION=True,
        SESSION_TYPE="filesystem",
        SESSION_FILE_DIR=str(tmp_path / "flask_session"),
        SESSION_USE_SIGNER=True,
    )
    assert messages == []


def test_flasks_own_session_keys_never_warn(tmp_path: Path) -> None:
    flask_keys = {k: v for k, v in Flask.default_config.items() if k.startswith("SESSION_")}
    assert "SESSION_COOKIE_NAME" in flask_keys
    flask_keys = {**flask_keys, "SESSION_COOKIE_SECURE": True, "SESSION_COOKIE_NAME": "sid"}
    assert init(tmp_path, **flask_keys) == []


# A child Python in which ``module`` cannot be found, as when it is not installed.
CHILD = """
import json, sys


class Uninstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Uninstalled())
from flask import Flask
from flask_serversession import ConfigError, ServerSession
app = Flask("child", instance_path={instance!r})
app.config.update(SECRET_KEY="secret", **{config!r})
try:
    ServerSession(app)
except ConfigError as e:
    print(json.dumps(str(e)))
else:
    print(json.dumps(None))
"""

MISSING = [
    ("redis", {"SERVERSESSION_BACKEND": "redis"}, "SERVERSESSION_BACKEND = 'redis'"),
    (
        "valkey",
        {"SERVERSESSION_BACKEND": "redis", "SERVERSESSION_REDIS_URL": "valkeys://:pw@cache:6380/0"},
        "SERVERSESSION_REDIS_URL = 'valkeys://***@cache:6380/0'",
    ),
    (
        "psycopg",
        {"SERVERSESSION_SQLALCHEMY_URI": "postgresql+psycopg://app@127.0.0.1/app"},
        "SERVERSESSION_SQLALCHEMY_URI = 'postgresql+psycopg://app@127.0.0.1/app'",
    ),
    ("flask_sqlalchemy", {"SERVERSESSION_SQLALCHEMY": "db"}, "SERVERSESSION_SQLALCHEMY = 'db'"),
    (
        "msgspec",
        {
            "SERVERSESSION_BACKEND": "memory",
            "SERVERSESSION_ADOPT_FLASK_SESSION": True,
            "SESSION_TYPE": "filesystem",
        },
        "SERVERSESSION_ADOPT_FLASK_SESSION = True",
    ),
]


def error_without(tmp_path: Path, module: str, config: dict[str, t.Any]) -> str:
    """The ConfigError that init_app raises with ``config`` where ``module`` is missing."""
    code = CHILD.format(module=module, instance=str(tmp_path / "instance"), config=config)
    child = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    message = json.loads(child.stdout)
    assert message is not None, "init_app succeeded without the package"
    return t.cast(str, message)


@pytest.mark.parametrize(("module", "config", "named"), MISSING, ids=[m[0] for m in MISSING])
def test_missing_extra_is_a_config_error_with_the_install_command(
    tmp_path: Path, module: str, config: dict[str, t.Any], named: str
) -> None:
    message = error_without(tmp_path, module, config)
    assert message.startswith(f"{named} needs the {module} package, which is not installed")
    assert message.endswith(f"pip install 'Flask-ServerSession[{EXTRAS[module]}]'")


def test_the_quickstart_shows_the_error_for_a_missing_extra(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "quickstart.rst").read_text()
    shown = page.split(".. code-block:: text\n\n", 1)[1].split("\n\n")[0]
    message = error_without(tmp_path, "redis", {"SERVERSESSION_BACKEND": "redis"})
    assert " ".join(shown.split()) == f"flask_serversession.errors.ConfigError: {message}"


def test_every_extra_named_in_errors_exists() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert set(EXTRAS.values()) <= set(setup["options.extras_require"])


def test_the_migrating_page_shows_the_warning_as_printed(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "migrating.rst").read_text()
    shown = page.split(".. code-block:: text\n\n", 1)[1].split("\n\n")[0]
    (message,) = init(tmp_path, SESSION_TYPE="redis", SERVERSESSION_BACKEND="sqlalchemy")
    assert " ".join(shown.split()) == f"UserWarning: {message}"


def documented_entries() -> dict[str, tuple[str, str]]:
    """Type and default of every ``.. data::`` entry of the docs, by key."""
    entries = {}
    for page in sorted((ROOT / "docs").glob("*.rst")):
        for match in re.finditer(
            r"^\.\. data:: (SERVERSESSION_\w+)\n(.*?)(?=^\S|\Z)", page.read_text(), re.M | re.S
        ):
            body = " ".join(match[2].split())
            found = re.search(r"Type (.*?)\. Default (.*?)\.(?: |$)", body)
            assert found, f"{match[1]} in {page.name} gives no type and default"
            entries[match[1]] = (found[1], found[2])
    return entries


def configuration_table() -> dict[str, tuple[str, str, str]]:
    """The rows of the table that opens the Configuration page: type, default, line."""
    page = (ROOT / "docs" / "configuration.rst").read_text()
    table = page.split(".. list-table:: Every setting\n", 1)[1].split("\n\n", 2)[1]
    rows = [row.split("\n     - ") for row in table.split("   * - ")[1:]]
    assert rows[0] == ["Key", "Type", "Default", "What it does\n"]
    table_rows = {}
    for key, kind, default, line in rows[1:]:
        name = re.fullmatch(r":data:`(SERVERSESSION_\w+)`", key)
        assert name, key
        table_rows[name[1]] = (" ".join(kind.split()), " ".join(default.split()), line.strip())
    return table_rows


def test_configuration_table_lists_every_key() -> None:
    from flask_serversession.config import DEFAULTS

    table = configuration_table()
    entries = documented_entries()
    assert sorted(table) == sorted(DEFAULTS)
    assert sorted(entries) == sorted(DEFAULTS)
    for key, (kind, default, line) in table.items():
        assert (kind, default) == entries[key], key
        assert line, key
        literal = re.match(r"``(.+?)``", default)
        if literal:
            assert ast.literal_eval(literal[1]) == DEFAULTS[key], key
        else:
            assert isinstance(DEFAULTS[key], timedelta), key
            assert default == humanize(DEFAULTS[key]), key


def humanize(span: timedelta) -> str:
    """A default duration as the docs spell it: "24 hours", "1 hour", "5 minutes"."""
    for unit, seconds in (("hour", 3600), ("minute", 60)):
        if span.total_seconds() % seconds == 0:
            n = int(span.total_seconds() // seconds)
            return f"{n} {unit}" if n == 1 else f"{n} {unit}s"
    raise AssertionError(span)
