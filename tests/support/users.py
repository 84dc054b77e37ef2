from __future__ import annotations

import pytest

from flask_serversession.backends.base import Backend


def needs_user_index(backend: Backend) -> None:
    """Skip, naming the backend, when it does not keep a user index yet."""
    if type(backend).user_records is Backend.user_records:
        pytest.skip(f"{type(backend).__name__} keeps no user index (no user_records)")
