"""The app that ``tests/test_faults.py`` serves with gunicorn.

Configured from ``FAULT_*`` environment variables (Flask's ``from_prefixed_env``):
``FAULT_SECRET_KEY``, ``FAULT_SERVERSESSION_BACKEND`` and the backend's own key,
e.g. ``FAULT_SERVERSESSION_REDIS_URL`` or ``FAULT_SERVERSESSION_SQLALCHEMY_URI``.
Gunicorn loads it as ``tests.support.fault_app:create_app()``.
"""

from __future__ import annotations

import logging
import os
import typing as t

from flask import abort
from flask import Flask
from flask import jsonify
from flask import request
from flask import session
from flask.typing import ResponseReturnValue

from flask_serversession import BackendError
from flask_serversession import ServerSession

ENV_PREFIX = "FAULT"
LOG_FORMAT = "%(created).3f [%(process)d] %(levelname)s %(name)s: %(message)s"
logger = logging.getLogger(__name__)


def create_app(**config: t.Any) -> Flask:
    """Build the app from ``FAULT_*`` variables, then ``config``."""
    # Under gunicorn the root logger has no handler yet: give each line the
    # epoch time (tests pick the lines after a moment) and the worker pid.
    # Under pytest, whose handlers are installed, this does nothing.
    logging.basicConfig(format=LOG_FORMAT)
    app = Flask(__name__)
    app.config.from_prefixed_env(ENV_PREFIX)
    app.config.update(config)
    if not app.config.get("SECRET_KEY"):
        raise RuntimeError(f"set {ENV_PREFIX}_SECRET_KEY")
    ServerSession(app)

    @app.errorhandler(BackendError)
    def unavailable(error: BackendError) -> ResponseReturnValue:
        # The client sees a generic 503; the log keeps what failed.
        logger.error("%s %s answered 503: %s", request.method, request.path, error)
        return error

    @app.get("/health")
    def health() -> ResponseReturnValue:
        # Touches no session: tells that a worker answers, and which one.
        return jsonify(pid=os.getpid())

    @app.post("/write")
    def write() -> ResponseReturnValue:
        key = request.args.get("key", "")
        value = request.args.get("value", type=int)
        if not key or value is None:
            abort(400)
        session[key] = value
        return jsonify(key=key, value=value)

    @app.get("/read")
    def read() -> ResponseReturnValue:
        return jsonify(dict(session))

    return app
