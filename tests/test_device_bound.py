"""Device-bound sessions (DBSC) with a client that follows the draft, on every kind of store."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import typing as t
from datetime import datetime
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask import session
from flask.testing import FlaskClient
from jwt.algorithms import RSAAlgorithm

from flask_serversession import ConfigError
from flask_serversession import ServerSession
from flask_serversession.backends.base import Backend
from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.memory import MemoryBackend
from flask_serversession.binding import BINDING_KEY
from flask_serversession.binding import REGISTRATION_GRACE
from flask_serversession.interface import ServerSessionInterface
from flask_serversession.signals import session_binding_failed
from flask_serversession.signals import session_token_rejected

from .conftest import Clock
from .conftest import store_of
from .support.dbsc_client import challenge_of
from .support.dbsc_client import DbscBrowser
from .support.dbsc_client import DeviceKey
from .support.dbsc_client import HTTPS
from .support.dbsc_client import offer_of

BACKENDS = ["memory", "filesystem", "sqlite", "postgres", "redis"]
COOKIE = "session"
BOUND = "session-bound"
WAIT_SECONDS = 10


class SignerClock:
    """A clock the tests move by hand, installed as the DBSC signer's ``clock``."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=BACKENDS)
def dbsc_backend(request: pytest.FixtureRequest) -> Backend:
    return t.cast(Backend, request.getfixturevalue(f"{request.param}_backend"))


def dbsc_app(make_app: t.Callable[..., Flask], backend: Backend | str, **config: t.Any) -> Flask:
    config.setdefault("SESSION_COOKIE_SECURE", True)
    app = make_app(backend, SERVERSESSION_DEVICE_BOUND=True, **config)

    @app.post("/sign-in")
    def sign_in() -> str:
        session.regenerate()
        session["user"] = "ada"
        return "signed in"

    return app


def signer_clock(app: Flask) -> SignerClock:
    """The DBSC signer's clock, made one the test moves by hand if it is not yet."""
    signer = app.session_interface.devices.signer  # type: ignore[attr-defined]
    if not isinstance(signer.clock, SignerClock):
        signer.clock = SignerClock()
    return t.cast(SignerClock, signer.clock)


def past_the_grace(app: Flask) -> None:
    """Move the signer's clock past REGISTRATION_GRACE: from now on the bound cookie is needed."""
    signer_clock(app).advance(REGISTRATION_GRACE.total_seconds() + 1)


def sign_in(client: FlaskClient) -> t.Any:
    client.post("/set", json={"visits": 1}, base_url=HTTPS)
    return client.post("/sign-in", base_url=HTTPS)


def user(client: FlaskClient) -> t.Any:
    return client.get("/get/user", base_url=HTTPS).get_json()["value"]


def cookie(client: FlaskClient, name: str) -> str | None:
    found = client.get_cookie(name, domain="localhost")
    return None if found is None else found.value


@pytest.fixture
def bound(make_app: t.Callable[..., Flask], dbsc_backend: Backend) -> tuple[Flask, DbscBrowser]:
    """An app on each store, and a browser signed in whose session was bound
    longer than REGISTRATION_GRACE ago: the bound cookie is needed."""
    app = dbsc_app(make_app, dbsc_backend)
    browser = DbscBrowser(app.test_client())
    answer = browser.register(sign_in(browser.client))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    past_the_grace(app)
    return app, browser


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_registration_binds_and_refresh_renews(
    make_app: t.Callable[..., Flask], dbsc_backend: Backend, alg: str
) -> None:
    app = dbsc_app(make_app, dbsc_backend)
    browser = DbscBrowser(app.test_client(), DeviceKey(alg))
    signed_in = sign_in(browser.client)
    algorithms, path, challenge = t.cast(tuple[list[str], str, str], offer_of(signed_in))
    assert algorithms == ["ES256", "RS256"]
    assert path == "/_serversession/dbsc/register"
    token = t.cast(str, cookie(browser.client, COOKIE))
    assert token.split(".")[0] not in challenge and token not in challenge

    answer = browser.register(signed_in)
    assert answer.status_code == 200
    instructions = answer.get_json()
    assert instructions == {
        "session_identifier": browser.identifier,
        "refresh_url": "/_serversession/dbsc/refresh",
        "scope": {"origin": HTTPS, "include_site": False},
        "credentials": [
            {"type": "cookie", "name": BOUND, "attributes": "Path=/; Secure; HttpOnly"}
        ],
    }
    set_cookie = answer.headers["Set-Cookie"]
    assert set_cookie.startswith(f"{BOUND}=")
    assert "Max-Age=600" in set_cookie and "Secure" in set_cookie and "HttpOnly" in set_cookie
    key = store_of(app).storage_key(t.cast(str, store_of(app).sid_from(token)))
    for secret in (token, token.split(".")[0], key):
        assert secret not in t.cast(str, browser.identifier)
        assert secret not in t.cast(str, cookie(browser.client, BOUND))
    assert user(browser.client) == "ada"

    before = cookie(browser.client, BOUND)
    refreshed = browser.refresh()
    assert refreshed.status_code == 200, refreshed.get_data(as_text=True)
    assert refreshed.get_json() == instructions
    assert cookie(browser.client, BOUND) not in (None, before)
    assert user(browser.client) == "ada"


def test_session_cookie_without_its_bound_cookie_opens_nothing(
    bound: tuple[Flask, DbscBrowser],
) -> None:
    app, browser = bound
    thief = app.test_client()
    thief.set_cookie(COOKIE, t.cast(str, cookie(browser.client, COOKIE)), domain="localhost")
    failed: list[t.Any] = []
    rejected: list[t.Any] = []

    def on_failed(sender: Flask, **kwargs: t.Any) -> None:
        failed.append(kwargs)

    def on_rejected(sender: Flask, **kwargs: t.Any) -> None:
        rejected.append(kwargs)

    with (
        session_binding_failed.connected_to(on_failed, app),
        session_token_rejected.connected_to(on_rejected, app),
    ):
        response = thief.get("/get/user", base_url=HTTPS)
    assert response.get_json() == {"value": None}
    # Left alone, as an unknown token: no Set-Cookie expires it.
    assert "Set-Cookie" not in response.headers
    stored_keys = [key for key, _data in store_of(app).items()]
    assert failed == [{"storage_key": stored_keys[0]}]
    assert rejected == [{"reason": "unknown"}]

    # Writing starts a fresh session of the thief's own; the owner's is untouched.
    thief.post("/set", json={"user": "mallory"}, base_url=HTTPS)
    assert cookie(thief, COOKIE) != cookie(browser.client, COOKIE)
    assert user(browser.client) == "ada"

    # A bound cookie of another session does not open this one either.
    other = DbscBrowser(app.test_client())
    assert other.register(sign_in(other.client)).status_code == 200
    thief.set_cookie(COOKIE, t.cast(str, cookie(browser.client, COOKIE)), domain="localhost")
    thief.set_cookie(BOUND, t.cast(str, cookie(other.client, BOUND)), domain="localhost")
    assert user(thief) is None
    assert user(browser.client) == "ada"


def test_bound_cookie_expires_and_the_refresh_brings_it_back(
    bound: tuple[Flask, DbscBrowser],
) -> None:
    app, browser = bound
    clock = signer_clock(app)
    old_bound = t.cast(str, cookie(browser.client, BOUND))
    clock.advance(601)
    # The browser drops the cookie at its Max-Age; a copy kept past it opens nothing.
    assert user(browser.client) is None
    assert browser.refresh().status_code == 200
    assert user(browser.client) == "ada"
    browser.client.set_cookie(BOUND, old_bound, domain="localhost")
    assert user(browser.client) is None


def test_a_request_sent_while_registering_opens_the_session(
    make_app: t.Callable[..., Flask], dbsc_backend: Backend
) -> None:
    app = dbsc_app(make_app, dbsc_backend)
    clock = signer_clock(app)
    browser = DbscBrowser(app.test_client())
    signed_in = sign_in(browser.client)
    # The browser takes its time to register: the grace counts from the binding.
    clock.advance(60)
    assert browser.register(signed_in).status_code == 200
    # The page the sign-in redirected to, sent before the registration's answer
    # gave the browser its bound cookie: no bound cookie at all.
    racing = app.test_client()
    racing.set_cookie(COOKIE, t.cast(str, cookie(browser.client, COOKIE)), domain="localhost")
    clock.advance(REGISTRATION_GRACE.total_seconds() - 1)
    assert user(racing) == "ada"
    # A bound cookie that is not this binding's is refused, even now.
    racing.set_cookie(BOUND, "1.nonce.forged", domain="localhost")
    assert user(racing) is None
    racing.delete_cookie(BOUND, domain="localhost")
    # Past the grace, the session cookie alone opens nothing; the browser's cookie does.
    clock.advance(2)
    assert user(racing) is None
    assert user(browser.client) == "ada"


def test_wrong_key_is_refused(bound: tuple[Flask, DbscBrowser]) -> None:
    app, browser = bound
    challenge, _identifier = challenge_of(browser.ask_challenge())
    other = DeviceKey()
    refused = browser.send_proof(other.proof(challenge))
    assert refused.status_code == 403
    assert "Secure-Session-Challenge" in refused.headers
    assert "Set-Cookie" not in refused.headers
    # The same challenge, now signed with the registered key, still passes.
    assert browser.send_proof(browser.key.proof(challenge)).status_code == 200

    # A registration whose jwk header is not the key that signed it.
    newcomer = DbscBrowser(app.test_client())
    offer = offer_of(sign_in(newcomer.client))
    assert offer is not None
    forged = DeviceKey().proof(offer[2], jwk=newcomer.key.jwk)
    answer = newcomer.client.post(
        offer[1], base_url=HTTPS, headers={"Secure-Session-Response": f'"{forged}"'}
    )
    assert answer.status_code == 403
    assert cookie(newcomer.client, BOUND) is None
    assert user(newcomer.client) == "ada"  # not bound: the cookie alone still opens it


def test_replayed_and_stale_challenges_are_refused(bound: tuple[Flask, DbscBrowser]) -> None:
    app, browser = bound
    older, _ = challenge_of(browser.ask_challenge())
    newer, _ = challenge_of(browser.ask_challenge())
    proof = browser.key.proof(newer)
    assert browser.send_proof(proof).status_code == 200
    # The same proof again, and a proof over a challenge issued before it.
    assert browser.send_proof(proof).status_code == 403
    assert browser.send_proof(browser.key.proof(older)).status_code == 403

    clock = signer_clock(app)
    stale, _ = challenge_of(browser.ask_challenge())
    clock.advance(5 * 60 + 1)
    assert browser.send_proof(browser.key.proof(stale)).status_code == 403
    # A registration challenge does not serve a refresh, nor one of another session.
    other = DbscBrowser(app.test_client())
    offer = offer_of(sign_in(other.client))
    assert offer is not None
    assert browser.send_proof(browser.key.proof(offer[2])).status_code == 403
    assert browser.refresh().status_code == 200


def test_each_answer_gives_the_next_refresh_its_challenge(
    make_app: t.Callable[..., Flask], bound: tuple[Flask, DbscBrowser]
) -> None:
    app, browser = bound
    clock = signer_clock(app)
    # The registration gave a challenge for this binding: the refresh is one request.
    given = browser.cached_challenge
    assert given is not None
    refreshed = browser.refresh()
    assert refreshed.status_code == 200, refreshed.get_data(as_text=True)
    assert browser.refresh_requests == 1
    assert user(browser.client) == "ada"
    # Each refresh gives the next one's; a challenge given ahead is good once.
    assert browser.cached_challenge not in (None, given)
    replayed = browser.send_proof(browser.key.proof(given))
    assert replayed.status_code == 403 and "Secure-Session-Challenge" in replayed.headers

    # It is good until the bound cookie it came with expires, and five minutes more ...
    clock.advance(600 + 5 * 60 - 1)
    assert browser.refresh().status_code == 200
    assert browser.refresh_requests == 1
    # ... and no longer: then the refresh takes a 403 and a new challenge.
    clock.advance(600 + 5 * 60 + 1)
    assert browser.refresh().status_code == 200
    assert browser.refresh_requests == 2

    # One given to another session's binding serves only that one.
    other = DbscBrowser(app.test_client())
    assert other.register(sign_in(other.client)).status_code == 200
    assert other.cached_challenge is not None
    foreign = browser.send_proof(browser.key.proof(other.cached_challenge))
    assert foreign.status_code == 403
    assert other.refresh().status_code == 200 and other.refresh_requests == 1


def test_a_challenge_from_a_server_whose_clock_runs_ahead_passes(
    bound: tuple[Flask, DbscBrowser],
) -> None:
    app, browser = bound
    clock = signer_clock(app)
    # The worker that issues the challenge runs 20 s ahead of the one that checks it.
    clock.advance(20)
    ahead, _ = challenge_of(browser.ask_challenge())
    clock.advance(-20)
    assert browser.send_proof(browser.key.proof(ahead)).status_code == 200
    # More than CLOCK_SKEW (30 s) ahead is no clock difference: it is refused.
    clock.advance(31)
    too_far, _ = challenge_of(browser.ask_challenge())
    clock.advance(-31)
    assert browser.send_proof(browser.key.proof(too_far)).status_code == 403


def test_a_browser_that_keeps_no_challenge_still_refreshes(
    bound: tuple[Flask, DbscBrowser],
) -> None:
    _app, browser = bound
    answer = browser.refresh(use_cached=False)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert browser.refresh_requests == 2
    assert user(browser.client) == "ada"


def test_a_registration_proof_is_accepted_once(
    make_app: t.Callable[..., Flask], dbsc_backend: Backend
) -> None:
    app = dbsc_app(make_app, dbsc_backend)
    browser = DbscBrowser(app.test_client())
    signed_in = sign_in(browser.client)
    assert browser.register(signed_in).status_code == 200
    first_identifier = browser.identifier
    assert browser.register(signed_in).status_code == 403
    # A thief replaying it with the session cookie alone cannot bind a key of its own.
    offer = offer_of(signed_in)
    assert offer is not None
    thief = DbscBrowser(app.test_client())
    thief.client.set_cookie(COOKIE, t.cast(str, cookie(browser.client, COOKIE)), domain="localhost")
    proof = thief.key.proof(offer[2], jwk=thief.key.jwk)
    answer = thief.client.post(
        offer[1], base_url=HTTPS, headers={"Secure-Session-Response": f'"{proof}"'}
    )
    assert answer.status_code == 403
    assert browser.identifier == first_identifier
    assert browser.refresh().status_code == 200


def test_revoked_or_destroyed_session_refresh_ends_the_binding(
    make_app: t.Callable[..., Flask], dbsc_backend: Backend
) -> None:
    app = dbsc_app(make_app, dbsc_backend, SERVERSESSION_USER_KEY="user")

    browser = DbscBrowser(app.test_client())
    assert browser.register(sign_in(browser.client)).status_code == 200
    other = DbscBrowser(app.test_client())
    sign_in(other.client)
    with app.test_request_context():
        infos = ServerSession().user_sessions("ada")
    assert sorted(info.device_bound for info in infos) == [False, True]
    bound_key = next(info.storage_key for info in infos if info.device_bound)
    with app.app_context():
        assert ServerSession().revoke(bound_key)
    ended = browser.ask_challenge()
    assert ended.status_code == 403
    assert ended.get_json() == {"continue": False}
    assert "Secure-Session-Challenge" not in ended.headers
    assert user(browser.client) is None

    # destroy() (sign-out) ends it too, and expires the bound cookie.
    again = DbscBrowser(app.test_client())
    assert again.register(sign_in(again.client)).status_code == 200
    signed_out = again.client.post("/destroy", base_url=HTTPS)
    expired = [h for h in signed_out.headers.getlist("Set-Cookie") if h.startswith(f"{BOUND}=")]
    assert len(expired) == 1 and "Max-Age=0" in expired[0]
    again.client.set_cookie(BOUND, "kept", domain="localhost")
    assert again.ask_challenge().get_json() == {"continue": False}


def test_rotation_and_regenerate_keep_the_binding(
    make_app: t.Callable[..., Flask], dbsc_backend: Backend
) -> None:
    app = dbsc_app(make_app, dbsc_backend, SERVERSESSION_ROTATE_EVERY=60)
    clock = Clock()
    store_of(app).clock = clock  # type: ignore[method-assign]
    browser = DbscBrowser(app.test_client())
    assert browser.register(sign_in(browser.client)).status_code == 200
    past_the_grace(app)
    before = cookie(browser.client, COOKIE)
    clock.advance(seconds=120)
    assert user(browser.client) == "ada"
    assert cookie(browser.client, COOKIE) != before  # rotated
    assert user(browser.client) == "ada"
    # The rotated session stays bound: its new cookie alone opens nothing.
    thief = app.test_client()
    thief.set_cookie(COOKIE, t.cast(str, cookie(browser.client, COOKIE)), domain="localhost")
    assert user(thief) is None
    assert browser.refresh().status_code == 200

    # Signing in again moves the binding with the data, with no second offer.
    again = browser.client.post("/sign-in", base_url=HTTPS)
    assert offer_of(again) is None
    assert user(browser.client) == "ada"
    thief.set_cookie(COOKIE, t.cast(str, cookie(browser.client, COOKIE)), domain="localhost")
    assert user(thief) is None
    assert browser.refresh().status_code == 200


def test_browser_without_dbsc_is_unchanged(
    make_app: t.Callable[..., Flask], dbsc_backend: Backend
) -> None:
    app = dbsc_app(make_app, dbsc_backend)
    client = app.test_client()
    assert offer_of(sign_in(client)) is not None
    for _ in range(3):
        assert user(client) == "ada"
    # Over plain HTTP nothing is offered.
    plain = app.test_client()
    plain.post("/set", json={"visits": 1})
    assert offer_of(plain.post("/sign-in")) is None


def test_header_mode_is_never_bound(make_app: t.Callable[..., Flask]) -> None:
    app = dbsc_app(make_app, "memory", SERVERSESSION_HEADER_NAME="X-Session-Token")
    api = app.test_client()
    api.post("/set", json={"visits": 1}, base_url=HTTPS)
    token = t.cast(str, cookie(api, COOKIE))
    api.delete_cookie(COOKIE, domain="localhost")
    signed_in = api.post("/sign-in", base_url=HTTPS, headers={"X-Session-Token": token})
    assert "X-Session-Token" in signed_in.headers
    assert offer_of(signed_in) is None

    # The token of a bound session, sent in the header, needs the bound cookie too.
    browser = DbscBrowser(app.test_client())
    assert browser.register(sign_in(browser.client)).status_code == 200
    past_the_grace(app)
    stolen = t.cast(str, cookie(browser.client, COOKIE))
    response = app.test_client().get(
        "/get/user", base_url=HTTPS, headers={"X-Session-Token": stolen}
    )
    assert response.get_json() == {"value": None}


def test_off_by_default(make_app: t.Callable[..., Flask]) -> None:
    app = make_app("memory", SESSION_COOKIE_SECURE=True)
    assert type(app.session_interface) is ServerSessionInterface
    client = app.test_client()
    client.post("/set", json={"user": "ada"}, base_url=HTTPS)
    assert offer_of(client.post("/regenerate", base_url=HTTPS)) is None
    assert client.post("/_serversession/dbsc/register", base_url=HTTPS).status_code == 404


def test_custom_path_and_refresh(make_app: t.Callable[..., Flask]) -> None:
    app = dbsc_app(
        make_app,
        "memory",
        SERVERSESSION_DEVICE_BOUND_PATH="/auth/dbsc",
        SERVERSESSION_DEVICE_BOUND_REFRESH=timedelta(minutes=2),
        SESSION_COOKIE_NAME="__Host-id",
    )
    browser = DbscBrowser(app.test_client())
    answer = browser.register(sign_in(browser.client))
    assert answer.status_code == 200
    assert browser.refresh_url == "/auth/dbsc/refresh"
    assert answer.get_json()["credentials"][0]["name"] == "__Host-id-bound"
    assert "Max-Age=120" in answer.headers["Set-Cookie"]
    assert browser.refresh().status_code == 200


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("SERVERSESSION_DEVICE_BOUND", "yes", "True or False"),
        ("SERVERSESSION_DEVICE_BOUND_PATH", "dbsc", "a URL path such as"),
        ("SERVERSESSION_DEVICE_BOUND_PATH", "/dbsc/", "a URL path such as"),
        ("SERVERSESSION_DEVICE_BOUND_PATH", '/a"b', "a URL path such as"),
        ("SERVERSESSION_DEVICE_BOUND_REFRESH", 0, "a positive timedelta"),
        ("SERVERSESSION_DEVICE_BOUND_REFRESH", "10m", "a positive timedelta"),
    ],
)
def test_bad_settings_name_the_key(
    make_app: t.Callable[..., Flask], key: str, value: t.Any, expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        make_app("memory", **{"SERVERSESSION_DEVICE_BOUND": True, key: value})
    assert f"{key} = {value!r} is not valid: expected {expected}" in str(raised.value)


def test_check_reports_device_binding_without_secure_cookies(
    make_app: t.Callable[..., Flask],
) -> None:
    app = make_app("memory", SERVERSESSION_DEVICE_BOUND=True)
    result = app.test_cli_runner().invoke(args=["serversession", "check"])
    lines = [line for line in result.output.splitlines() if "E016" in line]
    assert lines == [
        "error serversession.E016 SESSION_COOKIE_SECURE = False: SERVERSESSION_DEVICE_BOUND is"
        " on, but the session cookie also travels over plain HTTP, where browsers never bind"
        " sessions and anyone on the path can copy it. Fix: set SESSION_COOKIE_SECURE = True"
        " and serve the app over HTTPS only."
    ]
    assert result.exit_code == 1
    secure = make_app("memory", SERVERSESSION_DEVICE_BOUND=True, SESSION_COOKIE_SECURE=True)
    output = secure.test_cli_runner().invoke(args=["serversession", "check"]).output
    assert "E016" not in output


def test_socketio_checks_the_bound_cookie_at_the_handshake(
    make_app: t.Callable[..., Flask],
) -> None:
    from .test_ext_socketio import add_socketio

    app = dbsc_app(make_app, "memory")
    socketio = add_socketio(app)
    browser = DbscBrowser(app.test_client())
    assert browser.register(sign_in(browser.client)).status_code == 200
    clock = signer_clock(app)
    socket = socketio.test_client(app, flask_test_client=browser.client)
    assert socket.is_connected()
    # The bound cookie expires while the connection lives: its events still see the session.
    clock.advance(601)
    assert socket.emit("dump", callback=True)["user"] == "ada"
    socket.disconnect()
    # A new connection with the expired bound cookie is refused, as is the session cookie alone.
    assert not socketio.test_client(app, flask_test_client=browser.client).is_connected()
    thief = app.test_client()
    thief.set_cookie(COOKIE, t.cast(str, cookie(browser.client, COOKIE)), domain="localhost")
    assert not socketio.test_client(app, flask_test_client=thief).is_connected()
    assert browser.refresh().status_code == 200
    assert socketio.test_client(app, flask_test_client=browser.client).is_connected()


def test_a_stale_registration_challenge_is_refused(make_app: t.Callable[..., Flask]) -> None:
    app = dbsc_app(make_app, "memory")
    clock = signer_clock(app)
    browser = DbscBrowser(app.test_client())
    signed_in = sign_in(browser.client)
    clock.advance(5 * 60 + 1)
    assert browser.register(signed_in).status_code == 403
    assert cookie(browser.client, BOUND) is None


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"alg": "ES256", "typ": "JWT"}, "typ header is not 'dbsc+jwt'"),
        ({"alg": "HS256", "typ": "dbsc+jwt"}, "alg header 'HS256' is not one of ES256, RS256"),
        ({"alg": "none", "typ": "dbsc+jwt"}, "alg header 'none' is not one of ES256, RS256"),
        ({"alg": "RS256", "typ": "dbsc+jwt", "jwk": "ec"}, "jwk header is not an RSA public key"),
        ({"alg": "ES256", "typ": "dbsc+jwt"}, "jwk header is not an EC public key"),
        ({"alg": "RS256", "typ": "dbsc+jwt", "jwk": "rsa1024"}, "shorter than 2048 bits"),
    ],
)
def test_registration_proofs_of_the_wrong_kind_are_refused(
    make_app: t.Callable[..., Flask],
    caplog: pytest.LogCaptureFixture,
    header: dict[str, t.Any],
    reason: str,
) -> None:
    app = dbsc_app(make_app, "memory")
    browser = DbscBrowser(app.test_client())
    offer = offer_of(sign_in(browser.client))
    assert offer is not None
    keys = {
        "ec": DeviceKey("ES256").jwk,
        "rsa1024": RSAAlgorithm.to_jwk(
            rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
            as_dict=True,
        ),
    }
    if "jwk" in header:
        header = {**header, "jwk": keys[header["jwk"]]}

    def part(value: t.Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    # Signed or not, each is refused before its signature is looked at.
    proof = f"{part(header)}.{part({'jti': offer[2]})}.c2lnbmF0dXJl"
    with caplog.at_level(logging.INFO, "flask_serversession"):
        answer = browser.client.post(
            offer[1], base_url=HTTPS, headers={"Secure-Session-Response": f'"{proof}"'}
        )
    assert answer.status_code == 403
    assert reason in answer.get_json()["error"]
    assert reason in caplog.text


def test_a_damaged_binding_opens_nothing_and_is_logged(
    bound: tuple[Flask, DbscBrowser], caplog: pytest.LogCaptureFixture
) -> None:
    app, browser = bound
    store = store_of(app)
    [(key, _values)] = list(store.items())
    record = store.backend.load(key)
    assert record is not None
    store.backend.update(key, Delta(record.expires_at, {BINDING_KEY: '"garbage"'}), store.clock())
    assert user(browser.client) is None
    assert f"Stored session {key} has a damaged device binding" in caplog.text


class HoldingBackend(MemoryBackend):
    """A memory backend that holds the first write of a binding until released.

    It counts the loads made while that write is held, so a test can tell
    whether a second request read the binding before the first one wrote it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.held = threading.Event()
        self.release = threading.Event()
        self.loads_while_held = 0
        self.second_read = threading.Event()

    def load(self, key: str) -> Record | None:
        record = super().load(key)
        if self.held.is_set() and not self.release.is_set():
            self.loads_while_held += 1
            if self.loads_while_held >= 2:
                self.second_read.set()
        return record

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        if self.armed and BINDING_KEY in delta.set:
            self.armed = False
            self.held.set()
            self.release.wait(WAIT_SECONDS)
        return super().update(key, delta, now)


def test_two_copies_of_one_proof_at_once_are_accepted_once(
    make_app: t.Callable[..., Flask],
) -> None:
    backend = HoldingBackend()
    app = dbsc_app(make_app, backend)
    browser = DbscBrowser(app.test_client())
    assert browser.register(sign_in(browser.client)).status_code == 200
    challenge, _ = challenge_of(browser.ask_challenge())
    proof = browser.key.proof(challenge)
    copies = []
    for _ in range(2):
        copy = DbscBrowser(app.test_client(), browser.key)
        copy.identifier, copy.refresh_url = browser.identifier, browser.refresh_url
        for name in (COOKIE, BOUND):
            copy.client.set_cookie(
                name, t.cast(str, cookie(browser.client, name)), domain="localhost"
            )
        copies.append(copy)
    statuses: list[int] = []

    def send(copy: DbscBrowser) -> None:
        statuses.append(copy.send_proof(proof).status_code)

    backend.armed = True
    first = threading.Thread(target=send, args=(copies[0],))
    first.start()
    assert backend.held.wait(WAIT_SECONDS)
    second = threading.Thread(target=send, args=(copies[1],))
    second.start()
    # Without the lock the second request reads the binding (its session, then the
    # proof's check) while the first one's write is held; with it, it waits.
    backend.second_read.wait(2)
    backend.release.set()
    first.join(WAIT_SECONDS)
    second.join(WAIT_SECONDS)
    assert sorted(statuses) == [200, 403]
