from __future__ import annotations

import typing as t

from ..config import DEFAULTS
from ..unknown_keys import unknown_keys
from . import Finding

if t.TYPE_CHECKING:
    from flask import Flask


def check_keys(app: Flask) -> t.Iterator[Finding]:
    """One finding for each ``SERVERSESSION_*``-like key that no setting has."""
    for found in unknown_keys(app.config, DEFAULTS):
        yield Finding(
            "serversession.E018",
            found.key,
            None,
            "No setting has this name, so it is not read: the setting meant keeps its default"
            " (a misspelled store setting sends every session to the default store).",
            found.advice(),
        )
