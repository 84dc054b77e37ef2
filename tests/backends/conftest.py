"""Fixtures of the filesystem backend's test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from flask_serversession.backends.filesystem import FileSystemBackend


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Where the filesystem backend of a test keeps its sessions (not made yet)."""
    return tmp_path / "sessions"


@pytest.fixture
def fs(root: Path) -> FileSystemBackend:
    return FileSystemBackend(root)
