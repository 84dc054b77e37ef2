from __future__ import annotations

import importlib
import types

from .errors import ConfigError

#: The extra of the package that installs each optional module.
EXTRAS = {
    "redis": "redis",
    "valkey": "valkey",
    "flask_sqlalchemy": "flask-sqlalchemy",
    "psycopg": "postgres",
    "msgspec": "adopt",
    "jwt": "device-bound",
    "cryptography": "encryption",
    "prometheus_client": "prometheus",
    "opentelemetry.metrics": "opentelemetry",
}


def install_command(module: str) -> str:
    """The command that installs ``module`` with the package, quoted for every shell."""
    return f"pip install 'Flask-ServerSession[{EXTRAS[module]}]'"


def require(module: str, *, key: str, value: object) -> types.ModuleType:
    """Import the optional ``module`` that ``key = value`` needs.

    Every optional import of the package is made here first, so a missing
    one says which setting needs it and how to install it rather than
    failing deep inside a backend.

    :raises ConfigError: the module, or one it imports, is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"{key} = {value!r} needs the {module} package, which is not installed"
            f" ({e}). Install it with: {install_command(module)}"
        ) from e
