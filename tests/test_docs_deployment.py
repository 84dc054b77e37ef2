"""docs/deployment.rst: the app, its environment file, gunicorn, systemd and nginx blocks."""

from __future__ import annotations

import configparser
import re
import secrets
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask import request
from flask import session

PAGE = Path(__file__).resolve().parent.parent / "docs" / "deployment.rst"


def blocks(language: str) -> list[str]:
    """The code blocks of the page in ``language``, dedented."""
    found = re.findall(
        rf"^\.\. code-block:: {language}\n\n((?:    .*\n|\n)+)", PAGE.read_text(), re.MULTILINE
    )
    return [re.sub("^    ", "", block, flags=re.MULTILINE).strip() + "\n" for block in found]


def environment(redis_url: str) -> dict[str, str]:
    """The environment file's variables, with a real key and the test's Redis."""
    text = blocks("sh")[0]
    variables = dict(line.split("=", 1) for line in text.splitlines() if line)
    variables["FLASK_SECRET_KEY"] = secrets.token_hex(32)
    variables["FLASK_SERVERSESSION_REDIS_URL"] = redis_url
    return variables


def create_app() -> t.Callable[[], Flask]:
    namespace: dict[str, t.Any] = {"__name__": "myapp"}
    exec(blocks("python")[0], namespace)
    return t.cast(t.Callable[[], Flask], namespace["create_app"])


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, redis_server: t.Any) -> t.Iterator[Flask]:
    for name, value in environment(redis_server.url).items():
        monkeypatch.setenv(name, value)
    app = create_app()()
    yield app
    app.extensions["serversession"].backend.close()


def test_the_recipes_app_passes_check(app: Flask) -> None:
    # The test's throwaway Redis keeps no copy on disk (W013); a production one does.
    result = app.test_cli_runner().invoke(args=["serversession", "check", "--ignore", "W013"])
    assert result.output == "No problems found.\n" and result.exit_code == 0


def test_the_proxy_headers_nginx_sets_reach_the_app(app: Flask) -> None:
    @app.get("/where")
    def where() -> dict[str, str | None]:
        session["seen"] = True
        return {"scheme": request.scheme, "remote_addr": request.remote_addr}

    response = app.test_client().get(
        "/where",
        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert response.json == {"scheme": "https", "remote_addr": "203.0.113.7"}
    assert "Secure" in response.headers["Set-Cookie"]
    nginx = blocks("nginx")[0]
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in nginx
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in nginx
    assert "proxy_pass http://127.0.0.1:8000;" in nginx


def test_a_typo_in_the_environment_keeps_the_service_from_starting(
    monkeypatch: pytest.MonkeyPatch, redis_server: t.Any
) -> None:
    for name, value in environment(redis_server.url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FLASK_SERVERSESSION_REDIS_URL")
    monkeypatch.setenv("FLASK_SERVERSESSION_REDIS_URI", redis_server.url)
    with pytest.warns(UserWarning, match="did you mean SERVERSESSION_REDIS_URL"):
        app = create_app()()
    # ExecStartPre fails, so systemd does not start gunicorn.
    result = app.test_cli_runner().invoke(args=["serversession", "check"])
    assert result.exit_code == 1 and "serversession.E018" in result.output


def test_the_gunicorn_settings_are_valid() -> None:
    from gunicorn.config import Config

    settings: dict[str, t.Any] = {}
    exec(blocks("python")[1], settings)
    config = Config()
    for name, value in settings.items():
        if not name.startswith("__"):
            config.set(name, value)
    assert config.worker_class_str == "gthread" and config.threads == 4
    assert config.address == [("127.0.0.1", 8000)]


def test_the_unit_checks_before_it_starts_gunicorn() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(blocks("ini")[0])
    service = unit["Service"]
    assert service["EnvironmentFile"] == "/etc/myapp/env"
    assert service["ExecStartPre"].endswith("/flask serversession check")
    assert "gunicorn -c gunicorn.conf.py 'myapp:create_app()'" in service["ExecStart"]
    assert service["Environment"] == "FLASK_APP=myapp:create_app()"
