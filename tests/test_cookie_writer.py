"""The Set-Cookie header the session writes is the one ``response.set_cookie`` would write."""

from __future__ import annotations

import typing as t
import warnings
from datetime import datetime
from datetime import timezone

from flask import Flask
from flask import Response
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from werkzeug.http import dump_cookie

from flask_serversession import ServerSession
from flask_serversession.cookie import CookieWriter

TOKEN = "A" * 43 + "." + "b" * 42 + "A"


def parts(header: str) -> tuple[str, frozenset[str]]:
    """The ``name=value`` of a Set-Cookie header and its attributes, in any order."""
    first, *attributes = header.split("; ")
    return first, frozenset(attributes)


attribute_sets = st.fixed_dictionaries(
    {
        "domain": st.sampled_from([None, "example.test", ".example.test", "b\u00fccher.test"]),
        "path": st.sampled_from(["/", "/app", "/caf\u00e9 menu"]),
        "secure": st.booleans(),
        "samesite": st.sampled_from([None, "Lax", "strict", "None"]),
        "httponly": st.booleans(),
    },
    optional={"partitioned": st.just(True)},
)


@settings(max_examples=60, deadline=None)
@given(
    attributes=attribute_sets,
    name=st.sampled_from(["session", "__Host-sid", "caf\u00e9"]),
    expires=st.one_of(
        st.none(),
        st.datetimes(
            min_value=datetime(2000, 1, 1),
            max_value=datetime(2200, 1, 1),
            timezones=st.just(timezone.utc),
        ),
    ),
)
def test_the_header_has_what_set_cookie_writes(
    attributes: dict[str, t.Any], name: str, expires: datetime | None
) -> None:
    writer = CookieWriter()
    for _ in range(2):  # made from the template, then from the kept one
        response = Response()
        writer.set(response, name, TOKEN, expires, attributes)
        (header,) = response.headers.getlist("Set-Cookie")
        expected = dump_cookie(name, TOKEN, expires=expires, **attributes)
        assert parts(header) == parts(expected)


def test_attributes_of_another_set_get_their_own_template() -> None:
    writer = CookieWriter()
    headers = []
    for secure in (True, False, True):
        response = Response()
        writer.set(response, "session", TOKEN, None, {"path": "/", "secure": secure})
        headers.append(response.headers["Set-Cookie"])
    assert "Secure" in parts(headers[0])[1] and "Secure" not in parts(headers[1])[1]
    assert headers[0] == headers[2]


class LoggingResponse(Response):
    """A response class of an app's own that does something with every cookie it sets."""

    cookies_set: t.ClassVar[list[str]] = []

    def set_cookie(self, key: str, value: str = "", *args: t.Any, **kwargs: t.Any) -> None:
        self.cookies_set.append(key)
        super().set_cookie(key, value, *args, **kwargs)


def test_a_response_class_with_its_own_set_cookie_sets_the_session_cookie() -> None:
    app = Flask(__name__)
    app.secret_key = "k" * 32
    app.response_class = LoggingResponse
    app.config["SERVERSESSION_BACKEND"] = "memory"
    ServerSession(app)

    @app.post("/set")
    def set_value() -> str:
        from flask import session

        session["a"] = 1
        return "ok"

    LoggingResponse.cookies_set.clear()
    response = app.test_client().post("/set")
    assert LoggingResponse.cookies_set == ["session"]
    assert response.headers["Set-Cookie"].startswith("session=")


def test_a_cookie_too_large_for_browsers_still_warns() -> None:
    app = Flask(__name__)
    app.secret_key = "k" * 32
    app.config.update(SERVERSESSION_BACKEND="memory", SESSION_COOKIE_PATH="/" + "p" * 4100)
    ServerSession(app)

    @app.post("/set")
    def set_value() -> str:
        from flask import session

        session["a"] = 1
        return "ok"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = app.test_client().post("/set")
    assert response.headers["Set-Cookie"].startswith("session=")
    assert any("cookie is too large" in str(w.message) for w in caught)
