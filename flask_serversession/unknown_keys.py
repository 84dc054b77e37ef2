from __future__ import annotations

import difflib
import re
import typing as t
import warnings

from .leftover_keys import callers_level

PREFIX = "SERVERSESSION_"

#: Keys that DESIGN.md defines for features that may not be in this build's
#: defaults yet; none of them is a typo.
PLANNED_KEYS = frozenset(
    {
        "SERVERSESSION_MIGRATE_FROM",
        "SERVERSESSION_METRICS",
        "SERVERSESSION_METRICS_REGISTRY",
        "SERVERSESSION_ENCRYPTION_KEY",
        "SERVERSESSION_ENCRYPTION_KEY_FALLBACKS",
        "SERVERSESSION_DEVICE_BOUND",
        "SERVERSESSION_DEVICE_BOUND_PATH",
        "SERVERSESSION_DEVICE_BOUND_REFRESH",
    }
)

# A misspelled prefix counts too: SERVERSESION_BACKEND, SERVER_SESSION_BACKEND.
_NEAR_PREFIX = re.compile("SERVER_?SES+IONS?_|SERVERSESSION|SERVER?SES+ION_")


class UnknownKey(t.NamedTuple):
    """A config key that looks like a setting of this extension but is none."""

    key: str
    #: The known key it most resembles, if any resembles it.
    closest: str | None

    def advice(self) -> str:
        """What to do about it, one sentence."""
        if self.closest is not None:
            return f"did you mean {self.closest}?"
        return f"remove it; the configuration page lists every {PREFIX}* key."


def unknown_keys(config: t.Mapping[str, t.Any], known: t.Iterable[str]) -> list[UnknownKey]:
    """The keys of ``config`` that look like ours but are not ``known`` ones.

    :param known: the keys the extension reads (its defaults); read at each
        call, so keys that other modules add later count as known.
    """
    names = {*known, *PLANNED_KEYS}
    # Compared without the prefix, which every key shares and a typo may miss.
    by_suffix = {name.removeprefix(PREFIX): name for name in names}
    found = []
    for key in config:
        prefix = _NEAR_PREFIX.match(key) if isinstance(key, str) else None
        if prefix is None or key in names:
            continue
        suffix = key[prefix.end() :].lstrip("_")
        closest = difflib.get_close_matches(suffix, sorted(by_suffix), n=1, cutoff=0.6)
        found.append(UnknownKey(key, by_suffix[closest[0]] if closest else None))
    return sorted(found)


def warn_unknown_keys(config: t.Mapping[str, t.Any], known: t.Iterable[str]) -> None:
    """Warn once for each unknown key: a typo would leave its setting at the default.

    ``SERVERSESSION_SQLALCHEMY_URL`` for ``..._URI`` would otherwise send every
    session to the default SQLite file without a word.
    """
    for found in unknown_keys(config, known):
        warnings.warn(
            f"{found.key} is not a Flask-ServerSession setting and is ignored: {found.advice()}",
            UserWarning,
            stacklevel=callers_level(),
        )
