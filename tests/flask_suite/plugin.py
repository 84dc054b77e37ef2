"""A pytest plugin that installs ServerSession on every Flask app a test suite builds.

Run Flask's own tests with it (see ``run.py`` beside it), so that each of
Flask's session tests meets ServerSession instead of the cookie session:
``FLASK_SUITE_BACKEND`` picks the backend (``memory``, ``sqlite`` or
``redis``; for Redis, ``FLASK_SUITE_REDIS_URL`` names a loopback server).
"""

from __future__ import annotations

import itertools
import os
import tempfile
import typing as t

import _pytest.monkeypatch
import flask

from flask_serversession import ServerSession

# Flask's conftest reads pytest's "not set" marker by its old name, which
# pytest 9.2 renamed.
if not hasattr(_pytest.monkeypatch, "notset"):
    _pytest.monkeypatch.notset = _pytest.monkeypatch.NOTSET  # type: ignore[attr-defined]

_original_init = flask.Flask.__init__
_apps = itertools.count()
_scratch = tempfile.mkdtemp(prefix="flask-suite-")


def _config(number: int) -> dict[str, t.Any]:
    backend = os.environ.get("FLASK_SUITE_BACKEND", "memory")
    if backend == "sqlite":
        uri = f"sqlite:///{_scratch}/app-{number}.sqlite"
        return {"SERVERSESSION_BACKEND": "sqlalchemy", "SERVERSESSION_SQLALCHEMY_URI": uri}
    if backend == "redis":
        return {
            "SERVERSESSION_BACKEND": "redis",
            "SERVERSESSION_REDIS_URL": os.environ["FLASK_SUITE_REDIS_URL"],
            "SERVERSESSION_KEY_PREFIX": f"flask-suite:{os.getpid()}:{number}:",
        }
    return {"SERVERSESSION_BACKEND": backend}


def _init_with_serversession(self: flask.Flask, *args: t.Any, **kwargs: t.Any) -> None:
    _original_init(self, *args, **kwargs)
    self.config.update(_config(next(_apps)))
    ServerSession(self)


flask.Flask.__init__ = _init_with_serversession  # type: ignore[method-assign]
