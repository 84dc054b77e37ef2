"""A SERVERSESSION_* key that no setting has warns at init_app and fails ``check``."""

from __future__ import annotations

import json
import typing as t

import pytest
from flask import Flask

from flask_serversession import ServerSession
from flask_serversession.config import DEFAULTS
from flask_serversession.unknown_keys import PLANNED_KEYS

from .conftest import store_of

MakeApp = t.Callable[..., Flask]


def new_app(tmp_path: t.Any, **config: t.Any) -> Flask:
    app = Flask("tests", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="test secret key", SERVERSESSION_BACKEND="memory", **config)
    return app


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("SERVERSESSION_SQLALCHEMY_URL", "SERVERSESSION_SQLALCHEMY_URI"),
        ("SERVERSESSION_REDIS_URI", "SERVERSESSION_REDIS_URL"),
        ("SERVERSESSION_BACKENDS", "SERVERSESSION_BACKEND"),
        ("SERVERSESION_BACKEND", "SERVERSESSION_BACKEND"),
        ("SERVER_SESSION_USER_KEY", "SERVERSESSION_USER_KEY"),
    ],
)
def test_typo_warns_naming_the_closest_key(tmp_path: t.Any, typo: str, meant: str) -> None:
    app = new_app(tmp_path, **{typo: "x"})
    with pytest.warns(UserWarning) as caught:
        ServerSession(app)
    assert [str(w.message) for w in caught] == [
        f"{typo} is not a Flask-ServerSession setting and is ignored: did you mean {meant}?"
    ]
    # The warning points at the app's own line, not into the package.
    assert caught[0].filename == __file__


def test_key_like_no_other_says_where_the_keys_are(tmp_path: t.Any) -> None:
    with pytest.warns(UserWarning, match="SERVERSESSION_ZZZ is not .*: remove it; the conf"):
        ServerSession(new_app(tmp_path, SERVERSESSION_ZZZ=1))


def test_known_and_unrelated_keys_do_not_warn(tmp_path: t.Any) -> None:
    # Every default key, the keys of features built elsewhere, and keys of other extensions.
    app = new_app(tmp_path, SERVER_NAME=None, SESSION_COOKIE_NAME="s")
    for key, default in DEFAULTS.items():
        app.config.setdefault(key, default)
    for key in PLANNED_KEYS:
        app.config.setdefault(key, None)
    ServerSession(app)  # filterwarnings = error: a warning fails the test


def test_a_key_added_to_the_defaults_later_is_known(
    tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(DEFAULTS, "SERVERSESSION_NEW_FEATURE", False)
    ServerSession(new_app(tmp_path, SERVERSESSION_NEW_FEATURE=True))


def test_check_reports_the_typo_as_an_error(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_SQLALCHEMY_URL="postgresql://db/app")
    with pytest.warns(UserWarning):
        ServerSession(app)
    assert store_of(app).backend.__class__.__name__ == "MemoryBackend"
    result = app.test_cli_runner().invoke(args=["serversession", "check", "--json"])
    assert result.exit_code == 1
    found = {f["id"]: f for f in json.loads(result.output)}
    finding = found["serversession.E018"]
    assert finding["setting"] == "SERVERSESSION_SQLALCHEMY_URL"
    assert finding["severity"] == "error"
    assert finding["fix"] == "did you mean SERVERSESSION_SQLALCHEMY_URI?"
