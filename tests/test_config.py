from __future__ import annotations

import os
import typing as t
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask import session

from flask_serversession import ConfigError
from flask_serversession import ServerSession
from flask_serversession.backends.memory import MemoryBackend

from .conftest import store_of

BAD_VALUES = [
    ("SERVERSESSION_BACKEND", "mongodb"),
    ("SERVERSESSION_BACKEND", 42),
    ("SERVERSESSION_EXPIRE_TIME", 0),
    ("SERVERSESSION_EXPIRE_TIME", -5),
    ("SERVERSESSION_EXPIRE_TIME", "1h"),
    ("SERVERSESSION_EXPIRE_TIME", True),
    ("SERVERSESSION_RENEW_TIME", timedelta(seconds=-1)),
    ("SERVERSESSION_RENEW_ON", "sometimes"),
    ("SERVERSESSION_ABSOLUTE_LIFETIME", 0),
    ("SERVERSESSION_PERMANENT", "yes"),
    ("SERVERSESSION_SIGN_ID", 1),
    ("SERVERSESSION_HEADER_NAME", ""),
    ("SERVERSESSION_HEADER_NAME", 7),
    ("SERVERSESSION_MAX_SIZE", 0),
    ("SERVERSESSION_MAX_SIZE", 1.5),
    ("SERVERSESSION_PURGE_EVERY", -1),
    ("SERVERSESSION_MEMORY_MAX_ENTRIES", 0),
]


def new_app(tmp_path: t.Any, **config: t.Any) -> Flask:
    app = Flask("config_test", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="secret", SERVERSESSION_BACKEND="memory")
    app.config.update(config)
    return app


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v in BAD_VALUES])
def test_bad_value_names_key_and_value(tmp_path: t.Any, key: str, value: t.Any) -> None:
    app = new_app(tmp_path, **{key: value})
    with pytest.raises(ConfigError) as info:
        ServerSession(app)
    message = str(info.value)
    assert key in message and repr(value) in message and "expected" in message
    assert "serversession" not in app.extensions


def test_missing_secret_key_fails_like_flask_on_first_write(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SECRET_KEY=None, TESTING=True)
    ServerSession(app)

    @app.get("/read")
    def read() -> str:
        return repr(session.get("a"))

    @app.post("/write")
    def write() -> str:
        session["a"] = 1
        return "written"

    client = app.test_client()
    assert client.get("/read").text == "None"
    with pytest.raises(RuntimeError, match="secret key"):
        client.post("/write")


def test_secret_key_set_after_init_app_is_used(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SECRET_KEY=None)
    ServerSession(app)
    app.secret_key = "set later, as app factories do"

    @app.post("/write")
    def write() -> str:
        session["a"] = 1
        return "written"

    @app.get("/read")
    def read() -> str:
        return repr(session.get("a"))

    client = app.test_client()
    assert client.post("/write").status_code == 200
    assert client.get("/read").text == "1"


def test_unsigned_ids_need_no_secret_key(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SECRET_KEY=None, SERVERSESSION_SIGN_ID=False)
    ServerSession(app)
    assert "serversession" in app.extensions


def test_defaults_are_filled_in(tmp_path: t.Any) -> None:
    app = new_app(tmp_path)
    ServerSession(app)
    assert app.config["SERVERSESSION_EXPIRE_TIME"] == timedelta(hours=24)
    assert app.config["SERVERSESSION_RENEW_TIME"] == timedelta(hours=1)
    assert app.config["SERVERSESSION_RENEW_ON"] == "modify"
    assert app.config["SERVERSESSION_MAX_SIZE"] == 1024 * 1024
    settings = store_of(app).settings
    assert settings.permanent is False and settings.sign_id is True


def test_backend_instance_is_used_as_given(tmp_path: t.Any) -> None:
    backend = MemoryBackend(max_entries=5)
    app = new_app(tmp_path, SERVERSESSION_BACKEND=backend)
    ServerSession(app)
    assert store_of(app).backend is backend


def test_init_app_twice_on_one_app_is_refused(tmp_path: t.Any) -> None:
    app = new_app(tmp_path)
    ServerSession(app)
    with pytest.raises(RuntimeError, match="already been registered"):
        ServerSession().init_app(app)


def test_app_factory_used_twice_in_one_process(make_app: t.Callable[..., Flask]) -> None:
    extension = ServerSession()
    apps = []
    for name in ("one", "two"):
        app = Flask(name)
        app.config.update(SECRET_KEY=name, SERVERSESSION_BACKEND="memory")
        extension.init_app(app)
        apps.append(app)
    with apps[0].app_context():
        extension.create({"app": "one"})
    with apps[1].app_context():
        assert extension.count() == 0
    assert store_of(apps[0]).backend is not store_of(apps[1]).backend


def test_programmatic_call_outside_an_app_context(tmp_path: t.Any) -> None:
    with pytest.raises(RuntimeError, match="application context"):
        ServerSession().count()


def test_programmatic_call_on_an_app_without_init(tmp_path: t.Any) -> None:
    app = new_app(tmp_path)
    with app.app_context(), pytest.raises(RuntimeError, match="init_app"):
        ServerSession().count()


def test_memory_backend_is_lru_bounded(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_MEMORY_MAX_ENTRIES=3)
    extension = ServerSession(app)
    with app.app_context():
        tokens = [extension.create({"n": n}) for n in range(5)]
        assert extension.count() == 3
        assert extension.get(tokens[-1]) == {"n": 4}


def file_dir_error(tmp_path: t.Any, directory: str) -> str:
    app = Flask("tests", instance_path=str(tmp_path / "instance"))
    app.config.update(SERVERSESSION_BACKEND="filesystem", SERVERSESSION_FILE_DIR=directory)
    with pytest.raises(ConfigError) as raised:
        ServerSession(app)
    return str(raised.value)


def test_a_session_directory_of_another_user_is_named_once_with_one_period(
    tmp_path: t.Any,
) -> None:
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    try:
        os.chown(directory, 65534, -1)
    except PermissionError:
        pytest.skip("only root can give the directory to another user")
    message = file_dir_error(tmp_path, str(directory))
    assert message.startswith(f"SERVERSESSION_FILE_DIR = {str(directory)!r} cannot be used: The")
    assert ".." not in message and "[Errno" not in message
    assert message.endswith("or use a new directory.")


def test_an_unwritable_session_directory_is_named_not_a_file_in_it(tmp_path: t.Any) -> None:
    directory = tmp_path / "read-only"
    directory.mkdir(mode=0o700)
    if os.geteuid() == 0:
        # Root writes anywhere it has permission bits for; a read-only kernel directory does not.
        directory = Path("/sys/kernel")
        if not directory.is_dir() or _writable(directory):
            pytest.skip("no directory that root cannot write")
    else:
        directory.chmod(0o500)
    message = file_dir_error(tmp_path, str(directory))
    assert message == (
        f"SERVERSESSION_FILE_DIR = {str(directory)!r} cannot be used: Permission denied when"
        " creating a file in it. Point it at a directory the app can create and write."
    )


def _writable(directory: Path) -> bool:
    try:
        (directory / ".serversession-probe").touch()
    except OSError:
        return False
    (directory / ".serversession-probe").unlink()
    return True
