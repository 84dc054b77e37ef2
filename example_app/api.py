from __future__ import annotations

import typing as t

from flask import Blueprint
from flask import Flask
from flask import request
from flask import session

from . import server_session
from .views import refuse_cross_origin

#: Served under /api by its own app, the one with header mode on.
api = Blueprint("api", __name__)

#: The header API clients send and receive the token in.
HEADER = "X-Session-Token"


def create_api_app(pages: Flask) -> Flask:
    """The JSON API, an app of its own that shares the pages' store and keys.

    Header mode is a setting of a whole app: in the app that renders pages
    it would let page scripts hold a token outside the HttpOnly cookie
    (``flask serversession check`` reports it as W007). So the API, where
    clients want the token in a header, is a second app that
    ``create_app`` mounts under ``/api``.
    """
    app = Flask(__name__, instance_path=pages.instance_path, template_folder=None)
    shared = ("SECRET_KEY", "SECRET_KEY_FALLBACKS", "SERVERSESSION_", "SESSION_")
    app.config.update({k: v for k, v in pages.config.items() if k.startswith(shared)})
    app.config["SERVERSESSION_HEADER_NAME"] = HEADER
    server_session.init_app(app)
    # A browser sends its session cookie here too: refuse forged posts as the pages do.
    app.before_request(refuse_cross_origin)
    app.register_blueprint(api)
    return app


@api.post("/login")
def api_login() -> t.Any:
    """Sign in and return a token; send it back in the X-Session-Token header."""
    body = request.get_json(silent=True) or {}
    username = str(body.get("username", "")).strip()
    if not username:
        return {"error": 'Send {"username": ...}.'}, 400
    token = server_session.create({"user": username, "cart": []})
    return {"token": token, "header": HEADER}


@api.route("/cart", methods=["GET", "POST"])
def api_cart() -> t.Any:
    if "user" not in session:
        return {"error": "Sign in at /api/login and send the token in X-Session-Token."}, 401
    if request.method == "POST":
        body = request.get_json(silent=True) or {}
        item = str(body.get("item", "")).strip()
        if not item:
            return {"error": 'Send {"item": ...}.'}, 400
        session.setdefault("cart", []).append(item)
    return {"user": session["user"], "cart": session.get("cart", [])}
