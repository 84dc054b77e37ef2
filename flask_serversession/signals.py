from __future__ import annotations

import typing as t

from blinker import Namespace
from flask import current_app
from flask import has_app_context

_signals = Namespace()

#: A new session was stored. Receives ``storage_key``.
session_created = _signals.signal("session-created")
#: A session moved to a new id. Receives ``old_storage_key`` and ``storage_key``.
session_regenerated = _signals.signal("session-regenerated")
#: A request or an API call deleted a session. Receives ``storage_key``.
session_destroyed = _signals.signal("session-destroyed")
#: A session was ended by :meth:`~flask_serversession.ServerSession.revoke` or
#: a per-user limit. Receives ``storage_key`` and ``user_id``.
session_revoked = _signals.signal("session-revoked")
#: A request or an API call met an expired session. Receives ``storage_key``.
session_expired = _signals.signal("session-expired")
#: A request or an API call came with a token that opens no session. Receives
#: ``reason``: ``"malformed"``, ``"bad_signature"`` or ``"unknown"``; never
#: the token.
session_token_rejected = _signals.signal("session-token-rejected")
#: A session moved to its next id (``SERVERSESSION_ROTATE_EVERY``). Receives
#: ``old_storage_key`` and ``storage_key``.
session_rotated = _signals.signal("session-rotated")
#: A token that rotated out came back after its grace: someone may hold a
#: copy of the cookie. Receives ``storage_key`` (the session's) and
#: ``reused_storage_key`` (the rotated-out id's).
session_token_reused = _signals.signal("session-token-reused")
#: A bound session's cookie came without its valid bound cookie
#: (``SERVERSESSION_DEVICE_BOUND``): the request opened no session. Receives
#: ``storage_key``.
#:
#: .. versionadded:: 0.3
session_binding_failed = _signals.signal("session-binding-failed")
#: The per-user limit (``SERVERSESSION_MAX_SESSIONS_PER_USER``) is ending a
#: session; :data:`session_revoked` follows for it. Receives ``storage_key``
#: and ``user_id``.
#:
#: .. versionadded:: 0.3
session_capped = _signals.signal("session-capped")


def send(signal: t.Any, **kwargs: t.Any) -> None:
    """Send ``signal`` with the current app as sender, if anyone listens.

    Receivers listen to one app (``connect(..., app)``, as the metrics do).
    Store code run outside any app context (a script that calls the store's
    API without one) has no app to send from: nothing is sent, rather than
    a RuntimeError that would depend on whether some other app listens.
    """
    if signal.receivers and has_app_context():
        signal.send(current_app._get_current_object(), **kwargs)  # type: ignore[attr-defined]
