from __future__ import annotations

import base64
import hashlib
import typing as t
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
from flask import Flask
from flask import jsonify
from flask import request
from flask import session
from flask.testing import FlaskClient
from hypothesis import example
from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
from itsdangerous import Signer
from werkzeug.http import dump_cookie
from werkzeug.test import TestResponse

from flask_serversession.backends.base import Backend

from .strategies import difference
from .strategies import entry_verdict
from .strategies import Forged
from .strategies import forged_tokens
from .strategies import Nested
from .strategies import OK
from .strategies import realize
from .strategies import REFUSED
from .strategies import REPLACEMENT_CHARS
from .strategies import session_entries
from .strategies import TOKEN_CHARS
from .strategies import TRANSPORTS

HEADER = "X-Session-Token"
SECRET = "test secret key"
OTHER_SECRET = "the secret key of another app"
#: Examples per backend, within the time the whole suite may take.
TOKEN_EXAMPLES = 150
VALUE_EXAMPLES = 100

# Examples share one app and store per backend; each example makes its own client.
PROPERTY_SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Tally:
    """What a property run did on one backend, for its summary line."""

    examples: int = 0
    server_errors: int = 0
    refused: int = 0

    def report(self, request: pytest.FixtureRequest, name: str, backend_name: str) -> None:
        line = (
            f"fuzz {name} {backend_name}: {self.examples} examples,"
            f" {self.server_errors} server errors"
        )
        if name == "values":
            line += f", {self.refused} refused saves"
        print(f"\n{line}")
        request.node.user_properties.append(("figures", line))


def _wire(text: str) -> str:
    """``text`` as a WSGI server passes a header on: UTF-8 bytes read as latin-1, one line."""
    return text.encode("utf-8").decode("latin-1").replace("\r", " ").replace("\n", " ")


def send(
    client: FlaskClient,
    tally: Tally,
    method: str,
    path: str,
    token: str | None = None,
    transport: str = "cookie",
    **kwargs: t.Any,
) -> TestResponse:
    """Make one request carrying ``token``; count it when it ends in a server error."""
    headers = {}
    if token is not None:
        if transport == "header":
            headers[HEADER] = _wire(token)
        elif transport == "raw cookie":
            headers["Cookie"] = "session=" + _wire(token)
        else:
            headers["Cookie"] = dump_cookie("session", token, path=None, max_size=0)
    try:
        response = client.open(path, method=method, headers=headers, **kwargs)
    except Exception:
        tally.server_errors += 1
        raise
    if response.status_code >= 500:
        tally.server_errors += 1
    return response


def body(response: TestResponse) -> dict[str, t.Any]:
    """The JSON a probe view answered with."""
    assert response.status_code == 200, response.status
    data = response.json
    assert isinstance(data, dict)
    return data


def issued_token(response: TestResponse) -> str | None:
    """The session token a response hands out, or None; a cookie deletion hands out none."""
    issued = []
    for header in response.headers.getlist("Set-Cookie"):
        name, _, rest = header.partition("=")
        value, _, attributes = rest.partition(";")
        if name == "session" and "Max-Age=0" not in attributes:
            issued.append(value)
    assert len(issued) <= 1, response.headers
    return issued[0] if issued else None


def add_probe_views(app: Flask) -> None:
    """Views that report the token a request carried and the session it found."""

    def received() -> str | None:
        header = request.headers.get(HEADER) if app.config["SERVERSESSION_HEADER_NAME"] else None
        return header or request.cookies.get("session")

    @app.get("/probe")
    def probe() -> t.Any:
        return jsonify(received=received(), data=dict(session), new=session.new)

    @app.post("/write")
    def write() -> t.Any:
        found = jsonify(received=received(), data=dict(session), new=session.new)
        session["written"] = request.get_json()
        return found

    @app.post("/clear")
    def clear() -> str:
        session.clear()
        return "cleared"


def _sign(sid: str, key: str, salt: str = "flask-serversession") -> str:
    return Signer(key.encode(), salt=salt, digest_method=hashlib.sha256).sign(sid).decode()


def _id_from(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).decode()[:43]


def same_signature(a: str, b: str) -> bool:
    """Whether two tokens hold the same id and signatures that decode to the same bytes."""
    (sid_a, _, sig_a), (sid_b, _, sig_b) = a.partition("."), b.partition(".")
    if sid_a != sid_b or len(sig_a) != 43 or len(sig_b) != 43:
        return False
    if not set(sig_a + sig_b) <= set(TOKEN_CHARS):
        return False
    return base64.urlsafe_b64decode(sig_a + "=") == base64.urlsafe_b64decode(sig_b + "=")


class Sessions:
    """Makes live and ended sessions of the apps under test, to forge tokens from."""

    def __init__(self, app: Flask, other_app: Flask, tally: Tally) -> None:
        self.client = app.test_client(use_cookies=False)
        self.other_client = other_app.test_client(use_cookies=False)
        self.tally = tally

    def live(self, data: dict[str, int], client: FlaskClient | None = None) -> str:
        """Return the token of a new session holding ``data``."""
        response = send(client or self.client, self.tally, "POST", "/set", json=data)
        token = issued_token(response)
        assert response.status_code == 200 and token is not None
        return token

    def ended(self, data: dict[str, int], path: str) -> str:
        """Return the token of a session that the view at ``path`` ended."""
        token = self.live(data)
        assert send(self.client, self.tally, "POST", path, token).status_code == 200
        return token

    def forge(self, forged: Forged) -> tuple[str, bool | None, dict[str, int]]:
        """Return a token, whether it names a live session (None: it may), and its data."""
        kind, data = forged.kind, {"seed": forged.seed}
        if kind == "literal":
            return forged.text, False, {}
        if kind == "random id, other secret":
            return _sign(_id_from(forged.text), forged.text), False, {}
        if kind in ENDINGS:
            return self.ended(data, ENDINGS[kind]), False, {}
        if kind == "live, other app's secret":
            return self.live(data, self.other_client), False, {}
        token = self.live(data)
        sid = token.partition(".")[0]
        if kind == "live":
            return token, True, data
        if kind == "live bare id":
            return sid, False, {}
        if kind == "live, same secret, other salt":
            return _sign(sid, SECRET, salt="cookie-session"), False, {}
        if kind == "live, signature of another session":
            return sid + "." + self.live(data).partition(".")[2], False, {}
        assert kind == "live, one character replaced", kind
        char = forged.char
        if char == token[forged.position]:
            # The same character (the dot included): take the next one.
            char = REPLACEMENT_CHARS[(REPLACEMENT_CHARS.index(char) + 1) % len(REPLACEMENT_CHARS)]
        flipped = token[: forged.position] + char + token[forged.position + 1 :]
        # The last character of a signature carries two unused bits; see
        # test_signature_spellings_are_not_interchangeable.
        return flipped, None if same_signature(flipped, token) else False, data


ENDINGS = {"destroyed": "/destroy", "regenerated": "/regenerate", "emptied": "/clear"}


def test_fuzzed_tokens_are_never_adopted(
    backend_name: str,
    backend: Backend,
    make_app: t.Callable[..., Flask],
    request: pytest.FixtureRequest,
) -> None:
    """A token that names no live session gets an empty session, and a write gets a new id."""
    cookie_app = make_app(backend)
    header_app = make_app(backend, SERVERSESSION_HEADER_NAME=HEADER)
    other_app = make_app(backend, SECRET_KEY=OTHER_SECRET)
    for app in (cookie_app, header_app, other_app):
        add_probe_views(app)
    tally = Tally()

    @settings(PROPERTY_SETTINGS, max_examples=TOKEN_EXAMPLES)
    @given(forged=forged_tokens(), transport=st.sampled_from(TRANSPORTS))
    # The dot between id and signature, "replaced" by itself.
    @example(Forged("live, one character replaced", position=43, char="."), "cookie")
    def check(forged: Forged, transport: str) -> None:
        tally.examples += 1
        app = header_app if transport == "header" else cookie_app
        token, live, seed = Sessions(app, other_app, tally).forge(forged)
        client = app.test_client(use_cookies=False)

        read = send(client, tally, "GET", "/probe", token, transport)
        found = body(read)
        if live is not None:
            assert (found["data"], found["new"]) == ((seed, False) if live else ({}, True))
        assert issued_token(read) is None, "a read handed out a token"
        assert HEADER not in read.headers
        if transport == "cookie":
            assert found["received"] == token

        number = forged.seed + 1
        write = send(client, tally, "POST", "/write", token, transport, json=number)
        found, new_token = body(write), issued_token(write)
        if not found["new"]:
            assert live is not False, "a token that names no live session was accepted"
            assert found["data"] == seed
            assert new_token is None and HEADER not in write.headers
            return
        assert live is not True, "a live session's token was not accepted"
        assert found["data"] == {}
        assert new_token is not None, "a write to a fresh session handed out no token"
        assert new_token not in (token, found["received"])
        assert new_token.partition(".")[0] != (found["received"] or "").partition(".")[0]
        assert write.headers.get(HEADER) == (new_token if transport == "header" else None)

        found = body(send(client, tally, "GET", "/probe", new_token, transport))
        assert (found["data"], found["new"]) == ({"written": number}, False)

    try:
        check()
    finally:
        tally.report(request, "tokens", backend_name)
    assert tally.server_errors == 0


def test_signature_spellings_are_not_interchangeable(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()
    add_probe_views(app)
    tally = Tally()
    token = Sessions(app, app, tally).live({"seed": 1})
    client = app.test_client(use_cookies=False)
    variants = [token[:-1] + c for c in TOKEN_CHARS if c != token[-1]]
    accepted = [v for v in variants if not body(send(client, tally, "GET", "/probe", v))["new"]]
    assert accepted == []


class Box:
    """Hands Python values to the app's views and back: the test client runs them in-process."""

    def __init__(self) -> None:
        self.pairs: list[tuple[t.Any, t.Any]] = []
        self.removed: t.Sequence[str] = ()
        self.seen: dict[str, t.Any] | None = None


def _deeper(frames: int, call: t.Callable[[], t.Any]) -> t.Any:
    return _deeper(frames - 1, call) if frames else call()


def add_value_views(app: Flask, box: Box) -> None:
    @app.post("/put")
    def put() -> str:
        for key in box.removed:
            session.pop(key, None)
        for key, value in box.pairs:
            session[key] = value
        return "put"

    @app.get("/take")
    def take() -> str:
        # Templates and extensions read the session from deeper in the stack
        # than the view that stored it.
        box.seen = _deeper(100, lambda: dict(session))
        return "taken"


class ValueChecks:
    """Saves session values through requests and checks what comes back."""

    def __init__(self, app: Flask, tally: Tally) -> None:
        self.box = Box()
        add_value_views(app, self.box)
        self.tally = tally

    def save(
        self,
        client: FlaskClient,
        stored: dict[str, t.Any],
        pairs: list[tuple[t.Any, t.Any]],
        removed: t.Sequence[str] = (),
    ) -> dict[str, t.Any]:
        """Set ``pairs`` and delete ``removed`` in one request; return what is stored after it."""
        self.box.pairs, self.box.removed = pairs, removed
        target = dict(stored)
        for key in removed:
            target.pop(key, None)
        target.update(pairs)
        verdicts = {key: entry_verdict(key, value) for key, value in target.items()}
        try:
            response = send(client, self.tally, "POST", "/put")
        except TypeError as e:
            self.tally.server_errors -= 1  # the contract's refusal, not a crash
            self.tally.refused += 1
            suspects = [key for key, verdict in verdicts.items() if verdict != OK]
            assert suspects, f"a supported session was refused: {e}"
            assert any(repr(key) in str(e) for key in suspects), f"{e} names none of {suspects!r}"
            return stored
        assert response.status_code == 200
        refused = [key for key, verdict in verdicts.items() if verdict == REFUSED]
        assert not refused, f"unsupported keys or values were saved under {refused!r}"
        return target

    def read_back(self, client: FlaskClient, expected: dict[str, t.Any]) -> None:
        self.box.seen = None
        assert send(client, self.tally, "GET", "/take").status_code == 200
        seen = self.box.seen
        assert seen is not None
        assert seen.keys() == expected.keys(), (
            f"keys {list(expected)!r} came back as {list(seen)!r}"
        )
        for key, value in expected.items():
            problem = difference(value, seen[key])
            assert problem is None, f"session[{key!r}] came back changed {problem}"


def test_values_round_trip_exactly_or_are_refused(
    backend_name: str,
    backend: Backend,
    make_app: t.Callable[..., Flask],
    request: pytest.FixtureRequest,
) -> None:
    """A saved value comes back as the same type and value at every level, or is refused."""
    app = make_app(backend)
    tally = Tally()
    checks = ValueChecks(app, tally)

    @settings(PROPERTY_SETTINGS, max_examples=VALUE_EXAMPLES)
    @given(
        first=session_entries(),
        second=session_entries(),
        removals=st.lists(st.integers(0, 9), max_size=3),
    )
    def check(
        first: list[tuple[t.Any, t.Any]], second: list[tuple[t.Any, t.Any]], removals: list[int]
    ) -> None:
        tally.examples += 1
        client = app.test_client()
        stored = checks.save(client, {}, [(k, realize(v)) for k, v in first])
        checks.read_back(client, stored)
        names = sorted(stored)
        removed = [names[i % len(names)] for i in removals] if names else []
        stored = checks.save(client, stored, [(k, realize(v)) for k, v in second], removed)
        checks.read_back(client, stored)

    try:
        check()
    finally:
        tally.report(request, "values", backend_name)
    assert tally.server_errors == 0


def _deepest_tuple_saved(checks: ValueChecks, app: Flask) -> Nested:
    """The deepest nest of tuples a save accepts, found in at most 11 requests."""
    low, high = 1, 1500
    while low < high:
        middle = (low + high + 1) // 2
        refused = checks.tally.refused
        checks.save(app.test_client(), {}, [("deep", Nested("t", middle).build())])
        low, high = (low, middle - 1) if checks.tally.refused > refused else (middle, high)
    return Nested("t", low)


#: Values that were once lost; each must now come back exactly or be refused.
ONCE_LOST = {
    "reserved key": ("_serversession_lifetime", "a user's value"),
    "offset under a second": (
        "when",
        datetime(2026, 1, 2, tzinfo=timezone(timedelta(microseconds=1))),
    ),
    "surrogate pair": ("text", "\ud800\udfff"),
    "deep tuples": ("deep", None),
}


@pytest.mark.parametrize(("key", "value"), ONCE_LOST.values(), ids=ONCE_LOST.keys())
def test_once_lost_values(make_app: t.Callable[..., Flask], key: str, value: t.Any) -> None:
    """Values found by the property tests that once came back changed or broke the session."""
    app = make_app()
    checks = ValueChecks(app, Tally())
    if value is None:
        value = _deepest_tuple_saved(checks, app).build()
    client = app.test_client()
    stored = checks.save(client, {}, [(key, value)])
    checks.read_back(client, stored)
