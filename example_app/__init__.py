from __future__ import annotations

import os
import typing as t
from datetime import timedelta

from flask import Flask
from prometheus_client import CollectorRegistry
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from flask_serversession import ServerSession

from .devices import describe_device

server_session = ServerSession()


def create_app(
    test_config: t.Mapping[str, t.Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    """Create the example app.

    Settings come from ``FLASK_*`` environment variables, e.g.
    ``FLASK_SERVERSESSION_BACKEND=redis``. With none set, sessions are kept in
    a SQLite file in the instance folder.

    :param test_config: settings applied last, for tests.
    :param instance_path: the instance folder; Flask's default if None.
    """
    app = Flask(__name__, instance_path=instance_path)
    app.config.from_mapping(
        # For local development only. In production set FLASK_SECRET_KEY to a
        # long random value (python -c "import secrets; print(secrets.token_hex())"):
        # anyone who knows this key can sign session tokens for this app.
        SECRET_KEY="dev-only-secret-key",
        # Sessions are indexed by the signed-in user, for the "Your devices" page.
        SERVERSESSION_USER_KEY="user",
        SERVERSESSION_TRACK_CLIENT=True,
        # The session id changes every 15 minutes with no sign-out; a copy of an
        # old cookie used after that ends the session (docs: rotation.rst).
        SERVERSESSION_ROTATE_EVERY=timedelta(minutes=15),
        # No session lives longer than "Remember me" keeps it, however often it is used.
        SERVERSESSION_ABSOLUTE_LIFETIME=timedelta(days=30),
        SESSION_COOKIE_SAMESITE="Lax",
        # Over HTTPS, a sign-in offers browsers with DBSC to bind the session to a
        # key the device keeps; a copy of the cookie then opens nothing
        # (docs: device_bound.rst). Over plain HTTP nothing changes.
        SERVERSESSION_DEVICE_BOUND=True,
        # Session metrics on a registry of this app's own, served at /metrics
        # and shown on the admin page (docs: monitoring.rst).
        SERVERSESSION_METRICS="prometheus",
        SERVERSESSION_METRICS_REGISTRY=CollectorRegistry(),
    )
    app.config.from_prefixed_env()
    if test_config is not None:
        app.config.update(test_config)
    if app.config["SESSION_COOKIE_SECURE"] and app.config["SESSION_COOKIE_NAME"] == "session":
        # Over HTTPS the cookie takes the __Host- prefix: no subdomain and no
        # plain-HTTP page can plant one of the same name (docs: security.rst).
        app.config["SESSION_COOKIE_NAME"] = "__Host-session"
    os.makedirs(app.instance_path, exist_ok=True)

    server_session.init_app(app)

    from . import views
    from .api import create_api_app

    app.register_blueprint(views.bp)
    # API clients send and receive the token in a header: an app of its own.
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/api": create_api_app(app)}
    )
    app.add_template_filter(views.utc, "utc")
    app.add_template_filter(describe_device, "device")
    return app
