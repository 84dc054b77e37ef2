from __future__ import annotations

import itertools
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from urllib.parse import urlsplit

from flask import abort
from flask import Blueprint
from flask import current_app
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import session
from flask import url_for
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import generate_latest

from . import figures
from . import server_session
from .devices import describe_span

bp = Blueprint("pages", __name__)

#: How long "Remember me" keeps a session, and its cookie, alive.
REMEMBER_FOR = timedelta(days=30)


@bp.before_app_request
def refuse_cross_origin() -> None:
    """Refuse state-changing requests that a browser sent from another origin (CSRF).

    Browsers say where a request comes from in ``Sec-Fetch-Site``, or in
    ``Origin`` if they are older; clients that send neither (curl, the test
    client) are no browser that a forged page could drive. SameSite=Lax alone
    is not enough: a page on another port of the same host is the same site,
    and its forms would post with the session cookie. Flask-WTF's
    ``CSRFProtect`` (a token in every form) is the other common choice.
    """
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        if fetch_site not in ("same-origin", "none"):
            abort(403)
        return
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        abort(403)


def utc(value: datetime | None) -> str:
    """Format an aware datetime for the templates."""
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def config_duration(key: str) -> timedelta:
    """Read a duration setting, given as a timedelta or a number of seconds."""
    value = current_app.config[key]
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


@bp.route("/")
def index() -> str:
    # A cookie that opened no session: revoked from another device, or expired.
    ended = session.new and current_app.config["SESSION_COOKIE_NAME"] in request.cookies
    session["visits"] = session.get("visits", 0) + 1
    return render_template(
        "index.html",
        visits=session["visits"],
        user=session.get("user"),
        remembered=session.get("remembered", False),
        ended=ended,
    )


@bp.route("/login", methods=["GET", "POST"])
def login() -> t.Any:
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        if not username:
            flash("Enter a username.")
            return render_template("login.html", remember_days=REMEMBER_FOR.days), 400
        # A new id on sign-in: a token planted before it is worth nothing after.
        session.regenerate()
        session["user"] = username
        if request.form.get("remember"):
            # This session's own lifetime; its cookie outlives the browser.
            session.set_lifetime(REMEMBER_FOR)
            session["remembered"] = True
        flash(f"Signed in as {username}.")
        return redirect(url_for("pages.index"))
    return render_template("login.html", remember_days=REMEMBER_FOR.days)


@bp.post("/logout")
def logout() -> t.Any:
    # Deletes the stored session: the old cookie grants nothing any more.
    session.destroy()
    # Data set after destroy() starts a new session with a new id.
    flash("Signed out.")
    return redirect(url_for("pages.index"))


@bp.route("/cart", methods=["GET", "POST"])
def cart() -> t.Any:
    if request.method == "POST":
        item = request.form.get("item", "").strip()
        if item:
            # Changed in place: no session.modified = True needed.
            session.setdefault("cart", []).append(item)
            flash(f"Added {item}.")
        return redirect(url_for("pages.cart"))
    return render_template("cart.html", cart=session.get("cart", []))


@bp.post("/cart/empty")
def empty_cart() -> t.Any:
    session.pop("cart", None)
    flash("Cart emptied.")
    return redirect(url_for("pages.cart"))


def id_age(given_at: datetime | None) -> str:
    """How long ago the session got its current id, in whole minutes."""
    if given_at is None:
        return "-"
    minutes = int((datetime.now(timezone.utc) - given_at).total_seconds() // 60)
    return "less than a minute" if minutes < 1 else describe_span(timedelta(minutes=minutes))


@bp.route("/session")
def session_info() -> str:
    rotate_every = current_app.config.get("SERVERSESSION_ROTATE_EVERY")
    renewal_notice(request.args.get("renewed"), session.expires_at)
    return render_template(
        "session.html",
        renew_time=describe_span(config_duration("SERVERSESSION_RENEW_TIME")),
        new=session.new,
        storage_key=session.storage_key,
        created_at=session.created_at,
        expires_at=session.expires_at,
        id_given_at=session.id_given_at,
        id_age=id_age(session.id_given_at),
        rotate_every=rotate_every and describe_span(config_duration("SERVERSESSION_ROTATE_EVERY")),
        permanent=session.permanent,
        remembered=session.get("remembered", False),
        # Keys starting with "_" are Flask's own (_flashes, _permanent) or an extension's.
        keys=sorted(key for key in session if not key.startswith("_")),
    )


@bp.post("/session/renew")
def renew() -> t.Any:
    # The renewal happens when the session is saved, after this view: the
    # page it redirects to compares the expiry with the one before.
    before = session.expires_at
    session.renew()
    return redirect(url_for("pages.session_info", renewed=before and before.timestamp()))


def renewal_notice(renewed: str | None, expires_at: datetime | None) -> None:
    """Say whether the Renew button moved the expiry, which it does only when little is left."""
    if renewed is None or expires_at is None:
        return
    try:
        before = datetime.fromtimestamp(float(renewed), timezone.utc)
    except ValueError:
        return
    if expires_at > before:
        flash("Expiry pushed back.")
    else:
        renew_time = describe_span(config_duration("SERVERSESSION_RENEW_TIME"))
        flash(f"Expiry unchanged: more than {renew_time} was left.")


@bp.post("/session/permanent")
def set_permanent() -> t.Any:
    # Changing the flag re-sends the cookie, with an expiry or without one.
    session.permanent = request.form.get("permanent") == "on"
    if session.permanent:
        flash("The cookie now has an expiry and outlives the browser.")
    else:
        flash("The cookie now ends when the browser closes.")
    return redirect(url_for("pages.session_info"))


@bp.route("/devices")
def devices() -> t.Any:
    if "user" not in session:
        return redirect(url_for("pages.login"))
    # Indexed by SERVERSESSION_USER_KEY; current=True marks this browser's session.
    sessions = server_session.user_sessions(session["user"])
    return render_template(
        "devices.html",
        sessions=sessions,
        last_seen_every=describe_span(config_duration("SERVERSESSION_LAST_SEEN_EVERY")),
    )


@bp.post("/devices/revoke")
def revoke_device() -> t.Any:
    if "user" not in session:
        abort(403)
    storage_key = request.form.get("storage_key", "")
    # Only the user's own sessions: a storage key from anyone else's is refused.
    own = {info.storage_key for info in server_session.user_sessions(session["user"])}
    if storage_key not in own:
        abort(404)
    # Its next request starts a fresh, empty session: that device is signed out.
    server_session.revoke(storage_key)
    flash("Signed out that device.")
    return redirect(url_for("pages.devices"))


@bp.post("/devices/revoke-others")
def revoke_other_devices() -> t.Any:
    if "user" not in session:
        abort(403)
    ended = server_session.revoke_user(session["user"], keep_current=True)
    flash(f"Signed out {ended} other device{'' if ended == 1 else 's'}.")
    return redirect(url_for("pages.devices"))


@bp.route("/admin")
def admin() -> t.Any:
    # A real app would check an admin role here, not only a signed-in user.
    if "user" not in session:
        flash("Sign in to see the sessions page.")
        return redirect(url_for("pages.login"))
    sessions = [
        {"key": key, "user": data.get("user"), "cart": len(data.get("cart", []))}
        for key, data in itertools.islice(server_session.items(), 100)
    ]
    return render_template(
        "admin.html",
        figures=figures.read(current_app.config["SERVERSESSION_METRICS_REGISTRY"]),
        count=server_session.count(),
        sessions=sessions,
        expire_time=describe_span(config_duration("SERVERSESSION_EXPIRE_TIME")),
        renew_time=describe_span(config_duration("SERVERSESSION_RENEW_TIME")),
    )


@bp.get("/metrics")
def metrics() -> t.Any:
    # Open to all here, as Prometheus scrapes it; a real app serves it on an internal port.
    registry = current_app.config["SERVERSESSION_METRICS_REGISTRY"]
    return generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}


@bp.post("/admin/purge")
def purge() -> t.Any:
    if "user" not in session:
        abort(403)
    removed = server_session.purge_expired()
    flash(f"Removed {removed} expired session{'' if removed == 1 else 's'}.")
    return redirect(url_for("pages.admin"))
