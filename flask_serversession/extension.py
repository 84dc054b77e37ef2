from __future__ import annotations

import typing as t
from datetime import datetime
from datetime import timedelta
from functools import partial

from flask import current_app
from flask import Flask

from .backend_config import build_backend
from .backends.base import Backend
from .backends.encrypted import EncryptedBackend
from .cli import cli
from .config import read_metrics
from .config import read_settings
from .config import Settings
from .interface import ServerSessionInterface
from .prefixes import check_cookie_prefix
from .purging import EXTENSION_KEY as PURGER_KEY
from .purging import purger_of
from .purging import seconds
from .session import current_storage_key
from .store import SessionStore
from .users import require_index
from .users import SessionInfo

if t.TYPE_CHECKING:
    from .adoption import Adopter


def _secret_keys(app: Flask) -> list[str | bytes]:
    """The app's signing keys, oldest first, read anew as Flask reads its own."""
    return [*(app.config.get("SECRET_KEY_FALLBACKS") or ()), app.secret_key or ""]


def _adopter(app: Flask, settings: Settings) -> Adopter | None:
    """The take-over of old sessions that ``SERVERSESSION_ADOPT_*`` ask for, if any."""
    if not (settings.adopt_cookie_sessions or settings.adopt_flask_session):
        return None
    from .adoption import build_adopter

    return build_adopter(
        app,
        cookie_sessions=settings.adopt_cookie_sessions,
        flask_session=settings.adopt_flask_session,
    )


class ServerSession:
    """Keep Flask's session on the server; the client holds only a signed token.

    Call :meth:`init_app` (or pass the app here) to install the session
    interface, the ``flask serversession`` commands and the backend chosen by
    ``SERVERSESSION_BACKEND``. One instance may serve many apps.

    :param app: the app to set up now, or None to call :meth:`init_app` later.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the config of ``app`` and install server-side sessions on it.

        Contacts no server: an unreachable backend shows up on first use.

        :raises ConfigError: a ``SERVERSESSION_*`` value is not usable.
        """
        if "serversession" in app.extensions:
            raise RuntimeError(
                "A 'ServerSession' instance has already been registered on this Flask app."
                " Import and use that instance instead."
            )
        settings = read_settings(app)
        check_cookie_prefix(app)
        adopter = _adopter(app, settings)
        backend = build_backend(app)
        metrics = read_metrics(app.config)
        if metrics is not None:
            from .metrics import install as install_metrics

            backend = install_metrics(
                app, backend, *metrics, revoke_on_reuse=settings.revoke_on_reuse
            )
        if app.config["SERVERSESSION_MIGRATE_FROM"] is not None:
            from .migration import with_old_store

            backend = with_old_store(app, backend, settings.user_key)
        require_index(backend, settings.user_key)
        if settings.encryption is not None:
            backend = EncryptedBackend(backend, settings.encryption, settings.max_size)
        store = SessionStore(backend, settings, secret_keys=partial(_secret_keys, app))
        app.extensions["serversession"] = store
        app.session_interface = ServerSessionInterface(store, adopter=adopter)
        if settings.device_bound:
            from .device_bound import install

            install(app, store, adopter=adopter, secret_keys=partial(_secret_keys, app))
        app.cli.add_command(cli)
        if settings.purge_interval:
            # Started by the first request of each process, not here: a
            # thread started now would not survive a forking server's fork.
            purger_of(app).enable(settings.purge_interval.total_seconds())

    def _get_store(self) -> SessionStore:
        return self._store_of(current_app)

    @staticmethod
    def _store_of(app: Flask) -> SessionStore:
        try:
            return app.extensions["serversession"]  # type: ignore[no-any-return]
        except KeyError:
            raise RuntimeError(
                f"The Flask app {app.name!r} is not registered with this 'ServerSession' instance."
                " Did you forget to call 'init_app'?"
            ) from None

    @property
    def backend(self) -> Backend:
        """The backend of the current app, e.g. for ``backend.table`` of the SQL one."""
        return self._get_store().backend

    def create(self, data: t.Mapping[str, t.Any]) -> str:
        """Store a new session holding ``data``; return its token."""
        return self._get_store().create(data)

    def get(self, token: str) -> dict[str, t.Any]:
        """Return a copy of the data of the live session ``token`` names.

        :raises SessionNotFoundError: the token is garbage, badly signed or unknown.
        :raises SessionExpiredError: the session has expired.
        """
        return self._get_store().get(token)

    def update(self, token: str, data: t.Mapping[str, t.Any]) -> None:
        """Replace the data of a live session, renewing it."""
        self._get_store().update(token, data)

    def renew(self, token: str) -> datetime:
        """Push the expiry of a live session as a renewal would; return it."""
        return self._get_store().renew(token)

    def delete(self, token: str) -> None:
        """Delete the session ``token`` names.

        :raises SessionNotFoundError: the token is garbage or names no session.
        """
        self._get_store().delete(token)

    def purge_expired(self) -> int:
        """Remove expired sessions; return how many were removed."""
        return self._get_store().purge_expired()

    def start_purging(self, app: Flask, interval: timedelta | float | None = None) -> None:
        """Purge the expired sessions of ``app`` every ``interval``, from a thread.

        The daemon thread starts now in this process, and on the first
        request of any process forked from it later. Calling it again while
        the thread runs starts no second thread; a different ``interval``
        replaces the old one from now on.

        :param app: the app whose sessions are purged.
        :param interval: a ``timedelta`` or a number of seconds;
            ``SERVERSESSION_PURGE_INTERVAL`` when None.
        :raises ValueError: the interval is not positive.

        .. versionadded:: 0.2
        """
        store = self._store_of(app)
        if interval is None:
            interval = store.settings.purge_interval
            if not interval:
                raise ValueError("No purge interval: pass one or set SERVERSESSION_PURGE_INTERVAL.")
        purger_of(app).start(seconds(interval))

    def stop_purging(self, app: Flask, *, timeout: float | None = None) -> None:
        """Stop the timed purge of ``app`` in this process and wait for its thread to end.

        The wait between purges ends at once; only a purge in progress is
        waited for. Requests do not start it again; :meth:`start_purging` does.

        :param app: the app whose timed purge stops.
        :param timeout: wait at most this many seconds for a purge in
            progress; the thread ends after it all the same.

        .. versionadded:: 0.2
        """
        self._store_of(app)
        purger = app.extensions.get(PURGER_KEY)
        if purger is not None:
            purger.stop(timeout)

    def count(self) -> int:
        """Return the number of live sessions."""
        return self._get_store().count()

    def items(self) -> t.Iterator[tuple[str, dict[str, t.Any]]]:
        """Yield ``(storage key, data)`` for each live session."""
        return self._get_store().items()

    def clear(self) -> int:
        """Remove every session; return how many were removed."""
        return self._get_store().clear()

    def user_sessions(self, user_id: str | int) -> list[SessionInfo]:
        """Return the live sessions of a user, newest first.

        The user is the value stored under ``SERVERSESSION_USER_KEY``;
        ``123`` and ``"123"`` are the same user. Inside a request, the
        request's own session is marked ``current``.

        :raises ConfigError: ``SERVERSESSION_USER_KEY`` is not set.

        .. versionadded:: 0.2
        """
        return self._get_store().users.sessions(user_id, current=current_storage_key)

    def revoke(self, storage_key: str) -> bool:
        """End one session, given its storage key as :meth:`user_sessions` lists it.

        The session's next request starts a fresh, empty session, and a
        request of it that is still running cannot bring it back. Sends
        :data:`~flask_serversession.signals.session_revoked`.

        :return: whether a live session was stored under ``storage_key``.

        .. versionadded:: 0.2
        """
        return self._get_store().users.revoke(storage_key)

    def revoke_user(self, user_id: str | int, *, keep_current: bool = True) -> int:
        """End every session of a user ("sign out everywhere"); return how many.

        :param keep_current: inside a request of that user, keep the
            request's own session ("sign out everywhere else").
        :raises ConfigError: ``SERVERSESSION_USER_KEY`` is not set.

        .. versionadded:: 0.2
        """
        users = self._get_store().users
        return users.revoke_user(user_id, keep_current=keep_current, current=current_storage_key)
