from __future__ import annotations

import re
from datetime import timedelta

# Checked in order: Edge and Opera also say "Chrome", Chrome also says "Safari".
_BROWSERS = (
    ("Edge", r"\bEdg(?:e|A|iOS)?/"),
    ("Opera", r"\b(?:OPR|Opera)/"),
    ("Firefox", r"\b(?:Firefox|FxiOS)/"),
    ("Chrome", r"\b(?:Headless)?Chrom(?:e|ium)/|\bCriOS/"),
    ("Safari", r"\bVersion/[\d.]+.*\bSafari/"),
    ("curl", r"^curl/"),
    ("Python", r"^(?:python-requests|python-urllib3|Python-urllib)/"),
)
_SYSTEMS = (
    ("Android", r"\bAndroid\b"),
    ("iOS", r"\b(?:iPhone|iPad|iPod)\b"),
    ("Windows", r"\bWindows\b"),
    ("macOS", r"\bMacintosh\b|\bMac OS X\b"),
    ("ChromeOS", r"\bCrOS\b"),
    ("Linux", r"\bLinux\b|\bX11\b"),
)


def describe_device(user_agent: str | None) -> str:
    """A short name for a User-Agent, such as "Firefox on Linux", for the devices page.

    A few patterns cover the common browsers; anything else is "Unknown
    browser". The page shows the whole string on hover.
    """
    if not user_agent:
        return "Unknown device"
    browser = next((name for name, p in _BROWSERS if re.search(p, user_agent)), None)
    system = next((name for name, p in _SYSTEMS if re.search(p, user_agent)), None)
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
