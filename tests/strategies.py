from __future__ import annotations

import enum
import math
import re
import string
import sys
import typing as t
import uuid
from collections import defaultdict
from collections import namedtuple
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from zoneinfo import ZoneInfo

from hypothesis import strategies as st
from markupsafe import Markup

# -- tokens ---------------------------------------------------------------------

#: The characters of a session id and of its signature.
TOKEN_CHARS = string.ascii_letters + string.digits + "-_"

#: Characters a token never holds, some of which look like ones it does.
BAD_TOKEN_CHARS = ".=+/ \t\"';,\\%\x00\x7f\xa0é\u0130\u017f\u212a\u2028\uff21\u0663\U0001f600"
#: What may take the place of one character of a live token.
REPLACEMENT_CHARS = TOKEN_CHARS + BAD_TOKEN_CHARS

#: How a request carries a token: Flask's cookie, quoted as a client quotes it;
#: the raw ``Cookie`` header as any client may send it; or the token header.
TRANSPORTS = ("cookie", "raw cookie", "header")


@dataclass(frozen=True)
class Forged:
    """A token to present: given literally, or made from a live session.

    :param kind: how the token is made, one of :data:`TOKEN_KINDS`.
    :param text: the literal token, or the secret key of a foreign signature.
    :param position: the character of a live token to replace.
    :param char: its replacement.
    :param seed: the data of the live session, which also tells examples apart.
    """

    kind: str
    text: str = ""
    position: int = 0
    char: str = ""
    seed: int = 0


def _token_text(size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=TOKEN_CHARS, min_size=size, max_size=size)


def _repeated(text: str, size: int) -> str:
    return (text * (size // len(text) + 1))[:size]


@st.composite
def _misshaped(draw: st.DrawFn) -> str:
    """A signed token's shape with a few characters out of the alphabet."""
    chars = list(draw(_token_text(43)) + "." + draw(_token_text(43)))
    for _ in range(draw(st.integers(1, 3))):
        chars[draw(st.integers(0, len(chars) - 1))] = draw(st.sampled_from(BAD_TOKEN_CHARS))
    return "".join(chars)


@st.composite
def _near_misses(draw: st.DrawFn) -> str:
    """Well-formed pieces of a token put together slightly wrong."""
    sid, signature = draw(_token_text(43)), draw(_token_text(43))
    affix = draw(st.sampled_from(["\n", "\r\n", " ", "\t", "=", ".", "\x00", '"', "==", "%0A"]))
    shapes = [
        sid[:42] + "." + signature,
        sid + "A." + signature,
        sid + "." + signature[:42],
        sid + "." + signature + "A",
        sid + signature,
        sid + ".." + signature,
        sid + "." + signature + "." + signature,
        sid + "." + signature + affix,
        affix + sid + "." + signature,
        sid + affix + "." + signature,
        sid + affix,
        f'"{sid}.{signature}"',
    ]
    return draw(st.sampled_from(shapes))


#: Token strings that never name a session: any text, latin-1 bytes, very
#: long strings, and strings of (almost) the token's shape.
literal_tokens: st.SearchStrategy[str] = st.one_of(
    st.text(max_size=120),
    st.binary(max_size=120).map(lambda b: b.decode("latin-1")),
    st.builds(
        _repeated, st.text(TOKEN_CHARS + ".", min_size=1, max_size=4), st.integers(88, 20_000)
    ),
    st.builds(_repeated, st.text(min_size=1, max_size=4), st.integers(100, 20_000)),
    _misshaped(),
    _near_misses(),
    _token_text(43),
    st.builds("{}.{}".format, _token_text(43), _token_text(43)),
)

#: Every kind of :class:`Forged` token; all but "live" name no live session.
TOKEN_KINDS = (
    "literal",
    "random id, other secret",
    "live",
    "live bare id",
    "live, other app's secret",
    "live, same secret, other salt",
    "live, signature of another session",
    "live, one character replaced",
    "destroyed",
    "regenerated",
    "emptied",
)
_KIND_WEIGHTS = {"literal": 6, "random id, other secret": 2, "live, one character replaced": 4}


@st.composite
def forged_tokens(draw: st.DrawFn) -> Forged:
    """Tokens of every kind, mostly literal ones."""
    kinds = [kind for kind in TOKEN_KINDS for _ in range(_KIND_WEIGHTS.get(kind, 1))]
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**31))
    if kind == "literal":
        return Forged(kind, draw(literal_tokens))
    if kind == "random id, other secret":
        return Forged(kind, draw(st.text(min_size=1, max_size=20)), seed=seed)
    if kind == "live, one character replaced":
        position = draw(st.integers(0, 86))
        char = draw(st.sampled_from(REPLACEMENT_CHARS))
        return Forged(kind, position=position, char=char, seed=seed)
    return Forged(kind, seed=seed)


# -- session values ---------------------------------------------------------------

#: Keys shaped like the serializer's tags or like a store's own fields.
TAG_LIKE_KEYS = (
    " t", " b", " m", " u", " d", " dt", " di", " l", " t__", " di__", "__", "",
    "$date", "__type__", "d:", "d:x", "expires_us", "created_us", "data", "key",
)  # fmt: skip

#: Python's limit on the digits of an int turned into text.
INT_DIGITS = sys.get_int_max_str_digits() or 4300
_HUGE = 10**INT_DIGITS

#: A nesting depth past which a store may refuse a value.
DEEP = 100


def _fixed_offsets() -> st.SearchStrategy[timezone]:
    day = timedelta(hours=24) - timedelta(microseconds=1)
    return st.one_of(
        st.just(timezone.utc),
        st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m))),
        # Offsets with a fraction of a second are refused.
        st.timedeltas(min_value=-day, max_value=day).map(timezone),
    )


naive_datetimes = st.datetimes(datetime.min, datetime.max)
aware_datetimes = st.builds(lambda d, tz: d.replace(tzinfo=tz), naive_datetimes, _fixed_offsets())
# Datetimes in IANA zones; wall times a zone skips, and the ends of time, are refused.
zoned_datetimes = st.datetimes(datetime.min, datetime.max, timezones=st.timezones())

_huge_ints = st.builds(
    lambda digits, sign: sign * (10 ** (digits - 1) + 7),
    st.integers(18, INT_DIGITS + 50),
    st.sampled_from([1, -1]),
)


text_values = st.one_of(
    st.text(),
    st.text(st.sampled_from("\x00\u2028\\\"'\n\x7fa\U0001f600\ufeff")),
    # Surrogate code points, paired or not, are refused; kept rare so that
    # most saves test the round trip.
    st.sampled_from(["\ud800", "a\udfffb", "\ud800\udfff"]),
)

#: Leaves that come back exactly (a few huge ints and lone surrogates may be refused).
good_leaves: st.SearchStrategy[t.Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    _huge_ints,
    st.floats(),
    st.sampled_from([-0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308, 1e16]),
    text_values,
    st.binary(),
    st.uuids(),
    text_values.map(Markup),
    naive_datetimes,
    aware_datetimes,
    zoned_datetimes,
    st.sampled_from(
        [
            datetime.min.replace(tzinfo=timezone(timedelta(hours=23, minutes=59))),
            datetime.max.replace(tzinfo=timezone(-timedelta(hours=23, minutes=59))),
        ]
    ),
)

dict_keys = st.one_of(st.text(max_size=8), st.sampled_from(TAG_LIKE_KEYS))


def containers(children: st.SearchStrategy[t.Any]) -> st.SearchStrategy[t.Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(dict_keys, children, max_size=4),
    )


good_values = st.recursive(good_leaves, containers, max_leaves=10)


class Colour(enum.IntEnum):
    RED = 1


class Flavour(str, enum.Enum):
    SWEET = "sweet"


class Tag(str):
    pass


class Count(int):
    pass


class Ratio(float):
    pass


class Attrs(dict):  # type: ignore[type-arg]
    pass


class Items(list):  # type: ignore[type-arg]
    pass


class Moment(datetime):
    pass


class Id(uuid.UUID):
    pass


class Thing:
    def __repr__(self) -> str:
        return "Thing()"


Point = namedtuple("Point", "x y")

#: Values that would not come back as the type they are.
bad_leaves: st.SearchStrategy[t.Any] = st.one_of(
    st.sets(st.integers(), max_size=3),
    st.frozensets(st.text(max_size=3), max_size=3),
    st.sampled_from(
        [
            Colour.RED,
            Flavour.SWEET,
            Tag("tag"),
            Count(3),
            Ratio(0.5),
            Attrs(a=1),
            Items([1]),
            OrderedDict(a=1),
            defaultdict(list, a=[1]),
            Point(1, 2),
            Moment(2026, 1, 2),
            Id(int=5),
            bytearray(b"x"),
            1j,
            Thing(),
            object,
            timedelta(seconds=1),
            range(3),
        ]
    ),
    st.decimals(allow_nan=False),
    st.dates(),
    st.times(),
    st.dictionaries(
        st.one_of(
            st.integers(), st.none(), st.booleans(), st.binary(max_size=3), st.tuples(st.integers())
        ),
        st.integers(),
        min_size=1,
        max_size=2,
    ),
)


@st.composite
def with_a_bad_part(draw: st.DrawFn) -> t.Any:
    """A supported value with one unsupported value somewhere inside it."""
    value = draw(bad_leaves)
    for _ in range(draw(st.integers(0, 3))):
        siblings = draw(st.lists(good_values, max_size=2))
        siblings.insert(draw(st.integers(0, len(siblings))), value)
        kind = draw(st.sampled_from(["list", "tuple", "dict"]))
        if kind == "dict":
            size = len(siblings)
            names = draw(st.lists(dict_keys, min_size=size, max_size=size, unique=True))
            value = dict(zip(names, siblings, strict=True))
        else:
            value = siblings if kind == "list" else tuple(siblings)
    return value


@dataclass(frozen=True)
class Nested:
    """A value nested ``depth`` containers deep; a description, so that it prints on one line.

    :param kinds: the containers from the inside out, repeated: ``l`` list, ``t`` tuple, ``d`` dict.
    :param depth: how many containers.
    """

    kinds: str
    depth: int

    def build(self) -> t.Any:
        value: t.Any = "bottom"
        for level in range(self.depth):
            kind = self.kinds[level % len(self.kinds)]
            value = [value] if kind == "l" else (value,) if kind == "t" else {"k": value}
        return value


#: Deep values, near the depth where Python's stack runs out too (tuples take
#: two JSON levels each).
nested = st.builds(
    Nested,
    st.sampled_from(["l", "d", "ld", "t", "lt"]),
    st.one_of(st.integers(DEEP, 1200), st.integers(400, 600)),
)

#: Session keys every store must accept, some shaped like its own fields.
good_session_keys = st.one_of(
    st.text(max_size=30).filter(lambda k: k != "_permanent"),
    # Not "_serversession_lifetime": it is reserved and refused.
    st.sampled_from((*TAG_LIKE_KEYS, "_fresh", "_flashes", "_id", "_user_id", "csrf_token")),
)

#: Session keys to refuse: holding a NUL or a lone surrogate, or not a str.
bad_session_keys: st.SearchStrategy[t.Any] = st.one_of(
    st.builds("{}\x00{}".format, st.text(max_size=3), st.text(max_size=3)),
    st.builds("{}{}".format, st.text(max_size=3), st.sampled_from(["\ud800", "\udc00", "\udfff"])),
    st.integers(),
    st.none(),
    st.booleans(),
    st.binary(max_size=3),
    st.tuples(st.text(max_size=2)),
)


@st.composite
def session_entries(draw: st.DrawFn) -> list[tuple[t.Any, t.Any]]:
    """Keys and values to set in one request: supported ones and at most one odd one.

    The odd one is an unsupported key, a value with an unsupported part, or a
    deeply nested value; one at a time, so that a refusal has one cause.
    """
    entries = draw(st.lists(st.tuples(good_session_keys, good_values), max_size=4))
    odd = draw(st.sampled_from(["none", "none", "bad key", "bad value", "bad value", "deep"]))
    if odd == "bad key":
        entry = (draw(bad_session_keys), draw(good_values))
    elif odd == "bad value":
        entry = (draw(good_session_keys), draw(with_a_bad_part()))
    elif odd == "deep":
        entry = (draw(good_session_keys), draw(nested))
    else:
        return entries
    entries.insert(draw(st.integers(0, len(entries))), entry)
    return entries


def realize(value: t.Any) -> t.Any:
    return value.build() if isinstance(value, Nested) else value


# -- what the contract says of them ---------------------------------------------------

OK, EITHER, REFUSED = "kept", "kept or refused", "refused"
_RANK = {OK: 0, EITHER: 1, REFUSED: 2}
_EXACT_LEAVES = frozenset({type(None), bool, float, bytes, uuid.UUID})
# A str holding a lone surrogate is not Unicode text: a store may refuse it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def worst(verdicts: t.Iterable[str]) -> str:
    return max(verdicts, key=_RANK.__getitem__, default=OK)


def key_verdict(key: t.Any) -> str:
    """Whether every store must accept ``key`` as a session key."""
    if type(key) is not str or "\x00" in key or _SURROGATE.search(key):
        return REFUSED
    if key.startswith("_serversession_"):
        return REFUSED
    return OK


def _named(zone: t.Any) -> bool:
    return bool(zone.tzname(None) != timezone(zone.utcoffset(None)).tzname(None))


def value_verdict(value: t.Any) -> str:
    """Whether a value must come back exactly, may be refused, or must be refused.

    Walks without recursion: a value may be nested deeper than Python's stack.
    """
    verdict = OK
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        kind = type(item)
        if depth > DEEP:
            verdict = worst([verdict, EITHER])
        if kind is str or kind is Markup:
            if _SURROGATE.search(item):
                verdict = worst([verdict, EITHER])
        elif kind is int:
            if abs(item) >= _HUGE:
                verdict = worst([verdict, EITHER])
        elif kind is datetime:
            zone = item.tzinfo
            if type(zone) is ZoneInfo and zone.key is not None:
                # A wall time its zone skips, or one near the ends of time, is refused.
                verdict = worst([verdict, EITHER])
            elif zone is not None and (type(zone) is not timezone or _named(zone)):
                return REFUSED  # a named timezone's name would not come back
            offset = item.utcoffset()
            if offset is not None and offset % timedelta(seconds=1):
                return REFUSED
        elif kind is list or kind is tuple:
            pending.extend((v, depth + 1) for v in item)
        elif kind is dict:
            if any(type(k) is not str for k in item):
                return REFUSED
            if any(_SURROGATE.search(k) for k in item):
                verdict = worst([verdict, EITHER])
            pending.extend((v, depth + 1) for v in item.values())
        elif kind not in _EXACT_LEAVES:
            return REFUSED
    return verdict


def entry_verdict(key: t.Any, value: t.Any) -> str:
    return worst([key_verdict(key), value_verdict(value)])


def _differs(a: t.Any, b: t.Any) -> str | None:
    """What differs between two values at the top level, or None."""
    if type(a) is not type(b):
        return f"{type(a).__name__} became {type(b).__name__}"
    if type(a) is float:
        if math.isnan(a) or math.isnan(b):
            same = math.isnan(a) and math.isnan(b)
        else:
            same = a == b and math.copysign(1, a) == math.copysign(1, b)
    elif type(a) is datetime:
        # The same instant and wall time, in a zone of the same type and name
        # (the offset tells the readings of a repeated wall time apart).
        same = (
            a == b
            and a.replace(tzinfo=None) == b.replace(tzinfo=None)
            and type(a.tzinfo) is type(b.tzinfo)
            and a.utcoffset() == b.utcoffset()
            and a.tzname() == b.tzname()
            and getattr(a.tzinfo, "key", None) == getattr(b.tzinfo, "key", None)
        )
    elif type(a) in (list, tuple):
        return None if len(a) == len(b) else f"length {len(a)} became {len(b)}"
    elif type(a) is dict:
        return None if a.keys() == b.keys() else f"keys {sorted(a)!r} became {sorted(b)!r}"
    else:
        same = a == b
    return None if same else f"{a!r} became {b!r}"


def difference(expected: t.Any, actual: t.Any) -> str | None:
    """Where ``actual`` differs from ``expected`` in type or value, or None.

    Compares type by type at every level, without recursion.
    """
    pending: list[tuple[str, t.Any, t.Any]] = [("", expected, actual)]
    while pending:
        path, a, b = pending.pop()
        problem = _differs(a, b)
        if problem is not None:
            return f"at {path or 'the top'}: {problem}"
        if type(a) in (list, tuple):
            pending.extend(
                (f"{path}[{i}]", x, y) for i, (x, y) in enumerate(zip(a, b, strict=True))
            )
        elif type(a) is dict:
            pending.extend((f"{path}[{k!r}]", a[k], b[k]) for k in a)
    return None
