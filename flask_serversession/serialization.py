from __future__ import annotations

import json
import marshal
import typing as t
from base64 import b64decode
from base64 import b64encode
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from uuid import UUID
from zoneinfo import ZoneInfo

from markupsafe import Markup
from werkzeug.http import parse_date

# The tags of Flask's cookie session, so that data written by 0.1 still reads.
_TUPLE = " t"
_BYTES = " b"
_MARKUP = " m"
_UUID = " u"
_DICT = " di"
_DATETIME = " dt"
# A datetime in a named zone: its ISO form and the zone's key.
_ZONED = " dz"
# Flask's HTTP-date form, which dropped microseconds and offsets: read only.
_HTTP_DATE = " d"
_TAGS = frozenset({_TUPLE, _BYTES, _MARKUP, _UUID, _DICT, _DATETIME, _ZONED, _HTTP_DATE})

# Values of these exact types are JSON as they are (and str, once checked for surrogates).
_NUMBERS = frozenset({int, float, bool, type(None)})
#: JSON nesting levels a value may take; decoding deeper could exhaust the stack.
MAX_DEPTH = 200
_SECOND = timedelta(seconds=1)

ACCEPTED = (
    "dict (with str keys), list, tuple, str, bytes, int, float, bool, None, datetime, UUID, Markup"
)


class SessionSerializer:
    """Turn one session value into tagged JSON text and back, exactly.

    The tags are those of Flask's cookie session, with one change: a
    ``datetime`` is kept in ISO form, so it comes back with its microseconds,
    its UTC offset, or naive as it was. Only values that come back as the same
    type with the same value are accepted: a ``set``, an ``IntEnum``, a
    ``Decimal``, a ``date``, a dict with non-str keys or a subclass of a
    container raise :class:`TypeError` rather than come back as something else.
    The encoding does not depend on the app's JSON provider.
    """

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
        self._decoder = json.JSONDecoder(object_hook=self._untag)
        self._encode = one_shot_encoder(self._encoder)
        #: The decoder's scanner: ``scan(text, 0)`` gives the value at the
        #: start of ``text`` and where it ends; what :meth:`loads` starts with.
        self.scan: t.Callable[[str, int], tuple[t.Any, int]] = self._decoder.scan_once  # type: ignore[attr-defined]

    def dumps(self, value: t.Any) -> str:
        """Return ``value`` as tagged JSON text.

        :raises TypeError: the value, or a value inside it, would not come back as it is.
        """
        kind = type(value)
        if kind in _NUMBERS or (kind is str and value.isascii()):
            return self._encode(value)
        try:
            return self._encode(self._tag(value, 0))
        except RecursionError:
            raise TypeError("the value is nested too deeply or refers to itself") from None

    def loads(self, text: str) -> t.Any:
        """Return the value that :meth:`dumps` turned into ``text``."""
        # The scanner alone reads text that holds one value and nothing else,
        # as dumps writes it; anything else goes the whole way, which skips
        # whitespace and raises the decoder's own errors.
        try:
            value, end = self.scan(text, 0)
        except (StopIteration, ValueError):
            return self._decoder.decode(text)
        return value if end == len(text) else self._decoder.decode(text)

    def _tag(self, value: t.Any, depth: int) -> t.Any:
        kind = type(value)
        if kind in _NUMBERS:
            return value
        if kind is str:
            return _text(value)
        depth += 1
        if depth > MAX_DEPTH:
            raise TypeError(f"the value nests deeper than {MAX_DEPTH} levels")
        if kind is dict:
            for key in value:
                if type(key) is not str:
                    raise TypeError(f"a dict key {key!r} is a {type(key).__name__}, not a str")
                _text(key)
            if len(value) == 1:
                key = next(iter(value))
                if key in _TAGS:
                    return {_DICT: {key + "__": self._tag(value[key], depth + 1)}}
            return {k: self._tag(v, depth) for k, v in value.items()}
        if kind is list:
            return [self._tag(v, depth) for v in value]
        if kind is tuple:
            # A tagged container takes two JSON levels.
            return {_TUPLE: [self._tag(v, depth + 1) for v in value]}
        if kind is bytes:
            return {_BYTES: b64encode(value).decode("ascii")}
        if kind is Markup:
            return {_MARKUP: _text(str(value))}
        if kind is UUID:
            return {_UUID: value.hex}
        if kind is datetime:
            return _datetime(value)
        raise TypeError(f"a {kind.__module__}.{kind.__qualname__} would not come back as it is")

    @staticmethod
    def _untag(obj: dict[str, t.Any]) -> t.Any:
        if len(obj) != 1:
            return obj
        key, value = next(iter(obj.items()))
        if key == _TUPLE:
            return tuple(value)
        if key == _BYTES:
            return b64decode(value)
        if key == _MARKUP:
            return Markup(value)
        if key == _UUID:
            return UUID(value)
        if key == _DATETIME:
            return datetime.fromisoformat(value)
        if key == _ZONED:
            return _zoned(value)
        if key == _DICT:
            inner_key, inner_value = next(iter(value.items()))
            return {inner_key[:-2]: inner_value}
        if key == _HTTP_DATE:
            return parse_date(value)
        return obj


def _datetime(value: datetime) -> dict[str, t.Any]:
    """Tag a datetime: naive, at a fixed offset, or in a ``ZoneInfo`` zone kept by its key."""
    zone, offset = value.tzinfo, value.utcoffset()
    if zone is not None and offset is None:
        raise TypeError(f"the datetime {value!r} has a tzinfo that gives no offset")
    if offset is not None and offset % _SECOND:
        raise TypeError(f"the datetime {value!r} has an offset with a fraction of a second")
    if zone is None:
        return {_DATETIME: value.isoformat()}
    if type(zone) is timezone:
        if zone.tzname(None) != timezone(t.cast(timedelta, offset)).tzname(None):
            raise TypeError(
                f"the datetime {value!r} has a named timezone, whose name would not come"
                " back: use timezone(offset) or a zoneinfo.ZoneInfo zone"
            )
        return {_DATETIME: value.isoformat()}
    if type(zone) is not ZoneInfo or zone.key is None:
        raise TypeError(
            f"the datetime {value!r} would come back with a fixed offset, not its"
            f" {type(zone).__qualname__}: use a zoneinfo.ZoneInfo zone or a plain datetime.timezone"
        )
    tagged = [value.isoformat(), zone.key]
    try:
        back = _zoned(tagged)
    except OverflowError:
        raise TypeError(f"the datetime {value!r} is too close to the ends of time") from None
    # The offset tells the two readings of a repeated wall time apart.
    if back.replace(tzinfo=None) != value.replace(tzinfo=None) or back.utcoffset() != offset:
        raise TypeError(f"the datetime {value!r} names a wall time that its zone skips")
    return {_ZONED: tagged}


def _zoned(tagged: list[str]) -> datetime:
    """The datetime of a ``_ZONED`` tag: the same instant, in the zone of that key."""
    iso, key = tagged
    try:
        zone = ZoneInfo(key)
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"the time zone {key!r} is not known here: {e}") from e
    return datetime.fromisoformat(iso).astimezone(zone)


def one_shot_encoder(encoder: json.JSONEncoder) -> t.Callable[[t.Any], str]:
    """Return ``encoder.encode``, without building a new C encoder for each call.

    The values it gets are made by ``_tag``: fresh trees of bounded depth, so
    no check for circular references is needed.
    """
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:
        return encoder.encode
    chunks = make(
        None,
        encoder.default,
        json.encoder.encode_basestring_ascii,
        None,
        encoder.key_separator,
        encoder.item_separator,
        encoder.sort_keys,
        encoder.skipkeys,
        encoder.allow_nan,
    )
    return lambda value: "".join(chunks(value, 0))


def snapshot(value: t.Any) -> bytes | None:
    """Return bytes that change whenever ``value`` does, or None for a value without them.

    ``marshal`` writes the exact type of every part (``1``, ``1.0`` and
    ``True`` differ, and it refuses subclasses, datetimes and UUIDs), so equal
    bytes mean an equal value of equal types: one that serializes as it did.
    Comparing them is far cheaper than serializing the value again.
    """
    try:
        return marshal.dumps(value, 2)
    except ValueError:
        return None


def _text(value: str) -> str:
    """Return ``value`` if it is text JSON keeps as it is: no surrogate code points."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # Escaped surrogates that form a pair come back as one character.
            raise TypeError(
                "a str holds a surrogate code point, which is not text and may not come back"
                " as it is"
            ) from None
    return value


def check_key(key: t.Any) -> str:
    """Return ``key`` if every backend can store it as a session key.

    :raises TypeError: the key is not a str, or holds a NUL or a lone surrogate.
    """
    if type(key) is not str:
        raise TypeError(f"Session key {key!r} is a {type(key).__name__}; session keys are str.")
    if "\x00" in key:
        raise TypeError(f"Session key {key!r} holds a NUL character, which stores cannot hold.")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise TypeError(
            f"Session key {key!r} holds a lone surrogate, which is not valid UTF-8."
        ) from None
    return key
