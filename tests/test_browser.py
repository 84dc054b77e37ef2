"""The example app in headless Chromium: sign in, cart, tabs, sign out, cookie flags."""

from __future__ import annotations

import os
import threading
import typing as t
import urllib.request
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from example_app import create_app

from .conftest import server_unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_SECONDS = 10


@pytest.fixture
def live_server(tmp_path: Path) -> t.Iterator[str]:
    """Serve the example app, with its default SQLite store, on a free loopback port."""
    app = create_app(instance_path=str(tmp_path / "instance"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="example-app", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        app.extensions["serversession"].backend.close()


@pytest.fixture
def driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[t.Any]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            server_unavailable(f"{path} is missing: install chromium and chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        server_unavailable("selenium is not installed")

    # Both paths are given, so selenium-manager has nothing to look up; offline
    # mode makes sure it never downloads a browser or driver anyway.
    monkeypatch.setenv("SE_OFFLINE", "true")
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
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    try:
        browser = webdriver.Chrome(options=options, service=service)
    except Exception as e:
        server_unavailable(f"Chromium did not start: {e}")
    browser.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield browser
    finally:
        browser.quit()


def wait_for_text(driver: t.Any, element_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    condition = expected_conditions.text_to_be_present_in_element((By.ID, element_id), text)
    WebDriverWait(driver, WAIT_SECONDS).until(condition)


def submit(driver: t.Any, field_id: str, value: str, button_id: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, field_id).send_keys(value)
    driver.find_element(By.ID, button_id).click()


def cart_items(driver: t.Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#cart li")]


def page_with_cookie(url: str, value: str) -> str:
    request = urllib.request.Request(url, headers={"Cookie": f"session={value}"})
    with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as response:
        return t.cast(str, response.read().decode())


def test_sign_in_cart_tabs_and_sign_out(
    live_server: str, driver: t.Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from selenium.webdriver.common.by import By

    try:
        driver.get(f"{live_server}/")
        wait_for_text(driver, "status", "You are not signed in.")

        driver.get(f"{live_server}/login")
        submit(driver, "username", "alice", "sign-in")
        wait_for_text(driver, "status", "Signed in as alice.")

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

        driver.find_element(By.ID, "logout").click()
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
    except BaseException:
        screenshot = tmp_path / f"{request.node.name}.png"
        driver.save_screenshot(str(screenshot))
        print(f"Screenshot of the failure: {screenshot}")
        raise
