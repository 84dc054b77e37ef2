"""How a failed Redis command reaches the store: a BackendError that says what failed."""

from __future__ import annotations

import typing as t

from ...errors import BackendError


class Failures:
    """A context in which a Redis client error becomes a BackendError.

    It surrounds every command, so it is a plain class: a generator-based
    context manager costs several times as much to enter and leave.

    :param action: what was being done, e.g. ``"load a session"``.
    :param errors: the client library's error classes.
    """

    __slots__ = ("action", "errors")

    def __init__(self, action: str, errors: tuple[type[Exception], ...]) -> None:
        self.action = action
        self.errors = errors

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: t.Any
    ) -> None:
        if isinstance(error, self.errors):
            message = f"Redis failed to {self.action}: {type(error).__name__}: {error}"
            raise BackendError(message) from error
