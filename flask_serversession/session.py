from __future__ import annotations

import copy
import typing as t
from datetime import datetime
from datetime import timedelta

from flask import current_app
from flask import has_request_context
from flask import request
from flask import session as flask_session
from flask.sessions import SessionMixin

from . import rotation
from .lifetime import checked_lifetime
from .signals import send
from .signals import session_token_rejected
from .stored import Opened
from .stored import StoredSession

if t.TYPE_CHECKING:
    from .adoption import Adoption
    from .store import SessionStore


def in_socketio_event() -> bool:
    """Whether the current request context runs a Flask-SocketIO event, which sends no cookie."""
    if not has_request_context():
        return False
    # The request itself rather than the proxy, which raises inside for a
    # missing attribute: this runs on every save.
    current = request._get_current_object()  # type: ignore[attr-defined]
    return getattr(current, "sid", None) is not None and getattr(current, "event", None) is not None


def in_connected_socketio_event() -> bool:
    """Whether the request runs a Socket.IO event of a connection made before it.

    Such a connection keeps the token it was made with; its connect
    handler, which a new cookie may reach first, is not one.
    """
    if not in_socketio_event():
        return False
    event = request.event  # type: ignore[attr-defined]
    return not (isinstance(event, dict) and event.get("message") == "connect")


def current_storage_key() -> str | None:
    """The storage key of the request's own session, if it has a stored one."""
    if not has_request_context():
        return None
    session = flask_session._get_current_object()  # type: ignore[attr-defined]
    return session.storage_key if isinstance(session, ServerSideSession) else None


Loader = t.Callable[[], Opened]
ChangeCheck = t.Callable[["ServerSideSession"], bool]

_MISSING: t.Any = object()


class ServerSideSession(dict[str, t.Any], SessionMixin):
    """The session of one request: a dict loaded from the store on first use.

    Creating it costs nothing; the first access of any kind loads the stored
    data. Changes are found by comparing each value with what was loaded, so
    nested changes such as ``session["cart"].append(x)`` are saved, and show
    in :attr:`modified`, without setting it by hand.

    A copy (``copy.copy``, ``copy.deepcopy``, ``pickle``) is a plain ``dict``
    of the data: a snapshot that carries no link to the store.

    :param loader: returns the stored session, or None when there is none.
    :param has_token: whether the request carried a token at all.
    :param permanent_default: the value of :attr:`permanent` when not set.
    :param differs: tells whether the loaded session differs from what was
        loaded; without it only writes through the dict API count.
    :param adoption: takes over a session of the mechanism the app used before,
        when none is stored.
    """

    # The state of a session that is not loaded yet, as class attributes: an
    # instance sets only what changes, and most requests change little.
    _loaded = False
    stored: StoredSession | None = None
    #: Whether the token was verified (see :class:`Opened`); known once loaded.
    token_verified = False
    accessed = False
    _written = False
    #: Id of a stored session that :meth:`destroy` asked to delete.
    destroyed_sid: str | None = None
    regenerate_requested = False
    renew_requested = False
    #: Whether the data was taken over from the mechanism the app used before.
    adopted = False
    #: The lifetime given by :meth:`set_lifetime`, or _MISSING when not called.
    requested_lifetime: t.Any = _MISSING
    #: Keys of mutable values not given to the app yet (``StoredSession.unread``).
    _unread: t.AbstractSet[str] = frozenset()

    def __init__(
        self,
        loader: Loader,
        *,
        has_token: bool,
        permanent_default: bool,
        differs: ChangeCheck | None = None,
        adoption: Adoption | None = None,
    ) -> None:
        # dict.__new__ made the empty dict; dict.__init__ would add nothing.
        self._loader = loader
        self._differs = differs
        self.has_token = has_token
        self.permanent_default = permanent_default
        self.adoption = adoption
        #: Keys written through the dict API since loading.
        self.assigned: set[str] = set()

    def _load(self) -> None:
        self.accessed = True
        if self._loaded:
            return
        # A load that raises leaves the session unloaded, so the save that
        # follows the error response touches neither the store nor the cookie.
        opened = self._loader()
        self.stored = opened.stored
        self.token_verified = opened.verified
        self._loaded = True
        if self.stored is not None:
            dict.update(self, self.stored.values)
            self._unread = self.stored.unread
        elif self.adoption is not None:
            values = self.adoption.load()
            self.adopted = bool(values)
            # The mechanism adopted from verified its own cookie.
            self.token_verified = self.adopted
            dict.update(self, values)
        if opened.rejected is not None and not self.adopted:
            send(session_token_rejected, reason=opened.rejected)

    def _write(self) -> None:
        self._load()
        self._written = True

    def _read_all(self) -> None:
        self._load()
        if self._unread:
            t.cast(StoredSession, self.stored).hand_out(self, tuple(self._unread))

    def current_values(self) -> dict[str, t.Any]:
        """The data now, for the store: unlike :meth:`copy`, it hands the app nothing."""
        return dict(dict.items(self))

    @property
    def modified(self) -> bool:
        """Whether this request changed the session, nested changes included.

        Code that saves only modified sessions (Flask-SocketIO with
        ``manage_session=False``) then never drops a nested change.
        """
        if not self._loaded:
            return False
        if self._written:
            return True
        return self._differs is not None and self._differs(self)

    @modified.setter
    def modified(self, value: bool) -> None:
        self._written = bool(value)

    def __copy__(self) -> dict[str, t.Any]:
        return self.copy()

    def __deepcopy__(self, memo: dict[int, t.Any]) -> dict[str, t.Any]:
        return copy.deepcopy(self.copy(), memo)

    def __reduce_ex__(self, protocol: t.SupportsIndex) -> tuple[t.Any, ...]:
        return (dict, (self.copy(),))

    @property
    def loaded(self) -> bool:
        """Whether the stored data has been read during this request."""
        return self._loaded

    @property
    def new(self) -> bool:  # type: ignore[override]
        """True when no stored session was found for this request, nor one to adopt."""
        self._load()
        return self.stored is None and not self.adopted

    @property
    def created_at(self) -> datetime | None:
        """When the stored session was created (None before its first save)."""
        self._load()
        return None if self.stored is None else self.stored.created_at

    @property
    def expires_at(self) -> datetime | None:
        """When the stored session expires, as loaded (None before its first save)."""
        self._load()
        return None if self.stored is None else self.stored.expires_at

    @property
    def id_given_at(self) -> datetime | None:
        """When the session got its current id: at its creation, at
        :meth:`regenerate`, or at its last rotation (None before its first save).

        .. versionadded:: 0.3
        """
        self._load()
        if self.stored is None:
            return None
        store: SessionStore = current_app.extensions["serversession"]
        return rotation.given_at(store.serializer, self.stored)

    @property
    def storage_key(self) -> str | None:
        """The key the backend stores this session under (a sha256 hex digest)."""
        self._load()
        return None if self.stored is None else self.stored.key

    @property
    def permanent(self) -> bool:
        """Whether the cookie carries an expiry, rather than ending with the browser."""
        return bool(self.get("_permanent", self.permanent_default))

    @permanent.setter
    def permanent(self, value: bool) -> None:
        if bool(value) == self.permanent_default:
            self.pop("_permanent", None)
        else:
            self["_permanent"] = bool(value)

    def regenerate(self) -> None:
        """Move the data to a new id at save time and delete the old record.

        Call it when a user signs in, so that an id planted before sign-in
        (session fixation) is worth nothing after it. The new id counts as
        created now: the absolute lifetime and the expiry restart, as NIST
        SP 800-63B-4 asks of re-authentication.

        :raises RuntimeError: in a Flask-SocketIO event handler, where no
            response can carry the new id to the client.
        """
        if in_socketio_event():
            raise RuntimeError(
                "session.regenerate() cannot work in a Socket.IO event handler: no HTTP"
                " response carries the new session id to the client, which would be"
                " signed out. Regenerate in the HTTP view that signs the user in."
            )
        self._write()
        self.regenerate_requested = True

    def destroy(self) -> None:
        """Delete the stored session and expire the cookie at save time.

        Data set after this call starts a new session with a new id.
        """
        self._load()
        self._written = True
        if self.stored is not None:
            self.destroyed_sid = self.stored.sid
        self.stored = None
        self._unread = frozenset()
        self.adopted = False
        self.assigned.clear()
        self.regenerate_requested = False
        self.renew_requested = False
        self.requested_lifetime = _MISSING
        dict.clear(self)

    @property
    def lifetime_set(self) -> bool:
        """Whether :meth:`set_lifetime` was called during this request."""
        return self.requested_lifetime is not _MISSING

    def set_lifetime(self, lifetime: timedelta | float | None) -> None:
        """Give this session a lifetime of its own, e.g. for "remember me".

        At save time the session expires ``now + lifetime``, later renewals
        extend it by the same span, and its cookie becomes persistent. The
        absolute lifetime cap still holds. ``None`` restores the app's
        settings.

        :param lifetime: a ``timedelta``, a number of seconds, or None.
        :raises ValueError: the span is not positive, or longer than 400 days
            (the longest cookie lifetime browsers keep).

        .. versionadded:: 0.2
        .. versionchanged:: 0.3
            Spans longer than 400 days raise ``ValueError``. With
            :meth:`regenerate` in the same request, the session gets this
            lifetime rather than keeping the expiry it had.
        """
        lifetime = checked_lifetime(lifetime)
        self._write()
        self.requested_lifetime = lifetime

    def renew(self) -> None:
        """Push the expiry at save time, as a renewal would."""
        self._load()
        self.renew_requested = True

    def __getitem__(self, key: str) -> t.Any:
        self._load()
        if key in self._unread:
            t.cast(StoredSession, self.stored).hand_out(self, (key,))
        return dict.__getitem__(self, key)

    def __contains__(self, key: object) -> bool:
        self._load()
        return dict.__contains__(self, key)

    def __iter__(self) -> t.Iterator[str]:
        self._load()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._load()
        return dict.__len__(self)

    def __eq__(self, other: object) -> bool:
        self._load()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        self._load()
        return dict.__ne__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __or__(self, other: t.Any) -> dict[str, t.Any]:  # type: ignore[override]
        return self.copy() | other  # type: ignore[no-any-return]

    def __ior__(self, other: t.Any) -> ServerSideSession:  # type: ignore[override]
        self.update(other)
        return self

    def __repr__(self) -> str:
        if not self._loaded:
            return f"<{type(self).__name__} (not loaded)>"
        return f"<{type(self).__name__} {dict.__repr__(self)}>"

    def get(self, key: str, default: t.Any = None) -> t.Any:
        self._load()
        if key in self._unread:
            t.cast(StoredSession, self.stored).hand_out(self, (key,))
        return dict.get(self, key, default)

    def keys(self) -> t.KeysView[str]:  # type: ignore[override]
        self._load()
        return dict.keys(self)

    def values(self) -> t.ValuesView[t.Any]:  # type: ignore[override]
        self._read_all()
        return dict.values(self)

    def items(self) -> t.ItemsView[str, t.Any]:  # type: ignore[override]
        self._read_all()
        return dict.items(self)

    def copy(self) -> dict[str, t.Any]:
        self._read_all()
        return dict(dict.items(self))

    def __setitem__(self, key: str, value: t.Any) -> None:
        self._write()
        self.assigned.add(key)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        self._write()
        dict.__delitem__(self, key)

    def setdefault(self, key: str, default: t.Any = None) -> t.Any:
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, default: t.Any = _MISSING) -> t.Any:
        self._load()
        if dict.__contains__(self, key):
            self._written = True
            return dict.pop(self, key)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[str, t.Any]:
        self._write()
        return dict.popitem(self)

    def update(self, *args: t.Any, **kwargs: t.Any) -> None:
        self._write()
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def clear(self) -> None:
        self._write()
        dict.clear(self)
