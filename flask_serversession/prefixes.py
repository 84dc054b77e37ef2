"""Cookie name prefixes (RFC 6265bis section 4.1.3): the attributes each one requires.

A browser drops a cookie whose name carries a prefix that its attributes
break, and says nothing: the user meets a sign-in that never sticks. So the
session cookie's name and attributes are checked once, at ``init_app``.
Browsers match the prefixes case-insensitively (RFC 6265bis since draft 11,
Chromium and Firefox), so ``__host-session`` is held to the ``__Host-`` rules.
"""

from __future__ import annotations

import typing as t

from flask.sessions import SessionInterface

from .errors import ConfigError

if t.TYPE_CHECKING:
    from flask import Flask

_SECURE = "Secure"
_HTTPONLY = "HttpOnly"
_HOST = "no Domain and Path=/"

#: Each prefix, longest first, with what it requires of the cookie.
PREFIXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("__Host-Http-", (_SECURE, _HTTPONLY, _HOST)),
    ("__Host-", (_SECURE, _HOST)),
    ("__Http-", (_SECURE, _HTTPONLY)),
    ("__Secure-", (_SECURE,)),
)


def prefix_of(name: str) -> tuple[str, tuple[str, ...]] | None:
    """The prefix that ``name`` carries and its requirements, or None."""
    folded = name.lower()
    for prefix, needs in PREFIXES:
        if folded.startswith(prefix.lower()):
            return prefix, needs
    return None


def _path_key(app: Flask) -> str:
    """The setting the cookie's path comes from, as Flask reads it."""
    return "SESSION_COOKIE_PATH" if app.config.get("SESSION_COOKIE_PATH") else "APPLICATION_ROOT"


def check_cookie_prefix(app: Flask, interface: SessionInterface | None = None) -> None:
    """Raise ConfigError when the session cookie's attributes break its name's prefix.

    The attributes are read through ``interface``'s getters, as they are sent
    (Flask's own getters by default, which the session interface keeps).

    :raises ConfigError: naming the setting that breaks the rule, and the fix.
    """
    interface = interface or SessionInterface()
    name = interface.get_cookie_name(app)
    found = prefix_of(name)
    if found is None:
        return
    prefix, needs = found
    lead = (
        f"SESSION_COOKIE_NAME = {name!r} has the {prefix} prefix, which browsers accept only"
        f" on a cookie with {', '.join(needs)}; they drop this one without a word, so no"
        " sign-in would stick."
    )
    if _SECURE in needs and not interface.get_cookie_secure(app):
        secure = app.config.get("SESSION_COOKIE_SECURE")
        raise ConfigError(
            f"{lead} SESSION_COOKIE_SECURE = {secure!r}: set it to True (and serve the app over"
            " HTTPS), or use a name without the prefix."
        )
    if _HTTPONLY in needs and not interface.get_cookie_httponly(app):
        httponly = app.config.get("SESSION_COOKIE_HTTPONLY")
        raise ConfigError(
            f"{lead} SESSION_COOKIE_HTTPONLY = {httponly!r}: set it to True (Flask's default),"
            " or use a name without the prefix."
        )
    if _HOST not in needs:
        return
    domain = interface.get_cookie_domain(app)
    if domain:
        raise ConfigError(
            f"{lead} SESSION_COOKIE_DOMAIN = {domain!r}: leave it unset (None), or use the"
            " __Secure- prefix for a cookie shared with subdomains."
        )
    path = interface.get_cookie_path(app)
    if path != "/":
        key = _path_key(app)
        raise ConfigError(
            f"{lead} {key} = {path!r} makes the cookie's Path {path!r}: set SESSION_COOKIE_PATH"
            " = '/', or use the __Secure- prefix for a cookie limited to a path."
        )
