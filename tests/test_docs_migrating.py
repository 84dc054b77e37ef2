"""The examples of docs/migrating.rst, run as the page shows them."""

from __future__ import annotations

import re
import typing as t
from datetime import datetime
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

from flask import Flask

from flask_serversession import ServerSession

from .conftest import add_views
from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of
from .support.redis_servers import RedisServer

PAGE = Path(__file__).resolve().parents[1] / "docs" / "migrating.rst"


def section(title: str) -> str:
    text = PAGE.read_text()
    start = text.index(f"\n{title}\n")
    end = text.find("\n.. versionadded::", start)
    return text[start:end]


def python_block(text: str) -> str:
    found = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text)
    assert found
    return "\n".join(line[4:] for line in found[1].splitlines())


def test_moving_between_stores_example(tmp_path: Path, redis_server: RedisServer) -> None:
    text = section("Moving between stores")
    sqlite_file = tmp_path / "serversession.sqlite"
    code = python_block(text)
    assert "/srv/myapp/instance/serversession.sqlite" in code
    assert "redis://sessions.internal:6379/0" in code
    code = code.replace("/srv/myapp/instance/serversession.sqlite", str(sqlite_file))
    code = code.replace("redis://sessions.internal:6379/0", redis_server.url)

    before = Flask("before", instance_path=str(tmp_path))
    before.config.update(SECRET_KEY="k", SERVERSESSION_SQLALCHEMY_URI=f"sqlite:///{sqlite_file}")
    ServerSession(before)
    add_views(before)
    tokens = []
    for n in range(3):
        client = before.test_client()
        client.post("/set", json={"n": n})
        tokens.append(session_cookie(client))

    app = Flask("after", instance_path=str(tmp_path))
    app.config.update(SECRET_KEY="k", SERVERSESSION_KEY_PREFIX="docs-migrating:")
    exec(code, {"app": app, "ServerSession": ServerSession})
    add_views(app)
    client = app.test_client()
    client.set_cookie("session", t.cast(str, tokens[0]))
    response = client.get("/dump")
    assert response.get_json() == {"n": 0}
    assert "Set-Cookie" not in response.headers

    # The command's lines have the shape the page shows.
    shown = re.findall(r"^       (?:\$ flask .*|(?:Would move|Moved|The old) .*)$", text, re.M)
    runner = app.test_cli_runner()
    dry = runner.invoke(args=["serversession", "migrate", "--dry-run"])
    assert dry.output.splitlines()[-1] == re.sub(r"\d+", "2", shown[1].strip())
    done = runner.invoke(args=["serversession", "migrate"])
    expected = re.sub(r"skipped \d+", "skipped 0", re.sub(r"Moved \d+", "Moved 2", shown[3]))
    assert done.output.splitlines()[-2] == expected.strip()
    assert done.output.splitlines()[-1] == shown[4].strip()
    for token in tokens[1:]:
        client.set_cookie("session", t.cast(str, token))
        assert client.get("/dump").get_json() is not None
    with app.app_context():
        assert ServerSession().count() == 3


def test_settings_that_keep_flask_sessions_lifetime(tmp_path: Path) -> None:
    text = section("From Flask-Session")
    app = Flask("kept", instance_path=str(tmp_path))
    app.config.update(SECRET_KEY="k", SERVERSESSION_BACKEND="memory")
    exec(python_block(text), {"app": app})
    ServerSession(app)
    add_views(app)
    clock = Clock()
    store_of(app).clock = clock
    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    assert client.get("/meta").get_json()["permanent"] is True
    # Ten days later a request that only reads pushes the expiry to 31 days
    # from then, as Flask-Session's refresh on every request does, and the
    # cookie follows.
    clock.advance(days=10)
    response = client.get("/dump")
    [cookie] = response.headers.getlist("Set-Cookie")
    expires = parsedate_to_datetime(cookie.split("Expires=")[1].split(";")[0])
    assert expires == clock.now + timedelta(days=31)
    meta = client.get("/meta").get_json()
    assert datetime.fromisoformat(meta["expires_at"]) == clock.now + timedelta(days=31)
