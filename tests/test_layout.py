"""The package's structure: short modules, layers that only import downwards, no circles.

CONTRIBUTING.md draws the layers; pyproject.toml holds them as import-linter
contracts, which ``lint-imports`` checks (the tox ``style`` env runs it).
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flask_serversession"
LONGEST_MODULE = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports anywhere: type-only and in functions too."""
    found = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                stem = ".".join([*base, *([node.module] if node.module else [])])
            else:
                stem = node.module or ""
            targets = [stem, *(f"{stem}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            # A module that imports a package it belongs to reads that package's names.
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports in ``graph``, as the modules along it, or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        pending = [iter(sorted(graph[start]))]
        while pending:
            following = next(pending[-1], None)
            if following is None:
                pending.pop()
                done.add(path.pop())
            elif following in path:
                return [*path[path.index(following) :], following]
            elif following not in done:
                path.append(following)
                pending.append(iter(sorted(graph[following])))
    return None


def test_backend_helpers_never_import_the_backend_they_serve() -> None:
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    backends = [name for name in MODULES if name.startswith(f"{PACKAGE.name}.backends.")]
    for backend in (name for name in backends if name.endswith(".backend")):
        package = backend.rpartition(".")[0]
        importers = {name for name in backends if backend in graph[name]}
        assert importers <= {package}, f"{sorted(importers - {package})} import {backend}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_passes_the_line_limit(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= LONGEST_MODULE, f"{name} has {lines} lines; split it by concern"


def test_no_import_circles() -> None:
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or ())


def test_a_circle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_circle(graph) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_every_module_has_a_layer() -> None:
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    [layers] = [
        contract["layers"]
        for contract in config["tool"]["importlinter"]["contracts"]
        if contract["type"] == "layers"
    ]
    placed = {
        name.strip().strip("()") for layer in layers for name in layer.replace("|", ":").split(":")
    }
    top_level = {name.split(".")[1] for name in MODULES if name.count(".") >= 1}
    assert top_level - placed == set(), "give each module a layer in pyproject.toml"


@pytest.mark.skipif(
    importlib.util.find_spec("importlinter") is None, reason="import-linter is not installed"
)
def test_import_contracts_are_kept() -> None:
    run = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports("
    result = subprocess.run(
        [sys.executable, "-c", run + "no_cache=True, no_logo=True))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_paths_of_0_2_keep_working() -> None:
    from flask_serversession.backends import Delta
    from flask_serversession.backends import Record
    from flask_serversession.backends.base import check_size
    from flask_serversession.backends.base import Delta as BaseDelta
    from flask_serversession.backends.base import Record as BaseRecord
    from flask_serversession.backends.filesystem import FileSystemBackend
    from flask_serversession.backends.memory import MemoryBackend
    from flask_serversession.backends.redis import RedisBackend
    from flask_serversession.backends.sql import make_table as sql_make_table
    from flask_serversession.backends.sql import SQLAlchemyBackend as SQLBackend
    from flask_serversession.backends.sqlalchemy import make_table
    from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend

    assert (SQLAlchemyBackend, make_table) == (SQLBackend, sql_make_table)
    assert (Delta, Record) == (BaseDelta, BaseRecord)
    assert callable(check_size)
    assert all(
        c.__name__.endswith("Backend") for c in (FileSystemBackend, MemoryBackend, RedisBackend)
    )
