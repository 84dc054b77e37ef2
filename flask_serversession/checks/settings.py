from __future__ import annotations

import re
import typing as t

from . import Finding

if t.TYPE_CHECKING:
    from flask import Flask

    from ..store import SessionStore

#: Bytes of key material a signing key needs: 256 bits, as the session id has.
MIN_KEY_BYTES = 32
MAKE_KEY = "python -c 'import secrets; print(secrets.token_hex(32))'"

_HEX = re.compile("[0-9a-fA-F]+")
_BASE64 = re.compile("[A-Za-z0-9_+/-]+=*")


def key_material(key: str | bytes) -> int:
    """Bytes of key material in ``key``, counted as generators write keys.

    Hex text counts half a byte a character (``secrets.token_hex``), base64
    text three quarters (``secrets.token_urlsafe``), other text and bytes a
    byte each.
    """
    if isinstance(key, bytes):
        return len(key)
    if len(key) % 2 == 0 and _HEX.fullmatch(key):
        return len(key) // 2
    if _BASE64.fullmatch(key):
        return len(key.rstrip("=")) * 3 // 4
    return len(key.encode("utf-8", "surrogatepass"))


def check_settings(app: Flask) -> t.Iterator[Finding]:
    """Findings about the cookie, the signing keys and the session settings."""
    store: SessionStore = app.extensions["serversession"]
    config = app.config
    yield from _cookie(config)
    yield from _host_prefix(app)
    yield from _keys(app)
    settings = store.settings
    if settings.device_bound and not config.get("SESSION_COOKIE_SECURE"):
        yield Finding(
            "serversession.E016",
            "SESSION_COOKIE_SECURE",
            repr(config.get("SESSION_COOKIE_SECURE")),
            "SERVERSESSION_DEVICE_BOUND is on, but the session cookie also travels over plain"
            " HTTP, where browsers never bind sessions and anyone on the path can copy it.",
            "set SESSION_COOKIE_SECURE = True and serve the app over HTTPS only.",
        )
    if not settings.sign_id:
        yield Finding(
            "serversession.W005",
            "SERVERSESSION_SIGN_ID",
            "False",
            "Unsigned tokens reach the store unchecked, so every forged or random token costs"
            " a lookup, and changing SECRET_KEY can no longer end every session at once.",
            "set SERVERSESSION_SIGN_ID = True (the default); clients that hold an unsigned"
            " token then start a new session.",
        )
    if settings.absolute_lifetime is None:
        yield Finding(
            "serversession.W006",
            "SERVERSESSION_ABSOLUTE_LIFETIME",
            "None",
            "A session that is used now and then is renewed for ever, so a stolen token stays"
            " good as long as its owner keeps using the app.",
            "set SERVERSESSION_ABSOLUTE_LIFETIME, e.g. timedelta(days=30), no shorter than the"
            " longest session.set_lifetime() the app grants.",
        )
    # The callback of the setting, or of a SQL backend the app built itself.
    extras = config.get("SERVERSESSION_SQLALCHEMY_EXTRAS") or getattr(store.backend, "extras", None)
    if settings.encryption is not None and extras is not None:
        yield _clear_extras(extras)
    if settings.header_name is not None and _serves_pages(app):
        yield Finding(
            "serversession.W007",
            "SERVERSESSION_HEADER_NAME",
            repr(settings.header_name),
            "The app renders pages and header mode covers all of it, so page scripts can hold"
            " a token outside the HttpOnly cookie: a request sent without the cookie gets its"
            " new token in a header they can read, and any token they hold is accepted in the"
            " request header.",
            "leave SERVERSESSION_HEADER_NAME unset in the app that serves pages (API clients"
            " can keep a cookie jar, or get an app of their own); if no page script ever reads"
            " or sets the header, pass --ignore serversession.W007.",
        )


def _clear_extras(extras: t.Any) -> Finding:
    return Finding(
        "serversession.W020",
        "SERVERSESSION_SQLALCHEMY_EXTRAS",
        getattr(extras, "__qualname__", type(extras).__name__),
        "Encryption is on, but the extras callback copies session values into columns of"
        " their own, which hold them in the clear: a dump of the table shows them.",
        "fill the extra columns with what may be read in the clear (a flag, a tenant id),"
        " never secrets or personal data, or leave SERVERSESSION_SQLALCHEMY_EXTRAS unset; then"
        " pass --ignore serversession.W020.",
    )


def _cookie(config: t.Mapping[str, t.Any]) -> t.Iterator[Finding]:
    if not config.get("SESSION_COOKIE_SECURE"):
        yield Finding(
            "serversession.E001",
            "SESSION_COOKIE_SECURE",
            repr(config.get("SESSION_COOKIE_SECURE")),
            "The browser also sends the session cookie over plain HTTP, where anyone on the"
            " network path can copy the token and take over the session.",
            "set SESSION_COOKIE_SECURE = True and serve the app over HTTPS only.",
        )
    if not config.get("SESSION_COOKIE_HTTPONLY", True):
        yield Finding(
            "serversession.E002",
            "SESSION_COOKIE_HTTPONLY",
            repr(config.get("SESSION_COOKIE_HTTPONLY")),
            "Page scripts can read the session cookie, so one injected script can send the"
            " token away.",
            "set SESSION_COOKIE_HTTPONLY = True (Flask's default).",
        )
    samesite = config.get("SESSION_COOKIE_SAMESITE")
    if samesite is None or str(samesite).lower() == "none":
        yield Finding(
            "serversession.W003",
            "SESSION_COOKIE_SAMESITE",
            repr(samesite),
            "Requests that other sites make the browser send carry the session cookie,"
            " which is what cross-site request forgery needs.",
            "set SESSION_COOKIE_SAMESITE = 'Lax' ('Strict' for apps never entered from"
            " links on other sites), and keep CSRF protection on forms.",
        )


def _keys(app: Flask) -> t.Iterator[Finding]:
    fix = (
        f"set SECRET_KEY from the environment to the output of {MAKE_KEY}; keep the old key in"
        " SECRET_KEY_FALLBACKS until the sessions it signed have expired."
    )
    key = app.secret_key
    if not key:
        yield Finding(
            "serversession.E004",
            "SECRET_KEY",
            "not set",
            "Without a key no token can be signed or checked, so no session can be saved."
            if app.extensions["serversession"].settings.sign_id
            else "Without a key nothing the app signs can be made or checked (CSRF tokens,"
            " remember-me cookies), nor can session tokens be signed again.",
            fix,
        )
    elif key_material(key) < MIN_KEY_BYTES:
        yield Finding(
            "serversession.E004",
            "SECRET_KEY",
            f"{key_material(key)} bytes of key material",
            "A short key can be guessed offline from one signed token, and whoever has it"
            " signs tokens (and anything else the app signs) as the app.",
            fix,
        )
    for n, old in enumerate(app.config.get("SECRET_KEY_FALLBACKS") or ()):
        if old and key_material(old) < MIN_KEY_BYTES:
            yield Finding(
                "serversession.E004",
                f"SECRET_KEY_FALLBACKS[{n}]",
                f"{key_material(old)} bytes of key material",
                "A fallback key still verifies tokens, so a short one can be guessed offline"
                " as a short SECRET_KEY can.",
                "remove it once the sessions it signed have expired"
                " (SERVERSESSION_ABSOLUTE_LIFETIME bounds how long that takes).",
            )


def _serves_pages(app: Flask) -> bool:
    """Whether the app looks like one for browsers: it has Jinja templates to render."""
    return bool(app.jinja_env.list_templates())


def _host_prefix(app: Flask) -> t.Iterator[Finding]:
    """W017: a Secure cookie for the whole host, named without ``__Host-``."""
    from flask.sessions import SessionInterface

    from ..prefixes import prefix_of

    cookie = SessionInterface()
    name = cookie.get_cookie_name(app)
    could = (
        cookie.get_cookie_secure(app)
        and not cookie.get_cookie_domain(app)
        and cookie.get_cookie_path(app) == "/"
    )
    found = prefix_of(name)
    if could and (found is None or not found[0].startswith("__Host-")):
        yield Finding(
            "serversession.W017",
            "SESSION_COOKIE_NAME",
            repr(name),
            "Without the __Host- prefix a sibling subdomain, or a page of this host on plain"
            " HTTP, can set a cookie of the same name that the browser sends instead of this"
            " one (planting a session); NIST SP 800-63B-4 (5.1.1) and ASVS 5.0 (V3.3.3) ask"
            " for the prefix.",
            "set SESSION_COOKIE_NAME = '__Host-session' (the settings already meet its rule:"
            " Secure, no Domain, Path=/); users sign in once more after the rename.",
        )
