"""Device Bound Session Credentials (``SERVERSESSION_DEVICE_BOUND``).

.. versionadded:: 0.3
"""

from __future__ import annotations

import typing as t

from ..errors import ConfigError
from ..extras import install_command
from ..extras import require

if t.TYPE_CHECKING:
    from flask import Flask

    from ..adoption import Adopter
    from ..store import SessionStore


def install(
    app: Flask,
    store: SessionStore,
    *,
    adopter: Adopter | None,
    secret_keys: t.Callable[[], t.Sequence[str | bytes]],
) -> None:
    """Give ``app`` the device-bound session interface and the DBSC endpoints.

    :raises ConfigError: PyJWT, or the cryptography package it verifies with,
        is not installed.
    """
    jwt = require("jwt", key="SERVERSESSION_DEVICE_BOUND", value=True)
    if not jwt.algorithms.has_crypto:
        raise ConfigError(
            "SERVERSESSION_DEVICE_BOUND = True needs the cryptography package to verify"
            f" ES256 and RS256 signatures. Install it with: {install_command('jwt')}"
        )
    # Imported here: an app without device binding never loads PyJWT.
    from ..binding import Signer
    from .blueprint import blueprint
    from .interface import DeviceBoundInterface

    interface = DeviceBoundInterface(store, adopter=adopter, signer=Signer(secret_keys))
    app.session_interface = interface
    app.register_blueprint(blueprint(interface.devices))
