from __future__ import annotations

from werkzeug.exceptions import ServiceUnavailable


class ServerSessionError(Exception):
    """Base class for every error raised by Flask-ServerSession."""


class SessionNotFoundError(ServerSessionError):
    """The token is malformed, badly signed, or names no stored session."""


class SessionExpiredError(ServerSessionError):
    """The token names a session whose lifetime has ended."""


class SessionTooLargeError(ServerSessionError):
    """The serialized session is larger than ``SERVERSESSION_MAX_SIZE``."""


class ConfigError(ServerSessionError, ValueError):
    """A configuration value is missing, of the wrong type, or unusable."""


class BackendError(ServerSessionError, ServiceUnavailable):
    """The session store is unreachable or failing.

    It is also a werkzeug ``ServiceUnavailable``, so an unhandled one answers
    503. The detailed message stays in the exception and the log; the client
    sees only the generic 503 description.
    """

    def __init__(self, message: str) -> None:
        ServiceUnavailable.__init__(self)
        self.message = message
        self.args = (message,)

    def __str__(self) -> str:
        return self.message
