"""Storage calls and round trips per request, counted rather than timed."""

from __future__ import annotations

import collections
import os
import typing as t
from contextlib import contextmanager
from contextlib import ExitStack

from apps import call
from apps import close_app
from apps import make_environ
from apps import Spec
from flask import Flask
from lineup import lineup
from lineup import Places
from micro import prepare
from micro import SCENARIOS
from stats import table

REQUESTS = 20
Counter = collections.Counter[str]


#: The backend methods a request may call, each counted as one storage call.
STORAGE_METHODS = ("load", "create", "update", "touch", "take", "delete")


def _wrap_method(stack: ExitStack, owner: t.Any, name: str, counts: Counter, label: str) -> None:
    original = getattr(owner, name)

    def counted(*args: t.Any, **kwargs: t.Any) -> t.Any:
        counts[label] += 1
        return original(*args, **kwargs)

    setattr(owner, name, counted)
    stack.callback(setattr, owner, name, original)


def count_storage_calls(app: Flask, spec: Spec, counts: Counter) -> t.Callable[[], None]:
    """Count the session layer's calls into its storage; return an undo function."""
    stack = ExitStack()
    if spec.family == "fss":
        # Counted on the instance, so the store keeps its own backend object.
        backend = app.extensions["serversession"].backend
        for name in STORAGE_METHODS:
            _wrap_method(stack, backend, name, counts, "calls")
            stack.callback(vars(backend).pop, name, None)
        return stack.close
    if spec.family == "fs":
        interface = app.session_interface
        for name in ("_retrieve_session_data", "_upsert_session", "_delete_session"):
            _wrap_method(stack, interface, name, counts, "calls")
    return stack.close


@contextmanager
def count_wire(counts: Counter) -> t.Iterator[None]:
    """Count SQL statements and transaction ends, Redis round trips and fsyncs."""
    import redis.connection
    import sqlalchemy as sa
    from sqlalchemy import event

    def statement(*args: t.Any) -> None:
        counts["sql"] += 1

    def transaction_end(*args: t.Any) -> None:
        counts["tx"] += 1

    listeners = [
        ("before_cursor_execute", statement),
        ("commit", transaction_end),
        ("rollback", transaction_end),
    ]
    for name, fn in listeners:
        event.listen(sa.engine.Engine, name, fn)
    with ExitStack() as stack:
        for name, fn in listeners:
            stack.callback(event.remove, sa.engine.Engine, name, fn)
        connection = redis.connection.AbstractConnection
        _wrap_method(stack, connection, "send_packed_command", counts, "redis")
        _wrap_method(stack, os, "fsync", counts, "fsync")
        yield


def redis_commands(spec: Spec) -> t.Callable[[], int]:
    """Return a function giving the Redis server's total command count so far."""
    import redis

    client = redis.Redis.from_url(spec.location)

    def total() -> int:
        stats = client.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")

    return total


def measure(app: Flask, spec: Spec, cookie: str, scenario: str) -> dict[str, float]:
    counts: Counter = collections.Counter()
    environ = make_environ(f"/{scenario}", None if scenario == "new" else cookie)
    commands = redis_commands(spec) if spec.backend == "redis" else None
    call(app, environ)  # warm: first-use table creation and script loading are not counted
    undo = count_storage_calls(app, spec, counts)
    before = commands() if commands else 0
    try:
        with count_wire(counts):
            for _ in range(REQUESTS):
                call(app, environ)
    finally:
        undo()
    if commands:
        counts["commands"] = commands() - before
    return {k: v / REQUESTS for k, v in counts.items()}


def describe(spec: Spec, counts: t.Mapping[str, float]) -> str:
    """One table cell: storage calls, then what went over the wire."""

    def n(key: str) -> str:
        return f"{counts.get(key, 0):g}"

    if spec.family == "cookie":
        return "0"
    if spec.backend in ("sqlite", "postgres"):
        wire = f"{n('sql')} stmt + {n('tx')} tx"
    elif spec.backend == "redis":
        wire = f"{n('redis')} rt, {n('commands')} cmd"
    elif spec.backend == "filesystem":
        wire = f"{n('fsync')} fsync"
    else:
        wire = "in-process"
    return f"{n('calls')} | {wire}"


def run(places: Places, backends: t.Sequence[str]) -> None:
    ready = prepare(lineup(places, "roundtrips", backends=backends))
    rows = []
    try:
        for spec, (app, cookie) in ready.items():
            cells = [describe(spec, measure(app, spec, cookie, s)) for s in SCENARIOS]
            rows.append((spec.name, *cells))
    finally:
        for app, _cookie in ready.values():
            close_app(app)
    title = (
        "Storage calls | round trips per request (stmt: SQL statements, tx: COMMIT/ROLLBACK,"
        " rt: Redis round trips, cmd: Redis commands incl. those run by scripts)"
    )
    print(table(title, ("contender", *SCENARIOS), rows), flush=True)
