"""Flask's own session tests, from the sdist of the installed Flask, with ServerSession
installed on every app they build (tests/flask_suite/plugin.py), on three backends.

The tests that fail are exactly the differences docs/migrating.rst lists as by design.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
import typing as t
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .conftest import server_unavailable

HERE = Path(__file__).parent

#: Flask's session tests that fail by design, each with the line of
#: docs/migrating.rst ("Flask's own session tests") that says why.
BY_DESIGN = {
    # The cookie is sent when the session is written or renewed, as the
    # renewal settings say, not on every request (SESSION_REFRESH_EACH_REQUEST).
    "test_session_cookie_setting",
    "test_session_refresh_vary",
    # Assigning a value equal to the stored one changes nothing: no write, no cookie.
    "test_session_using_samesite_attribute",
    # A permanent session lasts SERVERSESSION_EXPIRE_TIME (24 hours), not
    # Flask's default PERMANENT_SESSION_LIFETIME of 31 days.
    "test_session_expiration",
}


@pytest.fixture(scope="module")
def flask_tests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tests`` directory of the installed Flask's sdist, downloaded from the index."""
    version = importlib.metadata.version("flask")
    scratch = tmp_path_factory.mktemp("flask-sdist")
    command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
    download = subprocess.run(
        [*command, "--quiet", "--dest", str(scratch), f"flask=={version}"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    archives = list(scratch.glob("flask-*.tar.gz"))
    if download.returncode != 0 or not archives:
        server_unavailable(f"could not download Flask {version}'s sdist: {download.stderr[-500:]}")
    with tarfile.open(archives[0]) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(scratch, filter="data")
        else:  # Pythons before the extraction filters
            archive.extractall(scratch)
    return scratch / f"flask-{version}"


def failures(flask_root: Path, backend: str, **env: str) -> tuple[int, set[str]]:
    """Run Flask's ``test_basic.py -k session`` on ``backend``; return how many ran and failed."""
    report = flask_root / f"report-{backend}.xml"
    environment = {
        **os.environ,
        **env,
        "FLASK_SUITE_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join([str(HERE / "flask_suite"), str(HERE.parent)]),
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:flask"]
    subprocess.run(
        [*command, "-p", "plugin", "tests/test_basic.py", "-k", "session", f"--junitxml={report}"],
        cwd=flask_root,
        env=environment,
        capture_output=True,
        timeout=300,
        check=False,
    )
    cases = ET.parse(report).getroot().iter("testcase")
    ran, failed = 0, set()
    for case in cases:
        ran += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(case.get("name", "?"))
    return ran, failed


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_flask_session_tests_pass_but_the_documented_differences(
    flask_tests: Path, backend: str
) -> None:
    ran, failed = failures(flask_tests, backend)
    assert ran >= 10
    assert failed == BY_DESIGN


def test_flask_session_tests_on_redis(flask_tests: Path, redis_server: t.Any) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    ran, failed = failures(flask_tests, "redis", FLASK_SUITE_REDIS_URL=url)
    assert ran >= 10
    assert failed == BY_DESIGN
