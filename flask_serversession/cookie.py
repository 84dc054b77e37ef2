"""The session cookie's ``Set-Cookie`` header, from a template made once per set of attributes.

Werkzeug's ``dump_cookie`` checks and quotes every part of a cookie on every
call; a session cookie changes only its token and expiry from one response
to the next. The attributes go through ``dump_cookie`` once, and each
response adds a token (URL-safe characters, which need no quoting) and an
expiry to what it made.
"""

from __future__ import annotations

import typing as t
from datetime import datetime

from werkzeug.http import dump_cookie
from werkzeug.http import http_date
from werkzeug.sansio.response import Response as _SansIOResponse

if t.TYPE_CHECKING:
    from flask import Response

_SET_COOKIE = _SansIOResponse.set_cookie
#: Templates kept at most; apps have one or a few sets of attributes.
_MAX_TEMPLATES = 64


class CookieWriter:
    """Set the session cookie on responses, as ``response.set_cookie`` would."""

    def __init__(self) -> None:
        self._templates: dict[tuple[t.Any, ...], tuple[str, str]] = {}

    def set(
        self,
        response: Response,
        name: str,
        token: str,
        expires: datetime | None,
        attributes: t.Mapping[str, t.Any],
    ) -> None:
        """Set cookie ``name`` to ``token``.

        :param attributes: keyword arguments of ``set_cookie`` (path, domain, ...).
        """
        if type(response).set_cookie is not _SET_COOKIE:
            # A response class of the app's own decides how cookies are set.
            response.set_cookie(name, token, expires=expires, **attributes)
            return
        head, tail = self._template(name, attributes)
        if expires is None:
            header = f"{head}{token}{tail}"
        else:
            header = f"{head}{token}; Expires={http_date(expires)}{tail}"
        limit = response.max_cookie_size
        if limit and len(header) > limit:
            # Werkzeug warns about a cookie that browsers may drop.
            response.set_cookie(name, token, expires=expires, **attributes)
            return
        response.headers.add("Set-Cookie", header)

    def _template(self, name: str, attributes: t.Mapping[str, t.Any]) -> tuple[str, str]:
        """What comes before the token (``name=``) and after its expiry."""
        key = (name, *attributes.items())
        template = self._templates.get(key)
        if template is None:
            empty = dump_cookie(name, "", max_size=0, **attributes)
            head, _, tail = empty.partition("; ")
            template = (head, f"; {tail}" if tail else "")
            if len(self._templates) >= _MAX_TEMPLATES:
                self._templates.clear()
            self._templates[key] = template
        return template
