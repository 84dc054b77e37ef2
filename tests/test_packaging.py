from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What the sdist ships beside the package, so a packager can build the docs and run the
#: tests and tox (whose style env lints the benchmarks), as the README says.
SHIPPED = ("docs", "example_app", "tests", "benchmarks", ".ci")
#: Caches and build output, which the sdist leaves out.
LEFT_OUT = (
    ".git",
    ".tox",
    "__pycache__",
    "*.py[cod]",
    "*.sqlite",
    "*.egg-info",
    "_build",
    "instance",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".benchmarks",
    "build",
    "dist",
)


def files_under(root: Path, folder: str) -> set[str]:
    """The files of ``folder`` that belong in the sdist, relative to ``root``."""
    return {
        path.relative_to(root).as_posix()
        for path in (root / folder).rglob("*")
        if path.is_file()
        and not any(fnmatch(part, p) for part in path.relative_to(root).parts for p in LEFT_OUT)
    }


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, set[str], Path]:
    """Build the sdist from a copy of the source tree; return the build's output, names, path."""
    pytest.importorskip("build")
    work = tmp_path_factory.mktemp("sdist")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LEFT_OUT))
    built = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = built.stdout + built.stderr
    assert built.returncode == 0, output
    (archive,) = (work / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        tar.extractall(work, filter="data")
    return output, names, work / top / "PKG-INFO"


def test_the_build_prints_no_deprecation(sdist: tuple[str, set[str], Path]) -> None:
    output, _names, _info = sdist
    assert "License classifiers are deprecated" not in output
    assert "Deprecat" not in output


def test_the_sdist_ships_docs_changes_example_app_and_every_test_file(
    sdist: tuple[str, set[str], Path],
) -> None:
    _output, names, _info = sdist
    assert {"CHANGES.md", "README.md", "LICENSE", "setup.cfg", "pyproject.toml", "tox.ini"} <= names
    for folder in SHIPPED:
        expected = files_under(ROOT, folder)
        assert expected, folder
        assert expected <= names, sorted(expected - names)
    assert {"tests/conftest.py", "tests/strategies.py", "tests/support/postgres.py"} <= names
    assert not {n for n in names if "__pycache__" in n or n.endswith((".pyc", ".sqlite"))}


def test_the_metadata_names_authors_and_python_versions(sdist: tuple[str, set[str], Path]) -> None:
    _output, _names, info = sdist
    metadata = email.parser.Parser().parsestr(info.read_text())
    assert metadata["Author"] == "Flask-ServerSession contributors"
    assert metadata["Maintainer"] == "Flask-ServerSession maintainers"
    assert metadata["Requires-Python"] == ">=3.10"
    classifiers = metadata.get_all("Classifier")
    assert not [c for c in classifiers if c.startswith("License ::")]
    assert "Programming Language :: Python :: 3.10" in classifiers
    assert metadata.get("License-Expression", metadata["License"]) == "BSD-3-Clause"


def test_one_version_everywhere() -> None:
    from flask_serversession import __version__

    assert __version__ == "0.3.0"
    changes = (ROOT / "CHANGES.md").read_text(encoding="utf-8")
    sections = [line for line in changes.splitlines() if line.startswith("## ")]
    assert sections[0] == f"## Version {__version__}"
    assert sections.count(f"## Version {__version__}") == 1
    assert "Unreleased" not in changes
    wheel = f"flask_serversession-{__version__}-py3-none-any.whl"
    for page in ("README.md", "docs/quickstart.rst"):
        text = (ROOT / page).read_text(encoding="utf-8")
        assert wheel in text, page
        assert set(re.findall(r"flask_serversession-[0-9.]+-py3-", text)) == {wheel[:-12]}, page
        assert f"{__version__[:3]} is not on the package index yet" in text, page
    # No note announces a version past the one being prepared.
    notes = {
        match
        for path in [*(ROOT / "docs").glob("*.rst"), *(ROOT / "flask_serversession").rglob("*.py")]
        for match in re.findall(r"version(?:added|changed):: (\S+)", path.read_text("utf-8"))
    }
    assert max(notes, key=lambda v: tuple(map(int, v.split(".")))) == __version__[:3]


def test_the_upgrade_notes_have_their_own_page() -> None:
    page = (ROOT / "docs" / "upgrading.rst").read_text(encoding="utf-8")
    assert "From 0.2 to 0.3" in page and "From 0.1" in page
    assert "Upgrading from 0.1" not in (ROOT / "docs" / "production.rst").read_text("utf-8")
    assert "   upgrading\n" in (ROOT / "docs" / "index.rst").read_text(encoding="utf-8")


def test_the_unpacked_sdist_runs_its_tests_through_tox(sdist: tuple[str, set[str], Path]) -> None:
    _output, _names, info = sdist
    unpacked = info.parent
    config = subprocess.run(
        [sys.executable, "-m", "tox", "config", "-e", "py", "-k", "commands"],
        cwd=unpacked,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    assert "pytest -v -rs" in config.stdout, config.stdout
    # The tests it would run are there and pass from the unpacked tree itself.
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "tests/test_config.py"],
        cwd=unpacked,
        env={**os.environ, "PYTHONPATH": str(unpacked)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert re.search(r"\b[1-9][0-9]* passed", ran.stdout), ran.stdout[-500:]
