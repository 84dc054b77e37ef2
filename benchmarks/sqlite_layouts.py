"""Compare SQLite table layouts for the session table: purge, reads, writes, size.

Run ``python benchmarks/sqlite_layouts.py --rows 1000000 --dir /tmp/somewhere``.
Each layout gets a file of its own in WAL mode with ``synchronous = NORMAL``
(as the backend sets them), ``rows`` live sessions of the seed's size with
random SHA-256 keys, and a tenth as many expired ones; then, through the bare
``sqlite3`` driver: reads by key and single-row updates (each its own
transaction) of random live keys, then a purge in the backend's batches.

Layouts: ``text key``, the backend's table (``key`` the primary key of a
rowid table, so a second index holds the keys); ``integer id``, an
``INTEGER PRIMARY KEY`` with the key as a ``UNIQUE`` column; ``without
rowid``, the table clustered on the key.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
import typing as t

LAYOUTS = {
    "text key": (
        'CREATE TABLE s ("key" VARCHAR(64) NOT NULL PRIMARY KEY, data TEXT NOT NULL,'
        " created_at DATETIME NOT NULL, expires_at DATETIME NOT NULL)"
    ),
    "integer id": (
        'CREATE TABLE s (id INTEGER PRIMARY KEY, "key" VARCHAR(64) NOT NULL UNIQUE,'
        " data TEXT NOT NULL, created_at DATETIME NOT NULL, expires_at DATETIME NOT NULL)"
    ),
    "without rowid": (
        'CREATE TABLE s ("key" VARCHAR(64) NOT NULL PRIMARY KEY, data TEXT NOT NULL,'
        " created_at DATETIME NOT NULL, expires_at DATETIME NOT NULL) WITHOUT ROWID"
    ),
}
DATA = (
    '{"user_id":"123","name":"\\"Ada Lovelace\\"","csrf_token":"\\"'
    + "5f0c" * 16
    + '\\""'
    + (',"roles":"[\\"admin\\",\\"editor\\"]","locale":"\\"en_GB\\"","counter":"0"}')
)
LIVE_UNTIL = "2099-01-01 00:00:00.000000"
EXPIRED_AT = "2000-01-01 00:00:00.000000"
NOW = "2026-01-01 00:00:00.000000"
BATCH = 2_000
SAMPLES = 2_000
CAP_SECONDS = 600.0
_FILL = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
    ' INSERT INTO s ("key", data, created_at, expires_at)'
    " SELECT lower(hex(randomblob(32))), ?, ?, ? FROM n"
)


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def fill(conn: sqlite3.Connection, rows: int, expires_at: str) -> None:
    done = 0
    while done < rows:
        n = min(200_000, rows - done)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_FILL, (n, DATA, NOW, expires_at))
        conn.execute("COMMIT")
        done += n


def timed(conn: sqlite3.Connection, keys: t.Sequence[str], statement: str, commit: bool) -> float:
    """Median seconds of ``statement`` for each key, within CAP_SECONDS."""
    seconds = []
    deadline = time.monotonic() + CAP_SECONDS
    for key in keys:
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        if commit:
            conn.execute("BEGIN IMMEDIATE")
        conn.execute(statement, (key,)).fetchall()
        if commit:
            conn.execute("COMMIT")
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    return seconds[len(seconds) // 2]


def purge(conn: sqlite3.Connection) -> tuple[int, float]:
    """Delete expired rows in the backend's batches (by rowid, or by key without one)."""
    has_rowid = conn.execute("SELECT sql FROM sqlite_master WHERE name = 's'").fetchone()
    by = '"key"' if "WITHOUT ROWID" in has_rowid[0] else "rowid"
    statement = f"DELETE FROM s WHERE {by} IN (SELECT {by} FROM s WHERE expires_at <= ? LIMIT ?)"
    removed, start = 0, time.perf_counter()
    deadline = time.monotonic() + CAP_SECONDS
    while time.monotonic() < deadline:
        conn.execute("BEGIN IMMEDIATE")
        n = conn.execute(statement, (NOW, BATCH)).rowcount
        conn.execute("COMMIT")
        removed += n
        if n < BATCH:
            break
    return removed, time.perf_counter() - start


def measure(directory: str, layout: str, rows: int) -> dict[str, t.Any]:
    path = os.path.join(directory, layout.replace(" ", "-") + ".sqlite")
    conn = connect(path)
    try:
        conn.execute(LAYOUTS[layout])
        conn.execute("CREATE INDEX s_expires ON s (expires_at)")
        start = time.perf_counter()
        fill(conn, rows, LIVE_UNTIL)
        fill(conn, rows // 9, EXPIRED_AT)
        filled = time.perf_counter() - start
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = os.path.getsize(path)
        keys = [
            k for (k,) in conn.execute('SELECT "key" FROM s ORDER BY random() LIMIT ?', (SAMPLES,))
        ]
        random.shuffle(keys)
        read = timed(
            conn, keys, 'SELECT data, created_at, expires_at FROM s WHERE "key" = ?', False
        )
        write = timed(conn, keys, """UPDATE s SET data = data WHERE "key" = ?""", True)
        removed, seconds = purge(conn)
        return {
            "layout": layout, "rows": rows + rows // 9, "fill s": filled,
            "bytes/row": size / (rows + rows // 9), "read us": read * 1e6,
            "write us": write * 1e6, "purged": removed, "purge s": seconds,
        }  # fmt: skip
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="live rows (default 1M)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    directory = args.dir or tempfile.mkdtemp(prefix="sqlite-layouts-")
    print(f"SQLite {sqlite3.sqlite_version}, {args.rows:,} live rows + a tenth as many expired")
    for layout in LAYOUTS:
        r = measure(directory, layout, args.rows)
        print(
            f"{r['layout']:14} rows {r['rows']:,}  fill {r['fill s']:.1f} s  "
            f"{r['bytes/row']:,.0f} B/row  read {r['read us']:.1f} us  "
            f"write {r['write us']:.1f} us  purged {r['purged']:,} in {r['purge s']:.2f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
