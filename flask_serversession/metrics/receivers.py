from __future__ import annotations

import threading
import typing as t

from flask import Flask

from .. import signals
from .names import END_REASONS
from .names import ENDED
from .names import REJECT_REASONS
from .names import REJECTED
from .names import ROTATIONS
from .recorder import Recorder


class Receivers:
    """Counts what the signals of one app report: sessions ended, rotated, tokens rejected.

    :param recorder: where the counts go.
    :param settle: called when a taken record ends rather than moves (see
        :class:`~flask_serversession.metrics.wrapper.MeteredBackend`).
    :param revoke_on_reuse: a reused token ends its session
        (``SERVERSESSION_REVOKE_ON_REUSE``).
    """

    def __init__(
        self, recorder: Recorder, *, revoke_on_reuse: bool, settle: t.Callable[[], None]
    ) -> None:
        self._settle = settle
        self._rotated = recorder.instrument(ROTATIONS)
        self._ended = {reason: recorder.instrument(ENDED, reason=reason) for reason in END_REASONS}
        self._rejected = {r: recorder.instrument(REJECTED, reason=r) for r in REJECT_REASONS}
        self._revoke_on_reuse = revoke_on_reuse
        # A revoke is counted as capped or reused when the signal before it,
        # in the same thread, said so for the same session.
        self._cause = threading.local()

    def connect(self, app: Flask) -> None:
        """Listen to the signals ``app`` sends (and no other app's).

        The receivers are held weakly: whoever keeps this object alive (the
        app's extensions) keeps them connected, and they go with the app.
        """
        for signal, receiver in (
            (signals.session_destroyed, self.destroyed),
            (signals.session_regenerated, self.regenerated),
            (signals.session_expired, self.expired),
            (signals.session_rotated, self.rotated),
            (signals.session_token_rejected, self.rejected),
            (signals.session_token_reused, self.reused),
            (signals.session_capped, self.capped),
            (signals.session_revoked, self.revoked),
        ):
            signal.connect(receiver, sender=app)

    def destroyed(self, sender: Flask, **extra: t.Any) -> None:
        self._settle()
        self._ended["destroyed"](1)

    def regenerated(self, sender: Flask, **extra: t.Any) -> None:
        self._ended["regenerated"](1)

    def expired(self, sender: Flask, **extra: t.Any) -> None:
        self._ended["expired"](1)

    def rotated(self, sender: Flask, **extra: t.Any) -> None:
        self._rotated(1)

    def rejected(self, sender: Flask, *, reason: str, **extra: t.Any) -> None:
        count = self._rejected.get(reason)
        if count is not None:
            count(1)

    def reused(self, sender: Flask, *, storage_key: str, **extra: t.Any) -> None:
        if self._revoke_on_reuse:
            self._cause.pending = (storage_key, "reused")

    def capped(self, sender: Flask, *, storage_key: str, **extra: t.Any) -> None:
        self._cause.pending = (storage_key, "capped")

    def revoked(self, sender: Flask, *, storage_key: str, **extra: t.Any) -> None:
        self._settle()
        pending = getattr(self._cause, "pending", None)
        self._cause.pending = None
        reason = pending[1] if pending is not None and pending[0] == storage_key else "revoked"
        self._ended[reason](1)
