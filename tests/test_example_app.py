from __future__ import annotations

import math
import re
import secrets
import typing as t
from datetime import timedelta

import pytest

from example_app import create_app
from example_app.api import create_api_app
from example_app.devices import describe_device
from example_app.devices import describe_span

from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of

FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36"
)
HEADLESS_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " HeadlessChrome/120.0.6099.224 Safari/537.36"
)
EDGE_WINDOWS = CHROME_WINDOWS + " Edg/131.0.2903.86"
SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/17.4 Safari/605.1.15"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Mobile Safari/537.36"
)


@pytest.mark.parametrize(
    ("user_agent", "shown"),
    [
        (FIREFOX_LINUX, "Firefox on Linux"),
        (CHROME_WINDOWS, "Chrome on Windows"),
        (HEADLESS_CHROME, "Chrome on Linux"),
        (EDGE_WINDOWS, "Edge on Windows"),
        (SAFARI_MAC, "Safari on macOS"),
        (SAFARI_IPHONE, "Safari on iOS"),
        (CHROME_ANDROID, "Chrome on Android"),
        ("curl/8.5.0", "curl"),
        ("python-requests/2.32.3", "Python"),
        ("SomeBot (X11; Linux)", "SomeBot on Linux"),
        ("Mozilla/5.0 (X11; Linux x86_64)", "Unknown browser on Linux"),
        ("?", "Unknown browser"),
        (None, "Unknown device"),
        ("", "Unknown device"),
    ],
)
def test_devices_are_named_shortly(user_agent: str | None, shown: str) -> None:
    assert describe_device(user_agent) == shown


def test_spans_are_said_in_words() -> None:
    assert describe_span(timedelta(minutes=5)) == "5 minutes"
    assert describe_span(timedelta(hours=1)) == "1 hour"
    assert describe_span(timedelta(hours=24)) == "1 day"
    assert describe_span(timedelta(seconds=90)) == "90 seconds"
    assert describe_span(timedelta(0)) == "every request"


def words(page: str) -> str:
    return " ".join(page.split())


def app_and_client(tmp_path: t.Any) -> tuple[t.Any, t.Any]:
    app = create_app({"SERVERSESSION_BACKEND": "memory"}, instance_path=str(tmp_path / "i"))
    return app, app.test_client()


def test_the_visit_count_is_singular_once(tmp_path: t.Any) -> None:
    _app, client = app_and_client(tmp_path)
    assert "1</span> time in this session." in words(client.get("/").text)
    assert "2</span> times in this session." in words(client.get("/").text)


def test_devices_show_a_short_name_with_the_whole_string_on_hover(tmp_path: t.Any) -> None:
    _app, client = app_and_client(tmp_path)
    client.post("/login", data={"username": "alice"}, headers={"User-Agent": FIREFOX_LINUX})
    page = words(client.get("/devices").text)
    assert f'title="{FIREFOX_LINUX}">Firefox on Linux</td>' in page
    assert '"Last seen" is updated at most every 5 minutes.' in page


def test_a_device_signed_out_from_elsewhere_is_told_why(tmp_path: t.Any) -> None:
    app, laptop = app_and_client(tmp_path)
    phone = app.test_client()
    laptop.post("/login", data={"username": "alice"})
    phone.post("/login", data={"username": "alice"})
    laptop.post("/devices/revoke-others")
    page = phone.get("/").text
    assert "You are not signed in." in page and 'id="ended"' in page
    # Told once: the next page belongs to the new session.
    assert 'id="ended"' not in phone.get("/").text
    # A first visit, or one after signing out here, says nothing of the kind.
    assert 'id="ended"' not in app.test_client().get("/").text
    laptop.post("/logout")
    assert 'id="ended"' not in laptop.get("/").text


def test_the_admin_page_says_who_may_see_it_and_when_sessions_expire(tmp_path: t.Any) -> None:
    _app, client = app_and_client(tmp_path)
    client.post("/login", data={"username": "alice"})
    page = words(client.get("/admin").text)
    assert "open to every signed-in user" in page
    assert '<span id="count">1</span> live session.' in page
    assert "A session expires 1 day after it was created" in page
    assert "at least 1 hour of life ahead of it" in page
    client.post("/admin/purge")
    assert "Removed 0 expired sessions." in client.get("/admin").text


def test_the_session_page_shows_the_current_ids_age_and_rotation(tmp_path: t.Any) -> None:
    app, client = app_and_client(tmp_path)
    assert app.config["SERVERSESSION_ROTATE_EVERY"] == timedelta(minutes=15)
    clock = Clock()
    clock.advance(minutes=-20)
    store_of(app).clock = clock
    client.post("/login", data={"username": "alice"})
    signed_in = session_cookie(client)
    page = words(client.get("/session").text)
    assert (
        f'id="id-given-at">{clock.now:%Y-%m-%d %H:%M:%S} UTC (<span id="id-age">20 minutes' in page
    )
    assert "The id changes every 15 minutes with no sign-out" in page

    # Past 15 minutes of the store's clock, the next request gives a new id
    # as it ends; the page after it shows when.
    clock.advance(minutes=16)
    client.get("/session")
    assert session_cookie(client) != signed_in
    page = words(client.get("/session").text)
    assert f'id="id-given-at">{clock.now:%Y-%m-%d %H:%M:%S} UTC' in page
    assert "Signed in as" in words(client.get("/").text)


def test_devices_page_marks_a_device_bound_session(tmp_path: t.Any) -> None:
    from .support.dbsc_client import DbscBrowser
    from .support.dbsc_client import HTTPS

    app = create_app(
        {"SESSION_COOKIE_SECURE": True, "SERVERSESSION_BACKEND": "memory"},
        instance_path=str(tmp_path / "instance"),
    )
    bound = DbscBrowser(app.test_client())
    signed_in = bound.client.post("/login", data={"username": "ada"}, base_url=HTTPS)
    assert bound.register(signed_in).status_code == 200
    other = app.test_client()
    other.post("/login", data={"username": "ada"}, base_url=HTTPS)
    page = bound.client.get("/devices", base_url=HTTPS).get_data(as_text=True)
    marks = [row.split('<td class="bound">')[1].split("</td>")[0] for row in page.split("<tr")[2:]]
    assert sorted(marks) == ["-", '<span title="Bound to this device\'s key">Bound</span>']


def test_the_admin_page_sends_a_visitor_to_sign_in(tmp_path: t.Any) -> None:
    _app, client = app_and_client(tmp_path)
    response = client.get("/admin")
    assert response.status_code == 302 and response.location == "/login"
    assert "Sign in to see the sessions page." in client.get("/login").text


def test_renew_says_whether_the_expiry_moved(tmp_path: t.Any) -> None:
    app, client = app_and_client(tmp_path)
    clock = Clock()
    store_of(app).clock = clock
    client.get("/")
    page = words(client.post("/session/renew", follow_redirects=True).text)
    assert "Expiry unchanged: more than 1 hour was left." in page
    assert "Expiry pushed back." not in page
    clock.advance(hours=23, minutes=30)
    page = words(client.post("/session/renew", follow_redirects=True).text)
    assert "Expiry pushed back." in page
    assert f'id="expires-at">{clock.now + timedelta(hours=1):%Y-%m-%d %H:%M:%S} UTC' in page


def test_the_session_page_says_spans_in_words_and_hides_internal_keys(tmp_path: t.Any) -> None:
    _app, client = app_and_client(tmp_path)
    client.post("/login", data={"username": "alice"})
    client.post("/session/permanent", data={"permanent": "on"})
    page = words(client.get("/session").text)
    assert "Renew sets the expiry to at least 1 hour from now" in page
    assert "1:00:00" not in page
    assert "<th>Keys</th><td>user, visits</td>" in page or "<th>Keys</th><td>user</td>" in page
    assert "_flashes" not in page and "_permanent" not in page


def test_the_example_app_passes_its_own_check(tmp_path: t.Any) -> None:
    # What the deployment sets from the environment: a real key, HTTPS.
    production = {"SECRET_KEY": secrets.token_hex(32), "SESSION_COOKIE_SECURE": True}
    app = create_app(production, instance_path=str(tmp_path / "i"))
    result = app.test_cli_runner().invoke(args=["serversession", "check"])
    assert result.output == "No problems found.\n" and result.exit_code == 0
    # The API, an app of its own under /api, has header mode; the pages do not.
    api = create_api_app(app)
    assert api.config["SERVERSESSION_HEADER_NAME"] == "X-Session-Token"
    assert app.config["SERVERSESSION_HEADER_NAME"] is None
    assert api.test_cli_runner().invoke(args=["serversession", "check"]).output == (
        "No problems found.\n"
    )
    client = app.test_client()
    token = client.post("/api/login", json={"username": "ann"}).json["token"]
    client.set_cookie("session", "", expires=0)
    cart = client.post("/api/cart", json={"item": "tea"}, headers={"X-Session-Token": token})
    assert cart.json == {"user": "ann", "cart": ["tea"]}
    for built in (app, api):
        built.extensions["serversession"].backend.close()


def test_metrics_are_served_and_shown_on_the_admin_page(tmp_path: t.Any) -> None:
    _app, client = app_and_client(tmp_path)
    client.post("/login", data={"username": "alice"})
    client.post("/logout")
    client.post("/login", data={"username": "bob"})
    scraped = client.get("/metrics").text
    assert 'serversession_sessions_created_total{backend="memory"}' in scraped
    assert 'serversession_store_duration_seconds_count{backend="memory",operation="load"}' in (
        scraped
    )
    page = words(client.get("/admin").text)
    assert "<td>created</td><td>2</td>" in page
    assert "<td>ended: destroyed</td><td>1</td>" in page  # sign-out
    assert "<td>ended: regenerated</td><td>1</td>" in page  # the second sign-in
    assert re.search(r"<td>create</td><td>3</td> <td>[\d.]+ ms</td><td>[\d.]+ ms</td>", page)


@pytest.mark.parametrize(
    ("q", "expected"), [(0.5, 1.0), (0.75, 1.5), (1.0, 2.0), (0.99, 1.98), (0.25, 0.5)]
)
def test_the_admin_page_reads_quantiles_as_histogram_quantile_does(
    q: float, expected: float
) -> None:
    from example_app.figures import quantile

    # Two calls under 1 s, two between 1 and 2: PromQL interpolates within a bucket.
    assert quantile(q, [(1.0, 2), (2.0, 4), (math.inf, 4)]) == pytest.approx(expected)
    assert quantile(q, [(1.0, 0), (math.inf, 0)]) is None
