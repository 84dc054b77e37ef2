"""The rotation signals a test records: the ``events`` fixture (imported by conftest)."""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from flask_serversession import signals


class Events:
    """Records the rotation signals."""

    def __init__(self) -> None:
        self.rotated: list[dict[str, str]] = []
        self.reused: list[dict[str, str]] = []

    def on_rotated(self, sender: Flask, **kwargs: str) -> None:
        self.rotated.append(kwargs)

    def on_reused(self, sender: Flask, **kwargs: str) -> None:
        self.reused.append(kwargs)


@pytest.fixture
def events() -> t.Iterator[Events]:
    recorded = Events()
    signals.session_rotated.connect(recorded.on_rotated)
    signals.session_token_reused.connect(recorded.on_reused)
    yield recorded
    signals.session_rotated.disconnect(recorded.on_rotated)
    signals.session_token_reused.disconnect(recorded.on_reused)
