"""Compare the PostgreSQL session table with one range-partitioned by an absolute expiry bound.

Run ``PYTHONPATH=$PWD python benchmarks/pg_partitions.py --rows 1000000``. It starts its own
PostgreSQL on loopback (stopped at the end), and through the bare ``psycopg``
driver in autocommit mode, as the backend runs:

- ``plain``: the backend's table (``key`` the primary key, ``expires_at``
  indexed), with ``rows`` live sessions and a tenth as many expired; purged
  with the backend's batched ``DELETE``.
- ``partitioned``: the same columns plus ``bucket``, the period in which a
  session was created, which bounds its life: no session lives past
  ``created_at + SERVERSESSION_ABSOLUTE_LIFETIME``, so once a bucket's last
  bound has passed, its whole partition can go. The table is partitioned by
  range of ``bucket`` into ``--partitions`` partitions (the primary key is
  ``(key, bucket)``: a partitioned table's keys must hold the partition
  key); the oldest partition holds the expired sessions, a tenth of the
  rows, and is purged by dropping it (plain ``DROP TABLE``, and ``DETACH
  PARTITION ... CONCURRENTLY`` then ``DROP``, each on a fresh copy).

For each: the plan of a load by key (index probes, partitions scanned), read
and write latency (median of random live keys), the purge's time and the
slowest save of a thread that keeps saving one live session meanwhile.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
import typing as t

import psycopg
import sqlalchemy as sa
from floors import psycopg_conninfo
from servers import PostgresServer
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex
from sqlalchemy.schema import CreateTable
from stats import load

from flask_serversession.backends.sql import make_table

DATA = '{"user_id":"123","name":"\\"Ada Lovelace\\"","csrf_token":"\\"' + "5f0c" * 16 + '\\""}'
SAMPLES = 2_000
#: Every timed phase stops after this many seconds.
CAP_SECONDS = 300.0
BATCH = 2_000
WRITER_CAP_WRITES = 500_000
_DELETE = (
    "DELETE FROM s WHERE ctid = ANY(ARRAY(SELECT ctid FROM s WHERE expires_at <= now()"
    " LIMIT %s FOR UPDATE SKIP LOCKED))"
)


def plain_ddl() -> list[str]:
    """The backend's own table, named ``s``, as it creates it."""
    table = make_table("s", sa.MetaData())
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    statements = [str(CreateTable(table).compile(dialect=dialect))]
    statements += [str(CreateIndex(i).compile(dialect=dialect)) for i in table.indexes]
    return statements


def partitioned_ddl(partitions: int) -> list[str]:
    statements = [
        "CREATE TABLE s (key varchar(64) NOT NULL, bucket integer NOT NULL,"
        " data text NOT NULL, created_at timestamptz NOT NULL, expires_at timestamptz NOT NULL,"
        " PRIMARY KEY (key, bucket)) PARTITION BY RANGE (bucket)",
        "CREATE INDEX ix_s_expires_at ON s (expires_at)",
    ]
    for n in range(partitions):
        statements.append(f"CREATE TABLE s_{n} PARTITION OF s FOR VALUES FROM ({n}) TO ({n + 1})")
    return statements


def fill(conn: psycopg.Connection[t.Any], layout: str, rows: int, partitions: int) -> None:
    """``rows`` live sessions, and rows // 9 expired ones (in bucket 0 when partitioned)."""
    expired = rows // 9
    live_buckets = max(partitions - 1, 1)
    bucket = "0" if layout == "plain" else f"1 + i %% {live_buckets}"
    columns = "key, data, created_at, expires_at"
    if layout != "plain":
        columns = "key, bucket, data, created_at, expires_at"
    for count, live, salt in ((rows, True, "live"), (expired, False, "old")):
        done = 0
        while done < count:
            n = min(200_000, count - done)
            expires = "now() + interval '1 day'" if live else "now() - interval '1 hour'"
            which = bucket if live else "0"
            values = "encode(sha256(convert_to(%s || i::text, 'UTF8')), 'hex')"
            if layout != "plain":
                values += f", {which}"
            conn.execute(
                f"INSERT INTO s ({columns}) SELECT {values}, %s, now() - interval '1 day',"
                f" {expires} FROM generate_series(%s::bigint, %s::bigint) AS i",
                (salt, DATA, done + 1, done + n),
            )
            done += n
    conn.execute("VACUUM ANALYZE s")
    conn.execute("CHECKPOINT")


def live_keys(conn: psycopg.Connection[t.Any], layout: str) -> list[tuple[str, int]]:
    bucket = "0" if layout == "plain" else "bucket"
    rows = conn.execute(
        f"SELECT key, {bucket} FROM s TABLESAMPLE SYSTEM (1) WHERE expires_at > now() LIMIT %s",
        (SAMPLES,),
    ).fetchall()
    random.shuffle(rows)
    return [(str(k), int(b)) for k, b in rows]


def lookup(layout: str, with_bucket: bool) -> str:
    where = "key = %s AND bucket = %s" if with_bucket else "key = %s"
    return f"SELECT data, created_at, expires_at FROM s WHERE {where} AND expires_at > now()"


def plan_of(conn: psycopg.Connection[t.Any], statement: str, args: tuple[t.Any, ...]) -> str:
    """Index probes and partitions of one load, from its plan as run (generic, as prepared)."""
    conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, args).fetchone()
    finally:
        conn.execute("RESET plan_cache_mode")
    probes, relations, removed = 0, set(), 0

    def walk(node: dict[str, t.Any]) -> None:
        nonlocal probes, removed
        if "Index" in node["Node Type"] and node.get("Actual Loops", 0) > 0:
            probes += int(node["Actual Loops"])
            relations.add(node.get("Relation Name"))
        removed += int(node.get("Subplans Removed", 0))
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan[0][0]["Plan"])
    return f"{probes} index probe(s) in {len(relations)} partition(s), {removed} pruned"


def median_seconds(
    conn: psycopg.Connection[t.Any], statement: str, args: t.Sequence[tuple[t.Any, ...]]
) -> float:
    taken = []
    deadline = time.monotonic() + CAP_SECONDS
    for values in args:
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        cursor = conn.execute(statement, values, prepare=True)
        if cursor.description is not None:
            cursor.fetchall()
        taken.append(time.perf_counter() - start)
    taken.sort()
    return taken[len(taken) // 2]


class Saver(threading.Thread):
    """Saves one live session in a loop on its own connection; keeps the slowest save."""

    def __init__(self, conninfo: str, statement: str, values: tuple[t.Any, ...]) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.statement, self.values = statement, values
        self.stopping = threading.Event()
        self.slowest = 0.0
        self.saves = 0

    def run(self) -> None:
        deadline = time.monotonic() + CAP_SECONDS
        while not self.stopping.is_set() and self.saves < WRITER_CAP_WRITES:
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            self.conn.execute(self.statement, self.values, prepare=True)
            self.slowest = max(self.slowest, time.perf_counter() - start)
            self.saves += 1
        self.conn.close()


def purge(conn: psycopg.Connection[t.Any], how: str) -> int:
    """Remove the expired sessions as ``how`` says; return the rows removed (dropped: counted)."""
    if how == "batched DELETE":
        removed = 0
        deadline = time.monotonic() + CAP_SECONDS
        while time.monotonic() < deadline:
            n = conn.execute(_DELETE, (BATCH,)).rowcount
            removed += n
            if n < BATCH:
                break
        return removed
    count = int(conn.execute("SELECT count(*) FROM s_0").fetchone()[0])
    if how == "DETACH CONCURRENTLY, DROP":
        conn.execute("ALTER TABLE s DETACH PARTITION s_0 CONCURRENTLY")
    conn.execute("DROP TABLE s_0")
    return count


def measure(
    server: PostgresServer, layout: str, how: str, rows: int, partitions: int
) -> dict[str, t.Any]:
    conninfo = psycopg_conninfo(server.url())
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS s")
        for statement in plain_ddl() if layout == "plain" else partitioned_ddl(partitions):
            conn.execute(statement)
        start = time.perf_counter()
        fill(conn, layout, rows, partitions)
        filled = time.perf_counter() - start
        size = int(conn.execute("SELECT pg_total_relation_size('s')").fetchone()[0])
        if layout != "plain":
            size = int(
                conn.execute(
                    "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
                    " WHERE inhparent = 's'::regclass"
                ).fetchone()[0]
            )
        keys = live_keys(conn, layout)
        result: dict[str, t.Any] = {"layout": layout, "purge": how, "fill s": filled}
        result["B/row"] = size / (rows + rows // 9)
        key, bucket = keys[0]
        result["plan by key"] = plan_of(conn, lookup(layout, False), (key,))
        by_key = [(k,) for k, _ in keys]
        result["read us"] = median_seconds(conn, lookup(layout, False), by_key) * 1e6
        save = "UPDATE s SET data = data, expires_at = now() + interval '1 day' WHERE key = %s"
        if layout != "plain":
            result["plan by key+bucket"] = plan_of(conn, lookup(layout, True), (key, bucket))
            result["read key+bucket us"] = median_seconds(conn, lookup(layout, True), keys) * 1e6
            save += " AND bucket = %s"
        values = by_key if layout == "plain" else keys
        result["write us"] = median_seconds(conn, save, values) * 1e6
        saver = Saver(conninfo, save, values[0])
        saver.start()
        time.sleep(2.0)
        result["slowest save before ms"] = saver.slowest * 1e3
        saver.slowest = 0.0
        start = time.perf_counter()
        result["purged"] = purge(conn, how)
        result["purge ms"] = (time.perf_counter() - start) * 1e3
        result["slowest save during ms"] = saver.slowest * 1e3
        saver.stopping.set()
        saver.join(CAP_SECONDS)
        conn.execute("DROP TABLE s")
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="live rows (default 1M)")
    parser.add_argument(
        "--partitions", type=int, default=10, help="partitions, the oldest expired (default 10)"
    )
    args = parser.parse_args()
    server = PostgresServer()
    try:
        print(
            f"PostgreSQL {server.version()}, {args.rows:,} live rows + a tenth as many expired;"
            f" {load()}"
        )
        runs = [
            ("plain", "batched DELETE"),
            ("partitioned", "DROP"),
            ("partitioned", "DETACH CONCURRENTLY, DROP"),
        ]
        for layout, how in runs:
            r = measure(server, layout, how, args.rows, args.partitions)
            print(
                "  ".join(
                    f"{k} {v:,.1f}" if isinstance(v, float) else f"{k}: {v}" for k, v in r.items()
                ),
                flush=True,
            )
        print(f"after: {load()}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
