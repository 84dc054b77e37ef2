"""The example app in headless Chromium: sign in, cart, tabs, sign out, cookie flags,
remember me across browser restarts, signing out other devices, and forms posted
from another origin."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import typing as t
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from example_app import create_app

from .conftest import Clock
from .conftest import server_unavailable
from .conftest import store_of

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_SECONDS = 10
DAY = 24 * 60 * 60


@contextlib.contextmanager
def serve(app: t.Any, name: str) -> t.Iterator[str]:
    """Serve a WSGI app on a free loopback port; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture
def live_server(tmp_path: Path) -> t.Iterator[str]:
    """Serve the example app, with its default SQLite store, on a free loopback port."""
    app = create_app(instance_path=str(tmp_path / "instance"))
    try:
        with serve(app, "example-app") as url:
            yield url
    finally:
        app.extensions["serversession"].backend.close()


class Browsers:
    """Starts headless Chromium instances, each on a profile directory of its own.

    A profile directory outlives its browser, so :meth:`restart` shows what a
    user sees after closing the browser and opening it again.
    """

    def __init__(self, root: Path, *arguments: str, net_log: bool = False) -> None:
        self.root = root
        #: More command-line arguments for every browser started.
        self.arguments = arguments
        #: Whether each browser writes Chromium's net log to ``net_log_path(profile)``.
        self.net_log = net_log
        root.mkdir(exist_ok=True)
        #: Each open browser and its profile directory's name.
        self.running: dict[t.Any, str] = {}

    def start(self, profile: str) -> t.Any:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={self.root / profile}",
            *([f"--log-net-log={self.net_log_path(profile)}"] if self.net_log else []),
            *self.arguments,
        ):
            options.add_argument(argument)
        service = Service(CHROMEDRIVER, log_output=str(self.root / f"chromedriver-{profile}.log"))
        try:
            browser = webdriver.Chrome(options=options, service=service)
        except Exception as e:
            server_unavailable(f"Chromium did not start: {e}")
        browser.set_page_load_timeout(WAIT_SECONDS)
        self.running[browser] = profile
        return browser

    def net_log_path(self, profile: str) -> Path:
        """Where the browser of ``profile`` writes its net log, when ``net_log`` is on."""
        return self.root / f"netlog-{profile}.json"

    def restart(self, browser: t.Any) -> t.Any:
        """Close the browser and open it again on the same profile."""
        profile = self.running.pop(browser)
        browser.quit()
        return self.start(profile)

    def screenshot_all(self, name: str) -> None:
        for browser, profile in self.running.items():
            path = self.root / f"{name}-{profile}.png"
            with contextlib.suppress(Exception):
                browser.save_screenshot(str(path))
                print(f"Screenshot of the failure: {path}")

    def quit_all(self) -> None:
        while self.running:
            browser, _ = self.running.popitem()
            # One browser that crashed must not leave the others running.
            with contextlib.suppress(Exception):
                browser.quit()


@pytest.fixture
def browsers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> t.Iterator[Browsers]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            server_unavailable(f"{path} is missing: install chromium and chromium-driver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        server_unavailable("selenium is not installed")

    # Both paths are given, so selenium-manager has nothing to look up; offline
    # mode makes sure it never downloads a browser or driver anyway.
    monkeypatch.setenv("SE_OFFLINE", "true")
    started = Browsers(tmp_path / "chromium")
    failed_before = request.session.testsfailed
    try:
        yield started
        # The test's own report is counted before its fixtures are torn down.
        if request.session.testsfailed > failed_before:
            started.screenshot_all(request.node.name)
    finally:
        started.quit_all()


@pytest.fixture
def driver(browsers: Browsers) -> t.Any:
    return browsers.start("profile")


def wait_for_text(driver: t.Any, element_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    condition = expected_conditions.text_to_be_present_in_element((By.ID, element_id), text)
    wait_until(driver, condition)


def check(driver: t.Any, element_id: str) -> None:
    """Tick a box: the page stays."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, element_id).click()


def submit(driver: t.Any, field_id: str, value: str, button_id: str) -> None:
    """Fill in a field and send its form; return once the next page has replaced this one."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, field_id).send_keys(value)
    press(driver, button_id)


def press(driver: t.Any, element_id: str) -> None:
    """Click a button that loads another page; return once that page has replaced this one.

    Without the wait, a check could read the old page, or read an element
    while the browser swaps the document under it.
    """
    from selenium.webdriver.common.by import By

    old_page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, element_id).click()
    wait_until(driver, lambda _: is_gone(old_page))


def is_gone(element: t.Any) -> bool:
    from selenium.common.exceptions import WebDriverException

    try:
        element.is_enabled()
    except WebDriverException:  # stale, or its document is being swapped out
        return True
    return False


def cart_items(driver: t.Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#cart li")]


def page_with_cookie(url: str, value: str) -> str:
    request = urllib.request.Request(url, headers={"Cookie": f"session={value}"})
    with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as response:
        return t.cast(str, response.read().decode())


def sign_in(driver: t.Any, base: str, username: str, *, remember: bool = False) -> None:
    driver.get(f"{base}/login")
    if remember:
        check(driver, "remember")
    submit(driver, "username", username, "sign-in")
    wait_for_text(driver, "status", f"Signed in as {username}.")


def session_cookie(driver: t.Any) -> dict[str, t.Any]:
    cookies = [c for c in driver.get_cookies() if c["name"] == "session"]
    assert len(cookies) == 1, cookies
    return t.cast(dict[str, t.Any], cookies[0])


def test_sign_in_cart_tabs_and_sign_out(live_server: str, driver: t.Any) -> None:

    driver.get(f"{live_server}/")
    wait_for_text(driver, "status", "You are not signed in.")

    sign_in(driver, live_server, "alice")

    driver.get(f"{live_server}/cart")
    submit(driver, "item", "apple", "add")
    wait_for_text(driver, "cart", "apple")
    submit(driver, "item", "pear", "add")
    wait_for_text(driver, "cart", "pear")
    driver.refresh()
    wait_for_text(driver, "cart", "pear")
    assert cart_items(driver) == ["apple", "pear"]

    cookie = driver.get_cookie("session")
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/"
    signed_in = cookie["value"]

    first_tab = driver.current_window_handle
    driver.switch_to.new_window("tab")
    driver.get(f"{live_server}/cart")
    wait_for_text(driver, "cart", "pear")
    submit(driver, "item", "lamp", "add")
    wait_for_text(driver, "cart", "lamp")
    driver.get(f"{live_server}/admin")
    wait_for_text(driver, "count", "1")
    driver.close()

    driver.switch_to.window(first_tab)
    driver.refresh()
    wait_for_text(driver, "cart", "lamp")
    assert cart_items(driver) == ["apple", "pear", "lamp"]
    assert driver.get_cookie("session")["value"] == signed_in

    press(driver, "logout")
    wait_for_text(driver, "status", "You are not signed in.")
    assert "Signed out." in driver.page_source
    assert driver.get_cookie("session")["value"] != signed_in

    assert "You are not signed in." in page_with_cookie(f"{live_server}/", signed_in)
    driver.delete_all_cookies()
    driver.add_cookie({"name": "session", "value": signed_in, "path": "/"})
    driver.get(f"{live_server}/cart")
    wait_for_text(driver, "cart-empty", "The cart is empty.")
    driver.get(f"{live_server}/")
    wait_for_text(driver, "status", "You are not signed in.")


def test_remember_me_keeps_the_user_signed_in_across_browser_restarts(
    live_server: str, browsers: Browsers
) -> None:
    browser = browsers.start("remembered")
    sign_in(browser, live_server, "alice", remember=True)
    wait_for_text(browser, "remembered", "you stay signed in after it closes")
    cookie = session_cookie(browser)
    # A persistent cookie that expires with the session's own 30-day lifetime.
    assert abs(cookie["expiry"] - (time.time() + 30 * DAY)) < 120
    browser.get(f"{live_server}/session")
    wait_for_text(browser, "cookie", "kept until it expires (Remember me)")

    browser = browsers.restart(browser)
    browser.get(f"{live_server}/")
    wait_for_text(browser, "status", "Signed in as alice.")
    assert session_cookie(browser)["value"] == cookie["value"]


def test_without_remember_me_a_browser_restart_signs_the_user_out(
    live_server: str, browsers: Browsers
) -> None:
    browser = browsers.start("forgotten")
    sign_in(browser, live_server, "bob")
    cookie = session_cookie(browser)
    assert "expiry" not in cookie
    browser.get(f"{live_server}/session")
    wait_for_text(browser, "cookie", "ends when the browser closes")

    # Headless Chromium drops session cookies when it restarts ("continue where
    # you left off" is off in a new profile); the stored session is untouched.
    browser = browsers.restart(browser)
    browser.get(f"{live_server}/")
    wait_for_text(browser, "status", "You are not signed in.")
    assert session_cookie(browser)["value"] != cookie["value"]
    assert "Signed in as <strong>bob</strong>." in page_with_cookie(
        f"{live_server}/", cookie["value"]
    )


def test_changing_session_permanent_resends_the_cookie(
    live_server: str, browsers: Browsers
) -> None:
    browser = browsers.start("permanent")
    sign_in(browser, live_server, "carol")
    signed_in = session_cookie(browser)
    assert "expiry" not in signed_in

    browser.get(f"{live_server}/session")
    press(browser, "toggle-permanent")
    wait_for_text(browser, "permanent", "yes")
    cookie = session_cookie(browser)
    # The same id, now with the session's expiry: 24 hours after sign-in.
    assert cookie["value"] == signed_in["value"]
    assert abs(cookie["expiry"] - (time.time() + DAY)) < 120

    browser = browsers.restart(browser)
    browser.get(f"{live_server}/session")
    wait_for_text(browser, "permanent", "yes")
    assert session_cookie(browser)["value"] == signed_in["value"]

    press(browser, "toggle-permanent")
    wait_for_text(browser, "permanent", "no")
    cookie = session_cookie(browser)
    assert cookie["value"] == signed_in["value"]
    assert "expiry" not in cookie

    browser = browsers.restart(browser)
    browser.get(f"{live_server}/")
    wait_for_text(browser, "status", "You are not signed in.")


FORGED_PAGE = """<!doctype html>
<form method="post" action="{action}" id="forged"></form>
<script>document.getElementById("forged").submit();</script>
"""


def test_forms_posted_from_another_origin_are_refused(live_server: str, driver: t.Any) -> None:
    sign_in(driver, live_server, "dave")
    signed_in = session_cookie(driver)["value"]
    # A second device of dave's: an API client.
    token = api_sign_in(live_server, "dave")

    def forger(environ: t.Any, start_response: t.Any) -> list[bytes]:
        action = live_server + environ["PATH_INFO"]
        start_response("200 OK", [("Content-Type", "text/html")])
        return [FORGED_PAGE.format(action=action).encode()]

    # Another port of the same host: the same site, so the SameSite=Lax
    # session cookie goes along with the forged posts.
    with serve(forger, "forger") as other_origin:
        for path in ("/logout", "/devices/revoke-others"):
            driver.get(f"{other_origin}{path}")
            wait_for_url(driver, f"{live_server}{path}")
            # The refusal's page, once it has loaded in place of the forger's.
            wait_until(driver, lambda d: "Forbidden" in d.page_source)

    driver.get(f"{live_server}/")
    wait_for_text(driver, "status", "Signed in as dave.")
    assert session_cookie(driver)["value"] == signed_in
    driver.get(f"{live_server}/devices")
    assert len(devices(driver)) == 2
    assert api_cart(live_server, token) == {"user": "dave", "cart": []}


def wait_for_url(driver: t.Any, url: str) -> None:
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(driver, WAIT_SECONDS).until(expected_conditions.url_to_be(url))


def wait_until(driver: t.Any, condition: t.Callable[[t.Any], t.Any]) -> None:
    """Poll ``condition`` until it holds; a page that is still loading is polled again."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.wait import WebDriverWait

    wait = WebDriverWait(driver, WAIT_SECONDS, ignored_exceptions=(WebDriverException,))
    wait.until(condition)


def api_sign_in(base: str, username: str) -> str:
    request = urllib.request.Request(
        f"{base}/api/login",
        data=json.dumps({"username": username}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as response:
        return t.cast(str, json.load(response)["token"])


def api_cart(base: str, token: str) -> t.Any:
    request = urllib.request.Request(f"{base}/api/cart", headers={"X-Session-Token": token})
    with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as response:
        return json.load(response)


def storage_key(driver: t.Any, base: str) -> str:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/session")
    return t.cast(str, driver.find_element(By.ID, "storage-key").text)


def devices(driver: t.Any) -> dict[str, str]:
    """The rows of the devices page: storage key -> the row's text."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#devices tr.device")
    return {row.get_attribute("id").removeprefix("device-"): row.text for row in rows}


def device_title(driver: t.Any, key: str) -> str:
    """The whole User-Agent that the devices page shows on hover for session ``key``."""
    from selenium.webdriver.common.by import By

    cell = driver.find_element(By.CSS_SELECTOR, f"#device-{key} td.user-agent")
    return t.cast(str, cell.get_attribute("title"))


def post_form(driver: t.Any, path: str, **fields: str) -> int:
    """Post a form from the page open in the browser, as its own script would; return the status."""
    script = (
        "return fetch(arguments[0], {method: 'POST', body: new URLSearchParams(arguments[1])})"
        ".then(response => response.status);"
    )
    return t.cast(int, driver.execute_script(script, path, fields))


def flashed(driver: t.Any, message: str) -> None:
    wait_until(driver, lambda d: message in d.page_source)


def test_your_devices_signs_out_another_browser(live_server: str, browsers: Browsers) -> None:
    first = browsers.start("first")
    second = browsers.start("second")
    sign_in(first, live_server, "erin")
    sign_in(second, live_server, "erin")
    first_key = storage_key(first, live_server)
    second_key = storage_key(second, live_server)

    first.get(f"{live_server}/devices")
    rows = devices(first)
    assert set(rows) == {first_key, second_key}
    assert "This device" in rows[first_key]
    assert "This device" not in rows[second_key]
    # The client of each session is the one that signed in with it: a short
    # name in the table, the whole User-Agent on hover.
    assert "Chrome on Linux" in rows[second_key]
    assert device_title(first, second_key) == second.execute_script("return navigator.userAgent")
    assert "127.0.0.1" in rows[second_key]

    press(first, f"revoke-{second_key}")
    flashed(first, "Signed out that device.")
    assert set(devices(first)) == {first_key}
    second.get(f"{live_server}/")
    wait_for_text(second, "status", "You are not signed in.")

    # Another user's session is not erin's to end, even posted from her own pages.
    sign_in(second, live_server, "frank")
    frank_key = storage_key(second, live_server)
    assert post_form(first, "/devices/revoke", storage_key=frank_key) == 404
    second.get(f"{live_server}/")
    wait_for_text(second, "status", "Signed in as frank.")

    # Signing in as erin moves the session over to her.
    sign_in(second, live_server, "erin")
    first.get(f"{live_server}/devices")
    assert len(devices(first)) == 2
    press(first, "revoke-others")
    flashed(first, "Signed out 1 other device.")
    assert set(devices(first)) == {first_key}
    second.get(f"{live_server}/")
    wait_for_text(second, "status", "You are not signed in.")
    first.get(f"{live_server}/")
    wait_for_text(first, "status", "Signed in as erin.")


# User-Agents as long as real browsers send, for sessions signed in from elsewhere.
OTHER_DEVICES = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.86",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
)


def sign_in_from(base: str, username: str, user_agent: str) -> None:
    """Sign in as a browser elsewhere would, with its own User-Agent."""
    request = urllib.request.Request(
        f"{base}/login",
        data=urllib.parse.urlencode({"username": username}).encode(),
        headers={"User-Agent": user_agent},
    )
    with urllib.request.urlopen(request, timeout=WAIT_SECONDS):
        pass


def test_the_devices_page_with_four_sessions_keeps_every_button_on_one_line(
    live_server: str, driver: t.Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    for user_agent in OTHER_DEVICES:
        sign_in_from(live_server, "grace", user_agent)
    driver.set_window_size(1024, 768)
    sign_in(driver, live_server, "grace")
    driver.get(f"{live_server}/devices")
    rows = devices(driver)
    assert len(rows) == 4
    shown = sorted(row.split("\n")[0].split(" 20")[0] for row in rows.values())
    assert shown == ["Chrome on Linux", "Edge on Windows", "Firefox on Linux", "Safari on iOS"]
    screenshot = tmp_path / "devices.png"
    driver.save_screenshot(str(screenshot))
    print(f"Screenshot of the devices page: {screenshot}")
    buttons = driver.find_elements(By.CSS_SELECTOR, "#devices button, #revoke-others")
    assert len(buttons) == 4
    # A button whose label wraps has its text on more than one line box.
    script = (
        "const range = document.createRange(); range.selectNodeContents(arguments[0]);"
        " return range.getClientRects().length;"
    )
    assert [driver.execute_script(script, button) for button in buttons] == [1, 1, 1, 1]
    table = driver.find_element(By.ID, "devices").rect
    other = driver.find_element(By.ID, "revoke-others").rect
    assert other["y"] >= table["y"] + table["height"] + 8, "the button sits against the table"


def test_two_tabs_stay_signed_in_across_a_rotation(tmp_path: Path, driver: t.Any) -> None:
    rotating = {"SERVERSESSION_ROTATE_EVERY": timedelta(minutes=15)}
    app = create_app(rotating, instance_path=str(tmp_path / "instance"))
    clock = Clock()
    store_of(app).clock = clock
    with serve(app, "example-app-rotating") as base:
        sign_in(driver, base, "alice")
        driver.get(f"{base}/cart")
        submit(driver, "item", "apple", "add")
        wait_for_text(driver, "cart", "apple")
        first_tab = driver.current_window_handle
        driver.switch_to.new_window("tab")
        second_tab = driver.current_window_handle
        driver.get(f"{base}/cart")
        wait_for_text(driver, "cart", "apple")
        before = session_cookie(driver)["value"]

        # The second tab's write is the first request past the id's age: it rotates.
        clock.advance(minutes=16)
        submit(driver, "item", "pear", "add")
        wait_for_text(driver, "cart", "pear")
        after = session_cookie(driver)["value"]
        assert after != before

        # The first tab, loaded before the rotation, writes and sees both writes.
        driver.switch_to.window(first_tab)
        submit(driver, "item", "lamp", "add")
        wait_for_text(driver, "cart", "lamp")
        assert cart_items(driver) == ["apple", "pear", "lamp"]
        driver.switch_to.window(second_tab)
        driver.refresh()
        wait_for_text(driver, "cart", "lamp")
        assert cart_items(driver) == ["apple", "pear", "lamp"]
        driver.get(f"{base}/")
        wait_for_text(driver, "status", "Signed in as alice.")
        assert session_cookie(driver)["value"] == after
        with app.app_context():
            assert store_of(app).count() == 1

        # Within the grace the old token still opens the session (a response
        # that never reached the browser); a copy of it used after that ends it.
        assert "Signed in as <strong>alice</strong>." in page_with_cookie(f"{base}/", before)
        clock.advance(minutes=2)
        assert "You are not signed in." in page_with_cookie(f"{base}/", before)
        driver.switch_to.window(first_tab)
        driver.get(f"{base}/")
        wait_for_text(driver, "status", "You are not signed in.")
    app.extensions["serversession"].backend.close()
