"""The user index: listing a user's sessions among many, and its cost on a write.

With ``SERVERSESSION_USER_KEY`` set every backend indexes sessions by user
(an indexed ``owner`` column in SQL, a set per user in Redis, index files on
the filesystem). Two figures per backend:

* ``user_sessions()`` for a user holding 1,000 sessions among many stored:
  the user's sessions are made through the backend's own ``create`` (copies
  of a signed-in session the app stored), the others are copied by the
  driver (``bulk.py``) and name no user.
* the same write request (a signed-in session, one key changed) through the
  WSGI app with the index and without, timed in interleaved rounds.
"""

from __future__ import annotations

import dataclasses
import secrets
import statistics
import time
import typing as t

import bulk
from apps import batch
from apps import build_app
from apps import call
from apps import check_ok
from apps import close_app
from apps import make_environ
from apps import SEED
from apps import session_cookie
from apps import Spec
from flask import Flask
from flask import session
from lineup import available
from lineup import note
from lineup import Places
from ratios import paired
from stats import Budget
from stats import interleaved
from stats import load as load_average
from stats import ms
from stats import stopwatch
from stats import Summary
from stats import table
from stats import us
from stats import wait_for_quiet
from targets import Scoreboard

from flask_serversession import ServerSession

BACKENDS = ("sqlite", "postgres", "redis", "filesystem")
USER_KEY = "_user_id"
USER = "4242"
USER_SESSIONS = 1_000
STORED = 1_000_000
#: Copying files is slow and takes disk space: the filesystem holds at most this many.
FILES_STORED = 100_000
LISTINGS = 7
LIST_LIMIT_MS = 50.0
WRITE_LIMIT = 1.10
#: Bounds the user's 1,000 creates through the backend.
CREATE_SECONDS = 300.0
# Redis databases of this section, clear of the scale section's.
REDIS_DB = 20


def _signed_in(app: Flask) -> str:
    """Store a signed-in session through the app; return its cookie."""

    @app.get("/signin")
    def signin() -> str:
        session.update(SEED)
        session[USER_KEY] = USER
        return "ok"

    status, headers, _ = call(app, make_environ("/signin"))
    cookie = session_cookie(headers)
    if not status.startswith("200") or cookie is None:
        raise RuntimeError(f"signing in failed: {status}")
    check_ok(app, make_environ("/write", cookie))
    return cookie


def _spec(places: Places, backend: str, tag: str, db: int, *, index: bool) -> Spec:
    base = places.spec("fss", backend, tag, redis_db=REDIS_DB + db)
    extra = {"SERVERSESSION_USER_KEY": USER_KEY} if index else {}
    return Spec(base.family, base.backend, base.location, base.table, extra)


def _runnable(places: Places, backends: t.Sequence[str]) -> list[str]:
    result = []
    for backend in [b for b in BACKENDS if b in backends]:
        reason = available(places, "fss", backend)
        if reason is None:
            result.append(backend)
        else:
            note(f"ServerSession {backend} is skipped: {reason}.")
    return result


@dataclasses.dataclass
class Listing:
    backend: str
    stored: int
    found: int
    load_seconds: float
    times: list[float]


def _fill_user(app: Flask) -> None:
    """Give the user ``USER_SESSIONS`` sessions in all, through the backend's ``create``."""
    backend = app.extensions["serversession"].backend
    with app.app_context():
        (info,) = ServerSession().user_sessions(USER)
    record = backend.load(info.storage_key)
    if record is None:
        raise RuntimeError("the signed-in session did not load back")
    record = dataclasses.replace(record, user=USER)
    deadline = time.monotonic() + CREATE_SECONDS
    for _ in range(USER_SESSIONS - 1):
        if time.monotonic() > deadline:
            raise RuntimeError(f"creating {USER_SESSIONS:,} sessions took over {CREATE_SECONDS} s")
        backend.create(secrets.token_hex(32), record)


def listing(places: Places, backend: str, stored: int) -> Listing | None:
    if backend == "filesystem":
        stored = min(stored, FILES_STORED)
    spec = _spec(places, backend, f"users{stored}", 0, index=True)
    try:
        app = build_app(spec)
    except Exception as e:  # a broken contender must not stop the others
        note(f"{spec.name} user listing is skipped: {type(e).__name__}: {e}")
        return None
    try:
        elapsed = stopwatch()
        _signed_in(app)
        _fill_user(app)
        others = stored - USER_SESSIONS
        if others > 0:
            bulk.fill(app, Spec(spec.family, spec.backend, spec.location, spec.table), others)
        loaded = elapsed()
        print(f"  loaded {stored:,} sessions into {backend} in {loaded:.1f} s", flush=True)
        times, found = [], 0
        with app.app_context():
            extension = ServerSession()
            extension.user_sessions(USER)  # warm connections and caches
            for _ in range(LISTINGS):
                start = time.perf_counter()
                found = len(extension.user_sessions(USER))
                times.append(time.perf_counter() - start)
        return Listing(backend, stored, found, loaded, times)
    finally:
        close_app(app)


def write_cost(
    places: Places, backends: t.Sequence[str], budget: Budget
) -> dict[str, tuple[Summary, Summary]]:
    """Time the write request with the index (``on``) and without (``off``), per backend."""
    apps: dict[str, Flask] = {}
    batches = {}
    try:
        for number, backend in enumerate(backends):
            for index in (True, False):
                name = f"{backend} {'on' if index else 'off'}"
                spec = _spec(places, backend, "userswrite", 1 + 2 * number + index, index=index)
                try:
                    app = build_app(spec)
                    apps[name] = app
                    batches[name] = batch(app, make_environ("/write", _signed_in(app)))
                except Exception as e:
                    note(f"{spec.name} write cost is skipped: {type(e).__name__}: {e}")
        results = interleaved(batches, budget)
    finally:
        for app in apps.values():
            close_app(app)
    pairs = {}
    for backend in backends:
        on, off = results.get(f"{backend} on"), results.get(f"{backend} off")
        if on is not None and off is not None:
            pairs[backend] = (on, off)
    return pairs


def run(
    places: Places,
    budget: Budget,
    backends: t.Sequence[str],
    board: Scoreboard,
    *,
    stored: int | None = None,
) -> None:
    runnable = _runnable(places, backends)
    if not runnable:
        note("the users section has no backend to run.")
        return
    stored = max(stored or STORED, USER_SESSIONS)
    listings = {}
    for backend in runnable:
        found = listing(places, backend, stored)
        if found is not None:
            listings[backend] = found
    wait_for_quiet("users write")
    before = load_average()
    writes = write_cost(places, runnable, budget)
    rows = []
    for backend in runnable:
        row = [backend, "-", "-", "-", "-", "-", "-", "-"]
        got = listings.get(backend)
        if got is not None:
            median = statistics.median(got.times)
            listed_ok = got.found == USER_SESSIONS and median * 1e3 < LIST_LIMIT_MS
            row[1:5] = [f"{got.stored:,}", f"{got.found:,}", ms(median), _mark(listed_ok)]
            subject = f"{backend}, {USER_SESSIONS:,} of {got.stored:,}"
            board.at_most("user_sessions()", subject, median * 1e3, LIST_LIMIT_MS, "ms")
            if got.found != USER_SESSIONS:
                board.exactly("user_sessions() count", subject, got.found, USER_SESSIONS)
        pair = writes.get(backend)
        if pair is not None:
            on, off = pair
            value = paired(on, off)
            ratio = f"{value:.2f}x {_mark(value <= WRITE_LIMIT)}"
            row[5:8] = [us(off.median), us(on.median), ratio]
            board.at_most("user index write cost", backend, value, WRITE_LIMIT, "x")
        rows.append(row)
    headers = (
        "backend", "stored", "listed", "list ms", f"< {LIST_LIMIT_MS:.0f} ms",
        "write us off", "write us on", f"on/off <= {WRITE_LIMIT:.2f}x",
    )  # fmt: skip
    title = (
        f"Users: user_sessions() of {USER_SESSIONS:,} sessions (median of {LISTINGS}),"
        f" write cost of the index; {before}, after: {load_average()}"
    )
    print(table(title, headers, rows), flush=True)


def _mark(met: bool) -> str:
    return "met" if met else "MISSED"
