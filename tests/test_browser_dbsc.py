"""Device-bound sessions in a real Chromium: register, let the bound cookie expire, refresh,
and a copy of the session cookie in another profile opens nothing.

Chromium 156 on Linux binds sessions only with the DBSC features on (software
keys, as there is no TPM) and over HTTPS with a certificate it accepts without
an error, so the example app is served with a self-signed P-256 certificate
for ``localhost`` made here and trusted by its key's SPKI hash.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import os
import re
import ssl
import threading
import time
import typing as t
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from werkzeug.serving import make_server

from example_app import create_app
from flask_serversession.binding import REGISTRATION_GRACE
from flask_serversession.signals import session_binding_failed

from .conftest import server_unavailable
from .test_browser import Browsers
from .test_browser import CHROMEDRIVER
from .test_browser import CHROMIUM
from .test_browser import submit
from .test_browser import wait_for_text

FEATURES = (
    "--enable-features=DeviceBoundSessions:RefreshQuota/false,"
    "EnableBoundSessionCredentialsSoftwareKeysForManualTesting"
)
#: The bound cookie's lifetime in this test: short, so that it expires while we wait.
REFRESH_SECONDS = 6
#: How long the test waits for Chromium to register or refresh, at most.
EXCHANGE_WAIT = 60
DBSC_PATH = "/_serversession/dbsc"


def self_signed(directory: Path) -> tuple[Path, Path, str]:
    """A P-256 certificate for localhost, its key, and the base64 SHA-256 of its SPKI."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return cert_path, key_path, base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _elide_jws(value: str) -> dict[str, t.Any]:
    """A JWS's header and payload, decoded; the challenge and signature elided."""
    jws = value.strip('"')
    header, payload, _signature = jws.split(".")

    def decode(part: str) -> t.Any:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))

    header_json = decode(header)
    if "jwk" in header_json:
        header_json["jwk"] = {
            k: (v if k in ("kty", "crv") else "…") for k, v in header_json["jwk"].items()
        }
    claims = decode(payload)
    claims["jti"] = "<challenge>"
    return {"header": header_json, "payload": claims, "signature": "…"}


def _elide(name: str, value: str) -> t.Any:
    lower = name.lower()
    if lower == "secure-session-response":
        return _elide_jws(value)
    if lower in ("set-cookie", "cookie"):
        return re.sub(r"=([^;,\s]+)", lambda m: "=…" if len(m[1]) > 16 else m[0], value)
    if lower in ("secure-session-challenge", "secure-session-registration"):
        return re.sub(
            r'challenge="[^"]+"|^"[^"]+"', lambda m: m[0][: m[0].index('"')] + '"…"', value
        )
    return value


class Exchanges:
    """WSGI middleware that records each DBSC request and its answer, secrets elided."""

    _REQUEST_HEADERS = (
        "Secure-Session-Response",
        "Sec-Secure-Session-Id",
        "Secure-Session-Skipped",
        "Sec-Fetch-Site",
    )
    _RESPONSE_HEADERS = ("Secure-Session-Registration", "Secure-Session-Challenge", "Set-Cookie")

    def __init__(self, app: t.Any) -> None:
        self.app = app
        self.log: list[dict[str, t.Any]] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, t.Any], start_response: t.Any) -> t.Any:
        path = environ.get("PATH_INFO", "")
        seen: dict[str, t.Any] = {"method": environ["REQUEST_METHOD"], "path": path}

        def recording_start(status: str, headers: list[tuple[str, str]], *args: t.Any) -> t.Any:
            seen["status"] = status
            seen["response_headers"] = [
                (k, _elide(k, v)) for k, v in headers if k in self._RESPONSE_HEADERS
            ]
            return start_response(status, headers, *args)

        body = b"".join(self.app(environ, recording_start))
        offered = any(k == "Secure-Session-Registration" for k, _ in seen["response_headers"])
        skipped = "HTTP_SECURE_SESSION_SKIPPED" in environ
        if path.startswith(DBSC_PATH) or offered or skipped:
            seen["request_headers"] = {
                name: _elide(name, environ[f"HTTP_{name.upper().replace('-', '_')}"])
                for name in self._REQUEST_HEADERS
                if f"HTTP_{name.upper().replace('-', '_')}" in environ
            }
            seen["cookies_sent"] = sorted(
                c.split("=", 1)[0].strip() for c in environ.get("HTTP_COOKIE", "").split(";") if c
            )
            if path.startswith(DBSC_PATH) and body:
                seen["body"] = json.loads(body)
            with self._lock:
                self.log.append(seen)
        return [body]

    def count(self, path: str, status: int) -> int:
        with self._lock:
            return sum(
                1 for e in self.log if e["path"] == path and e["status"].startswith(str(status))
            )

    def refreshed_in_one_request(self) -> int:
        """How many refreshes were answered 200 right away, with no 403 before them."""
        with self._lock:
            refreshes = [e for e in self.log if e["path"] == f"{DBSC_PATH}/refresh"]
        return sum(
            1
            for before, e in zip([None, *refreshes], refreshes, strict=False)
            if e["status"].startswith("200")
            and (before is None or not before["status"].startswith("403"))
        )

    def refusals(self) -> list[dict[str, t.Any]]:
        """The DBSC answers that refused a registration or ended a binding.

        A 403 with a new challenge is not one: it asks the browser for a proof
        over that challenge, and the browser goes on.
        """
        with self._lock:
            return [
                e
                for e in self.log
                if e["path"].startswith(DBSC_PATH)
                and not e["status"].startswith("200")
                and not any(name == "Secure-Session-Challenge" for name, _ in e["response_headers"])
            ]

    def summary(self) -> str:
        """One line per exchange: what was sent, and the answer."""
        with self._lock:
            return "\n".join(
                f"  {e['method']} {e['path']} -> {e['status']}"
                f" sent={sorted(e.get('request_headers', {}))} cookies={e.get('cookies_sent')}"
                f" answered={[name for name, _ in e['response_headers']]} body={e.get('body')}"
                for e in self.log
            )


def dbsc_net_log(path: Path) -> list[str]:
    """Chromium's DBSC events in its net log at ``path``, as far as it has written it."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return [f"(no net log: {e})"]
    head, _, rest = text.partition('"events": [')
    try:
        constants = json.loads(head.rstrip().rstrip(",") + "}")["constants"]
    except (ValueError, KeyError) as e:
        return [f"(net log unreadable: {e})"]
    names = {number: name for name, number in constants["logEventTypes"].items()}
    events = []
    for line in rest.splitlines():
        try:
            event = json.loads(line.strip().rstrip(","))
        except ValueError:
            continue
        name = names.get(event.get("type"), "")
        if "DBSC" in name:
            events.append(f"  {event.get('time')} {name} {event.get('params', {})}")
    return events


@contextlib.contextmanager
def serve_https(app: t.Any, cert: Path, key: Path) -> t.Iterator[int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, name="dbsc-https", daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def wait_for(condition: t.Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Chromium did not {what} within {seconds} s")
        time.sleep(0.2)


def load_until_signed_in(driver: t.Any, url: str, tries: int = 3) -> None:
    """Load ``url`` until it shows the user signed in, at most ``tries`` times.

    Chromium sends a page without the bound cookie when it skips a refresh it
    was slow to sign (it says so in ``Secure-Session-Skipped``, which the
    exchanges log keeps): the server rightly shows that page signed out, and
    the next load brings the cookie.
    """
    from selenium.common.exceptions import TimeoutException

    for attempt in range(1, tries + 1):
        driver.get(url)
        try:
            wait_for_text(driver, "status", "Signed in as ada")
            return
        except TimeoutException:
            if attempt == tries:
                raise


def sign_in_bound(driver: t.Any, base: str, exchanges: Exchanges, net_log: Path) -> float:
    """Sign in, and wait until Chromium has registered and refreshed once.

    Returns when the registration was seen (``time.monotonic()``). The page
    the sign-in redirects to shows the user signed in, whether Chromium asked
    for it before its registration was answered or after.

    Chromium's DBSC is still behind a testing flag here, with software keys:
    once in a while it drops a binding it has just made, with no request to
    the server (or after a plain challenge), and refreshes no more. The user
    then meets a session that needs signing in again, and so does the test,
    once, saying so; it fails if the server refused a proof or ended the
    binding, or if Chromium drops the binding again.
    """
    for attempt in (1, 2):
        if attempt == 2:
            # A fresh start: the session of the dropped binding is bound still.
            driver.delete_all_cookies()
        registered = exchanges.count(f"{DBSC_PATH}/register", 200)
        refreshed = exchanges.refreshed_in_one_request()
        driver.get(f"{base}/login")
        submit(driver, "username", "ada", "sign-in")
        wait_for_text(driver, "status", "Signed in as ada")
        wait_for(
            lambda before=registered: exchanges.count(f"{DBSC_PATH}/register", 200) > before,
            EXCHANGE_WAIT,
            "register the session",
        )
        bound_at = time.monotonic()
        # Chromium refreshes when a request is to go out: the bound cookie lives
        # REFRESH_SECONDS, so a page load starts one at once, with a proof over
        # the challenge given ahead: one request, no 403 first.
        deadline = bound_at + EXCHANGE_WAIT
        while exchanges.refreshed_in_one_request() == refreshed:
            if time.monotonic() > deadline:
                break
            driver.get(f"{base}/")
            time.sleep(1)
        else:
            return bound_at
        if attempt == 2 or exchanges.refusals():
            pytest.fail(f"Chromium did not refresh in one request within {EXCHANGE_WAIT} s")
        print(
            "Chromium dropped the binding it had just made, with no refusal from the"
            " server; signing in again. Its DBSC events so far:",
            *dbsc_net_log(net_log),
            sep="\n",
        )
    raise AssertionError("unreachable")


def test_chromium_binds_refreshes_and_a_copied_cookie_opens_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            server_unavailable(f"{path} is missing: install chromium and chromium-driver")
    monkeypatch.setenv("SE_OFFLINE", "true")
    cert, key, spki = self_signed(tmp_path)
    app = create_app(
        {
            "SERVERSESSION_DEVICE_BOUND": True,
            "SERVERSESSION_DEVICE_BOUND_REFRESH": REFRESH_SECONDS,
            "SESSION_COOKIE_SECURE": True,
        },
        instance_path=str(tmp_path / "instance"),
    )
    exchanges = Exchanges(app.wsgi_app)
    app.wsgi_app = exchanges  # type: ignore[method-assign]
    failures: list[str] = []

    def on_failed(sender: t.Any, storage_key: str) -> None:
        failures.append(storage_key)

    browsers = Browsers(
        tmp_path / "chromium",
        FEATURES,
        f"--ignore-certificate-errors-spki-list={spki}",
        net_log=True,
    )
    try:
        with (
            serve_https(app, cert, key) as port,
            session_binding_failed.connected_to(on_failed, app),
        ):
            base = f"https://localhost:{port}"
            owner = browsers.start("owner")
            bound_at = sign_in_bound(owner, base, exchanges, browsers.net_log_path("owner"))
            # The devices page marks this session as bound.
            owner.get(f"{base}/devices")
            wait_for_text(owner, "devices", "Bound")

            # Past the bound cookie's lifetime, and past the grace after the
            # binding in which the session cookie alone still opens the session:
            # the page needs a bound cookie that Chromium refreshed with its key.
            grace = REGISTRATION_GRACE.total_seconds()
            time.sleep(max(REFRESH_SECONDS, bound_at + grace - time.monotonic()) + 1)
            load_until_signed_in(owner, f"{base}/")

            cookies = {c["name"]: c for c in owner.get_cookies()}
            stolen = cookies["__Host-session"]
            thief = browsers.start("thief")
            thief.get(f"{base}/login")
            thief.delete_all_cookies()
            thief.add_cookie(
                {
                    "name": "__Host-session",
                    "value": stolen["value"],
                    "path": "/",
                    "secure": True,
                    "httpOnly": True,
                }
            )
            thief.get(f"{base}/")
            wait_for_text(thief, "status", "You are not signed in.")
            assert failures, "the copied cookie was not reported as a binding failure"

            load_until_signed_in(owner, f"{base}/")
    except BaseException:
        browsers.screenshot_all(request.node.name)
        print("DBSC exchanges as the server saw them:", exchanges.summary(), sep="\n")
        print(
            "Chromium's DBSC events (owner):",
            *dbsc_net_log(browsers.net_log_path("owner")),
            sep="\n",
        )
        raise
    finally:
        browsers.quit_all()
        app.extensions["serversession"].backend.close()
        log_path = tmp_path / "dbsc-exchanges.json"
        log_path.write_text(json.dumps(exchanges.log, indent=2, ensure_ascii=False))
        print(f"DBSC exchanges as the server saw them: {log_path}")
