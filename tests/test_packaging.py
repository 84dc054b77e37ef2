from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import tarfile
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What the sdist ships beside the package, so a packager can build the docs and run the tests.
SHIPPED = ("docs", "example_app", "tests")
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
        tar.extract(f"{top}/PKG-INFO", work, filter="data")
    return output, names, work / top / "PKG-INFO"


def test_the_build_prints_no_deprecation(sdist: tuple[str, set[str], Path]) -> None:
    output, _names, _info = sdist
    assert "License classifiers are deprecated" not in output
    assert "Deprecat" not in output


def test_the_sdist_ships_docs_changes_example_app_and_every_test_file(
    sdist: tuple[str, set[str], Path],
) -> None:
    _output, names, _info = sdist
    assert {"CHANGES.md", "README.md", "LICENSE", "setup.cfg", "pyproject.toml"} <= names
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
