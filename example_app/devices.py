from __future__ import annotations

import re
from datetime import timedelta

import ua_parser

#: Shorter names for the families ua-parser reports.
_SHORT_NAMES = {"Mac OS X": "macOS", "Chrome OS": "ChromeOS", "Python Requests": "Python"}
_DECORATION = re.compile(r"^(?:Headless|Mobile )|(?: Mobile| WebView)$")


def _short(family: str | None) -> str | None:
    if family is None or family == "Other":
        return None
    family = _DECORATION.sub("", family)
    return _SHORT_NAMES.get(family, family)


def describe_device(user_agent: str | None) -> str:
    """A short name for a User-Agent, such as "Firefox on Linux", for the devices page.

    ua-parser, which follows the browsers' ever-changing strings, names the
    browser and the system; the page shows the whole string on hover.
    """
    if not user_agent:
        return "Unknown device"
    parsed = ua_parser.parse(user_agent)
    browser = _short(parsed.user_agent.family if parsed.user_agent else None)
    system = _short(parsed.os.family if parsed.os else None)
    if browser and system:
        return f"{browser} on {system}"
    return browser or (f"Unknown browser on {system}" if system else "Unknown browser")


def describe_span(span: timedelta) -> str:
    """A duration in words: "5 minutes", "1 hour", "90 seconds"."""
    seconds = int(span.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}" if count == 1 else f"{count} {unit}s"
    return "every request"
