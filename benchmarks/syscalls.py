"""System calls per request on the filesystem, ours against Flask-Session 0.8, counted by strace.

Usage: python benchmarks/syscalls.py [--library DIR] [--list SCENARIO]

Each contender's app (Flask-ServerSession's filesystem backend and
Flask-Session's cachelib ``FileSystemCache(threshold=500)``, as in the micro
section) runs in its own process under ``strace -f``. For each scenario it
serves N requests after a warm-up, between two ``getppid()`` calls (which
nothing on these paths makes), and the script prints the system calls per
request between the markers, by name. With ``--list SCENARIO`` it also prints
the calls of one such request of each contender, as strace shows them. On a
VM where each filesystem call is expensive, this count is most of the cost.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

N = 20
SCENARIOS = ("untouched", "read", "write", "new")
CONTENDERS = {"fss": "ours", "fs": "Flask-Session"}
_CHILD = "BENCH_SYSCALLS_CHILD"
#: Per scenario: the count of each call, and the calls as strace printed them.
Segments = tuple[list[collections.Counter[str]], list[list[str]]]
_CALL = re.compile(r"^(?:\[pid +\d+\] |\d+ +)?([a-z_0-9]+)\((.*)$")


def child(family: str, location: str) -> None:
    """Serve N requests of each scenario between ``getppid()`` markers."""
    from apps import build_app
    from apps import make_environ
    from apps import seed_session
    from apps import Spec

    app = build_app(Spec(family, "filesystem", location))
    cookie = seed_session(app)
    for scenario in SCENARIOS:
        environ = make_environ(f"/{scenario}", None if scenario == "new" else cookie)
        for round_ in range(3 + N):
            if round_ == 3:
                os.getppid()
            result = app(environ.copy(), lambda *args: None)
            for _chunk in result:
                pass
            result.close()
        os.getppid()


def count(trace: str) -> Segments:
    """Split strace's output at the markers; count calls by name in each segment."""
    counts: list[collections.Counter[str]] = []
    lines: list[list[str]] = []
    inside = False
    for line in trace.splitlines():
        match = _CALL.match(line)
        if match is None:
            continue
        name = match.group(1)
        if name == "getppid":
            if inside:
                inside = False
                continue
            inside = True
            counts.append(collections.Counter())
            lines.append([])
            continue
        if inside:
            counts[-1][name] += 1
            lines[-1].append(line)
    return counts, lines


def measure(family: str, library: str | None) -> Segments:
    """Run ``family``'s app under strace; its calls per scenario (see :func:`count`)."""
    directory = tempfile.mkdtemp(prefix="serversession-syscalls-")
    try:
        out = os.path.join(directory, "strace.out")
        sessions = os.path.join(directory, "sessions")
        env = dict(os.environ, **{_CHILD: family})
        if library:
            env["PYTHONPATH"] = os.pathsep.join(
                [os.path.abspath(library), env.get("PYTHONPATH", "")]
            )
        me = os.path.abspath(__file__)
        argv = ["strace", "-f", "-qq", "-o", out, sys.executable, me, sessions]
        subprocess.run(argv, check=True, env=env, timeout=300)
        with open(out, encoding="utf-8", errors="replace") as f:
            return count(f.read())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str]) -> int:
    if os.environ.get(_CHILD):
        child(os.environ[_CHILD], argv[0])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--library", help="import flask_serversession from this directory")
    parser.add_argument("--list", choices=SCENARIOS, help="print one request's calls")
    args = parser.parse_args(argv)
    if shutil.which("strace") is None:
        print("strace is not installed (apt-get install strace)", file=sys.stderr)
        return 2
    results = {family: measure(family, args.library) for family in CONTENDERS}
    print(f"System calls per request on the filesystem (strace -f, mean of {N} requests)")
    print(f"{'scenario':10} {'ours':>6} {'Flask-Session':>14}   ours by call")
    for i, scenario in enumerate(SCENARIOS):
        ours, theirs = results["fss"][0][i], results["fs"][0][i]
        by_call = ", ".join(f"{name} {n / N:g}" for name, n in sorted(ours.items()))
        mine, other = sum(ours.values()) / N, sum(theirs.values()) / N
        print(f"{scenario:10} {mine:6.1f} {other:14.1f}   {by_call}")
    for family, label in CONTENDERS.items():
        counts = results[family][0]
        print(f"\n{label} by call: " + "; ".join(
            f"{s}: " + ", ".join(f"{k} {v / N:g}" for k, v in sorted(counts[i].items()))
            for i, s in enumerate(SCENARIOS)
        ))  # fmt: skip
    if args.list:
        i = SCENARIOS.index(args.list)
        for family, label in CONTENDERS.items():
            segment = results[family][1][i]
            per = len(segment) // N
            print(f"\nOne {args.list} request, {label}:")
            for line in segment[-per:]:
                print("  " + line[:160])
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main(sys.argv[1:]))
