from __future__ import annotations

import hashlib
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
from flask import flash
from flask import Flask
from flask import session
from itsdangerous import Signer

from flask_serversession import ServerSession
from flask_serversession import SessionNotFoundError
from flask_serversession.tokens import _Signer

from .conftest import Clock
from .conftest import CountingBackend
from .conftest import session_cookie
from .conftest import store_of

VALID_ID = "A" * 43


def signed(sid: str, key: str) -> str:
    signer = Signer(key.encode(), salt="flask-serversession", digest_method=hashlib.sha256)
    return signer.sign(sid).decode()


@pytest.fixture
def app(make_app: t.Callable[..., Flask]) -> Flask:
    return make_app()


BAD_TOKENS = {
    "empty": "",
    "garbage": "not a token",
    "bare id": VALID_ID,
    "too long": "A" * 43 + "." + "B" * 44,
    "bad alphabet": "A" * 42 + "!." + "B" * 43,
    "traversal": "../../etc/passwd." + "B" * 43,
    "bad signature": VALID_ID + "." + "B" * 43,
    "other key": signed(VALID_ID, "some other secret"),
    "unknown id": signed(VALID_ID, "test secret key"),
    "huge": "A" * 3000,
}


@pytest.mark.parametrize("token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_bad_token_gives_fresh_session_never_adopted(app: Flask, token: str) -> None:
    client = app.test_client()
    client.set_cookie("session", token)
    assert client.get("/meta").json["new"] is True
    client.post("/set", json={"a": 1})
    new = session_cookie(client)
    assert new is not None and new != token
    presented_id = token.partition(".")[0]
    assert not presented_id or presented_id not in new
    assert client.get("/dump").json == {"a": 1}


@pytest.mark.parametrize("token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_malformed_token_is_rejected_before_the_backend(
    make_app: t.Callable[..., Flask], token: str
) -> None:
    counting = CountingBackend()
    client = make_app(counting).test_client()
    client.set_cookie("session", token)
    client.get("/dump")
    assert counting.calls == ({"load": 1} if token == BAD_TOKENS["unknown id"] else {})


def test_token_is_a_signed_256_bit_id(app: Flask) -> None:
    client = app.test_client()
    client.post("/set", json={"a": 1})
    token = session_cookie(client)
    assert token is not None
    sid, _, signature = token.partition(".")
    assert len(sid) == 43 and len(signature) == 43


def test_backend_stores_the_hash_never_the_id(app: Flask) -> None:
    client = app.test_client()
    client.post("/set", json={"a": 1})
    sid = t.cast(str, session_cookie(client)).partition(".")[0]
    with app.app_context():
        ((key, _),) = store_of(app).items()
    assert key == hashlib.sha256(sid.encode()).hexdigest()
    assert sid not in key


def test_unsigned_ids_when_signing_is_off(make_app: t.Callable[..., Flask]) -> None:
    client = make_app(SERVERSESSION_SIGN_ID=False).test_client()
    client.post("/set", json={"a": 1})
    token = session_cookie(client)
    assert token is not None and len(token) == 43 and "." not in token
    assert client.get("/dump").json == {"a": 1}


def test_secret_key_rotation_keeps_sessions(make_app: t.Callable[..., Flask]) -> None:
    backend = store_of(make_app()).backend
    old_app = make_app(backend, SECRET_KEY="old key")
    client = old_app.test_client()
    client.post("/set", json={"a": 1})
    token = t.cast(str, session_cookie(client))

    rotated = make_app(backend, SECRET_KEY="new key", SECRET_KEY_FALLBACKS=["old key"])
    client = rotated.test_client()
    client.set_cookie("session", token)
    assert client.get("/dump").json == {"a": 1}

    dropped = make_app(backend, SECRET_KEY="new key")
    client = dropped.test_client()
    client.set_cookie("session", token)
    assert client.get("/dump").json == {}


def test_regenerate_moves_data_to_a_new_id(app: Flask) -> None:
    client = app.test_client()
    client.post("/set", json={"cart": ["tea"]})
    old = t.cast(str, session_cookie(client))
    client.post("/regenerate")
    new = session_cookie(client)
    assert new and new != old
    assert client.get("/dump").json == {"cart": ["tea"]}

    attacker = app.test_client()
    attacker.set_cookie("session", old)
    assert attacker.get("/dump").json == {}
    with app.app_context():
        assert store_of(app).count() == 1


def test_regenerate_restarts_created_at(app: Flask) -> None:
    # A sign-in restarts the absolute lifetime (SP 800-63B-4 5.2); more in
    # tests/test_reauthentication.py.
    clock = Clock()
    store_of(app).clock = clock
    client = app.test_client()
    client.post("/set", json={"a": 1})
    created = client.get("/meta").json["created_at"]
    clock.advance(hours=1)
    client.post("/regenerate")
    assert client.get("/meta").json["created_at"] == clock.now.isoformat() != created


def test_destroy_deletes_record_and_expires_cookie(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SESSION_COOKIE_DOMAIN="example.test", SESSION_COOKIE_SECURE=True)
    client = app.test_client()
    https = "https://example.test"
    client.post("/set", json={"user": "alice"}, base_url=https)
    token = t.cast(str, session_cookie(client, domain="example.test"))
    response = client.post("/destroy", base_url=https)
    header = response.headers["Set-Cookie"]
    assert "Expires=Thu, 01 Jan 1970" in header
    assert "Domain=example.test" in header and "Secure" in header
    assert session_cookie(client, domain="example.test") is None
    replay = app.test_client()
    replay.set_cookie("session", token, domain="example.test")
    assert replay.get("/dump", base_url=https).json == {}
    with app.app_context():
        assert store_of(app).count() == 0


def test_data_set_after_destroy_starts_a_new_session(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()

    @app.post("/logout")
    def logout() -> str:
        session.destroy()
        flash("Signed out.")
        return "bye"

    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    old = session_cookie(client)
    client.post("/logout")
    new = session_cookie(client)
    assert new is not None and new != old
    assert "user" not in client.get("/dump").json
    with app.app_context():
        assert store_of(app).count() == 1


def test_extension_instance_serves_many_apps(make_app: t.Callable[..., Flask]) -> None:
    first, second = make_app(), make_app()
    extension = ServerSession()
    with first.app_context():
        token = extension.create({"app": "first"})
    with second.app_context():
        assert extension.count() == 0
    with first.app_context():
        assert extension.get(token) == {"app": "first"}


REJECTIONS = {
    "garbage": (BAD_TOKENS["garbage"], "malformed"),
    "bare id": (BAD_TOKENS["bare id"], "malformed"),
    "too long": (BAD_TOKENS["too long"], "malformed"),
    "traversal": (BAD_TOKENS["traversal"], "malformed"),
    "huge": (BAD_TOKENS["huge"], "malformed"),
    # A signature's last character outside the canonical ones is no spelling of one.
    "noncanonical": (BAD_TOKENS["bad signature"], "malformed"),
    "forged": (VALID_ID + "." + "B" * 42 + "A", "bad_signature"),
    "other key": (BAD_TOKENS["other key"], "bad_signature"),
    "unknown id": (BAD_TOKENS["unknown id"], "unknown"),
}


class Rejections:
    """Records what ``session_token_rejected`` receives."""

    def __init__(self) -> None:
        self.received: list[dict[str, t.Any]] = []

    def __call__(self, sender: Flask, **kwargs: t.Any) -> None:
        self.received.append(kwargs)


@pytest.fixture
def rejections() -> t.Iterator[Rejections]:
    from flask_serversession.signals import session_token_rejected

    receiver = Rejections()
    session_token_rejected.connect(receiver)
    yield receiver
    session_token_rejected.disconnect(receiver)


@pytest.mark.parametrize("name", REJECTIONS)
def test_a_rejected_token_is_reported_with_its_reason_only(
    backend_app: Flask, rejections: Rejections, name: str
) -> None:
    token, reason = REJECTIONS[name]
    client = backend_app.test_client()
    client.set_cookie("session", token)
    assert client.get("/dump").json == {}
    assert rejections.received == [{"reason": reason}]
    with backend_app.app_context(), pytest.raises(SessionNotFoundError):
        ServerSession().get(token)
    assert rejections.received[1:] == [{"reason": reason}]


def test_good_expired_and_absent_tokens_are_not_rejections(
    app: Flask, rejections: Rejections
) -> None:
    client = app.test_client()
    assert client.get("/dump").json == {}
    client.post("/set", json={"a": 1})
    assert client.get("/dump").json == {"a": 1}
    store_of(app).clock = lambda: datetime.now(timezone.utc) + timedelta(days=2)
    assert client.get("/dump").json == {}
    assert rejections.received == []


def test_no_repr_log_or_signal_holds_the_id_or_token(
    make_app: t.Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    from flask_serversession import signals

    unsigned = make_app(SERVERSESSION_SIGN_ID=False, SERVERSESSION_USER_KEY="user")
    shown: list[str] = []

    @unsigned.get("/show")
    def show() -> str:
        stored = session.stored  # type: ignore[attr-defined]
        shown.extend([repr(stored), str(stored), repr(session), f"{stored!r}"])
        return "shown"

    def record(sender: Flask, **kwargs: t.Any) -> None:
        shown.append(repr(kwargs))

    names = [name for name in dir(signals) if name.startswith("session_")]
    for name in names:
        getattr(signals, name).connect(record)
    caplog.set_level("DEBUG", logger="flask_serversession")
    try:
        client = unsigned.test_client()
        client.post("/set", json={"user": "alice"})
        first = session_cookie(client)
        client.get("/show")
        client.post("/regenerate")
        token = session_cookie(client)
        client.get("/show")
        client.post("/destroy")
    finally:
        for name in names:
            getattr(signals, name).disconnect(record)
    assert first and token and len(shown) > 4
    text = "\n".join(shown + [r.getMessage() for r in caplog.records])
    assert first not in text and token not in text
    outcome = store_of(unsigned).token_for(VALID_ID)
    from flask_serversession.store import SaveOutcome

    assert outcome not in repr(SaveOutcome(outcome))


def test_a_token_with_a_rotating_secret_has_one_form(make_app: t.Callable[..., Flask]) -> None:
    from flask_serversession.rotation.state import new_secret

    for sign in (True, False):
        store = store_of(make_app(SERVERSESSION_SIGN_ID=sign))
        tokens = store.tokens
        secret = new_secret()
        token = tokens.token_for(VALID_ID, secret)
        assert tokens.parse(token) == (VALID_ID, secret, None)
        assert tokens.parse(tokens.token_for(VALID_ID)) == (VALID_ID, None, None)
        assert tokens.sid_from(token) == VALID_ID
        # A secret of another length, or not in its one spelling, is no token.
        for bad in (secret[:-1], secret + "A", secret[:-1] + "B"):
            forged = token.replace(secret, bad)
            assert tokens.parse(forged)[0] is None
        if sign:
            # Signed: the id and the secret together.
            assert token == signed(f"{VALID_ID}.{secret}", "test secret key")
            other = tokens.token_for(VALID_ID, new_secret())
            assert tokens.parse(token[:66] + other[66:]) == (None, None, "bad_signature")


# a renewed persistent cookie


def _renewing_app(make_app: t.Callable[..., Flask], *args: t.Any, **config: t.Any) -> Flask:
    """An app whose every write pushes the expiry, so the cookie is set again."""
    renew = timedelta(hours=24)
    return make_app(
        *args,
        SERVERSESSION_PERMANENT=True,
        SERVERSESSION_EXPIRE_TIME=renew,
        SERVERSESSION_RENEW_TIME=renew,
        **config,
    )


def test_a_renewed_cookie_is_the_token_the_request_brought(
    make_app: t.Callable[..., Flask],
) -> None:
    app = _renewing_app(make_app)
    client = app.test_client()
    client.post("/set", json={"n": 1})
    token = t.cast(str, session_cookie(client))
    response = client.post("/set", json={"n": 2})
    assert f"session={token};" in response.headers["Set-Cookie"]
    assert token == signed(token[:43], "test secret key")


def test_a_renewed_cookie_signed_with_an_old_key_gets_the_new_one(
    make_app: t.Callable[..., Flask],
) -> None:
    backend = store_of(make_app()).backend
    client = _renewing_app(make_app, backend, SECRET_KEY="old key").test_client()
    client.post("/set", json={"n": 1})
    old = t.cast(str, session_cookie(client))

    rotated = _renewing_app(
        make_app, backend, SECRET_KEY="new key", SECRET_KEY_FALLBACKS=["old key"]
    )
    # Another request signs with the new key first, as a busy server would.
    rotated.test_client().post("/set", json={"other": 1})
    client = rotated.test_client()
    client.set_cookie("session", old)
    for n in (2, 3):
        client.post("/set", json={"n": n})
        assert session_cookie(client) == signed(old[:43], "new key")
    assert client.get("/get/n").json == {"value": 3}


def test_a_renewal_computes_one_signature_the_check_of_the_token_brought(
    make_app: t.Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _renewing_app(make_app)
    client = app.test_client()
    client.post("/set", json={"n": 1})
    computed = []
    real = _Signer._signature

    def counted(states: tuple[t.Any, t.Any], sid: str) -> str:
        computed.append(sid)
        return real(states, sid)

    monkeypatch.setattr(_Signer, "_signature", staticmethod(counted))
    response = client.post("/set", json={"n": 2})
    assert "Set-Cookie" in response.headers
    assert len(computed) == 1
