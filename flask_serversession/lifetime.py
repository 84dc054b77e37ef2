"""When a session expires: its first expiry, its renewals and the absolute cap."""

from __future__ import annotations

import contextlib
import typing as t
from datetime import datetime
from datetime import timedelta

if t.TYPE_CHECKING:
    from .backends.base import Record

#: The longest lifetime a session may be given: browsers keep no cookie longer
#: (RFC 6265bis caps ``Expires`` and ``Max-Age`` at 400 days).
LONGEST_LIFETIME = timedelta(days=400)
# Damaged records are kept at least this long after their last write when no
# absolute lifetime bounds every session: as long as any session may live.
_DAMAGED_RECORD_GRACE = LONGEST_LIFETIME
_CLOCK_MARGIN = timedelta(days=1)


def checked_lifetime(lifetime: timedelta | float | None) -> timedelta | None:
    """Return the span that ``session.set_lifetime`` was given, as a timedelta.

    :raises ValueError: it is not a positive timedelta or number of seconds of
        at most :data:`LONGEST_LIFETIME`, nor None.
    """
    if lifetime is None:
        return None
    if isinstance(lifetime, (int, float)) and not isinstance(lifetime, bool):
        with contextlib.suppress(OverflowError, ValueError):
            lifetime = timedelta(seconds=lifetime)
    if not isinstance(lifetime, timedelta) or not timedelta(0) < lifetime <= LONGEST_LIFETIME:
        raise ValueError(
            "set_lifetime() takes a positive timedelta or number of seconds of at most"
            f" 400 days (the longest cookie lifetime browsers keep), or None; not {lifetime!r}"
        )
    return lifetime


class Lifetimes:
    """When sessions expire: first expiry, renewals and the absolute cap.

    :param expire_time: a new session's lifetime (``SERVERSESSION_EXPIRE_TIME``).
    :param renew_time: how far a renewal extends it (``SERVERSESSION_RENEW_TIME``).
    :param absolute_lifetime: the cap from creation, or None
        (``SERVERSESSION_ABSOLUTE_LIFETIME``).
    """

    def __init__(
        self, expire_time: timedelta, renew_time: timedelta, absolute_lifetime: timedelta | None
    ) -> None:
        self.expire_time = expire_time
        self.renew_time = renew_time
        self.absolute_lifetime = absolute_lifetime

    @property
    def longest(self) -> timedelta:
        """How long after its last write a record may still be live, at most.

        The absolute cap bounds it when set; otherwise a session's own lifetime
        may reach :data:`LONGEST_LIFETIME`, which bounds it then.
        """
        if self.absolute_lifetime is not None:
            # A margin for app servers whose clocks run ahead of the purging one.
            return self.absolute_lifetime + _CLOCK_MARGIN
        return max(self.expire_time, self.renew_time, _DAMAGED_RECORD_GRACE)

    def is_expired(self, record: Record, now: datetime) -> bool:
        if record.expires_at <= now:
            return True
        cap = self.absolute_lifetime
        return cap is not None and record.created_at + cap <= now

    def capped(self, expires_at: datetime, created_at: datetime) -> datetime:
        """Return ``expires_at``, or the absolute cap when that comes first."""
        cap = self.absolute_lifetime
        return expires_at if cap is None else min(expires_at, created_at + cap)

    def started(self, now: datetime, created_at: datetime, lifetime: timedelta | None) -> datetime:
        """The expiry of a session whose lifetime (its own, or the app's) starts now."""
        span = self.expire_time if lifetime is None else lifetime
        return self.capped(now + span, created_at)

    def renewed(
        self, expires_at: datetime, created_at: datetime, lifetime: timedelta | None, now: datetime
    ) -> datetime:
        """Return the expiry after a renewal: never earlier, never past the cap.

        A session with a lifetime of its own is extended by that span.
        """
        span = self.renew_time if lifetime is None else lifetime
        return self.capped(max(expires_at, now + span), created_at)
