"""The app that ``tests/test_rotation_gunicorn.py`` serves with gunicorn.

The fault app (configured from ``FAULT_*`` variables) with views for tabs
that share one session: ``/tab/append`` adds a number to the tab's own list,
``/tab/read`` returns every list. Both answer 401, and write nothing, when
the request finds no signed-in session. ``ROTATION_SLOW_WRITES_MS`` slows
every create and every rotation's write (an update that compares and sets)
by that many milliseconds. Gunicorn loads it as
``tests.support.rotation_app:create_app()``.
"""

from __future__ import annotations

import os
import time
import typing as t

from flask import abort
from flask import Flask
from flask import jsonify
from flask import request
from flask import session
from flask.typing import ResponseReturnValue

from . import fault_app


def create_app(**config: t.Any) -> Flask:
    app = fault_app.create_app(**config)
    slow_ms = int(os.environ.get("ROTATION_SLOW_WRITES_MS", "0"))
    if slow_ms:
        slow_writes(app.extensions["serversession"].backend, slow_ms / 1000)

    @app.post("/sign-in")
    def sign_in() -> ResponseReturnValue:
        session.regenerate()
        session["user"] = "alice"
        return jsonify(user="alice")

    @app.post("/tab/append")
    def tab_append() -> ResponseReturnValue:
        tab = request.args.get("tab", "")
        value = request.args.get("value", type=int)
        if not tab or value is None:
            abort(400)
        if "user" not in session:
            abort(401)
        session.setdefault(f"tab-{tab}", []).append(value)
        return jsonify(tab=tab, value=value)

    @app.get("/tab/read")
    def tab_read() -> ResponseReturnValue:
        if "user" not in session:
            abort(401)
        return jsonify({k: v for k, v in session.items() if k.startswith("tab-")})

    return app


def slow_writes(backend: t.Any, seconds: float) -> None:
    """Make ``backend``'s creates and compare-and-set updates take ``seconds`` longer."""
    create, update = backend.create, backend.update

    def slow_create(*args: t.Any) -> t.Any:
        time.sleep(seconds)
        return create(*args)

    def slow_update(key: str, delta: t.Any, now: t.Any) -> t.Any:
        if getattr(delta, "expect", None) is not None:
            time.sleep(seconds)
        return update(key, delta, now)

    backend.create, backend.update = slow_create, slow_update
