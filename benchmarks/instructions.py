"""CPU instructions per request, counted by callgrind: a figure that load does not move.

Each contender's app runs in its own process (``counted.py``) under
``valgrind --tool=callgrind``. For each scenario it serves ``N`` requests,
then ``5 * N``, between markers at which callgrind writes its counts; the
figure is ``(total(5N) - total(N)) / 4N``, which cancels start-up, imports,
set-up and the markers themselves. Only the client process is counted: the
Redis and PostgreSQL servers' own work is not, and neither is the kernel's.
Counts do not depend on what else the machine runs, so two runs differ by a
fraction of a percent (garbage collections, the lengths of timestamps); a
change to the code shows up exactly.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import typing as t
from dataclasses import dataclass

from apps import Spec
from lineup import lineup
from lineup import note
from lineup import Places
from stats import stopwatch
from stats import table
from targets import Scoreboard

SCENARIOS = ("untouched", "read", "write", "new")
#: Ours over Flask-Session's instructions, at most, on these scenarios.
TARGET = 0.90
TARGET_SCENARIOS = ("read", "write", "new")
#: Requests of the first segment; the second has five times as many.
DEFAULT_REQUESTS = 20
QUICK_REQUESTS = 8
#: One contender's process may take this long under callgrind.
TIMEOUT = 900.0
_TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Contender:
    """A spec and the Redis reply parser its process uses."""

    spec: Spec
    parser: str = ""

    @property
    def name(self) -> str:
        return f"{self.spec.name} ({self.parser})" if self.parser else self.spec.name

    @property
    def backend(self) -> str:
        return f"{self.spec.backend} ({self.parser})" if self.parser else self.spec.backend


def hiredis_installed() -> bool:
    from apps import module_available

    return module_available("hiredis")


def contenders(places: Places, backends: t.Sequence[str]) -> list[Contender]:
    """Every runnable contender; Redis ones with each reply parser that is installed."""
    parsers = ["hiredis", "Python parser"] if hiredis_installed() else ["Python parser"]
    if "redis" in backends and len(parsers) == 1:
        note("redis-py parses replies in Python: hiredis is not installed (pip install hiredis).")
    result = []
    for spec in lineup(places, "instr", backends=backends):
        if spec.backend == "redis":
            result += [Contender(spec, parser) for parser in parsers]
        else:
            result.append(Contender(spec))
    return result


def count(contender: Contender, n: int, directory: str) -> dict[str, float]:
    """Run one contender under callgrind; return instructions per request by scenario."""
    prefix = os.path.join(directory, re.sub(r"\W+", "-", contender.name).strip("-"))
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "counted.py")
    argv = [
        "valgrind", "--tool=callgrind", "--dump-before=getppid",
        f"--callgrind-out-file={prefix}.out",
        sys.executable, script, contender.spec.to_json(), str(n), *SCENARIOS,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")
    if contender.parser == "Python parser":
        env["BENCH_NO_HIREDIS"] = "1"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    if result.returncode != 0 or "ok" not in result.stdout.split():
        raise RuntimeError(f"exit {result.returncode}: {result.stderr.strip()[-400:]}")
    totals = dump_totals(prefix + ".out")
    if len(totals) != 3 * len(SCENARIOS):
        raise RuntimeError(f"{len(totals)} callgrind dumps, not {3 * len(SCENARIOS)}")
    per_request = {}
    for i, scenario in enumerate(SCENARIOS):
        short, long = totals[3 * i + 1], totals[3 * i + 2]
        per_request[scenario] = (long - short) / (4 * n)
    return per_request


def dump_totals(base: str) -> list[int]:
    """The ``totals`` of the numbered dumps ``base.1``, ``base.2``, ..., in order."""
    numbered = []
    for path in glob.glob(glob.escape(base) + ".*"):
        suffix = path.rsplit(".", 1)[1]
        if suffix.isdigit():
            numbered.append((int(suffix), path))
    totals = []
    for _, path in sorted(numbered):
        with open(path) as f:
            match = _TOTALS.search(f.read())
        if match is None:
            raise RuntimeError(f"{path} holds no totals line")
        totals.append(int(match.group(1)))
    return totals


def kilo(instructions: float | None) -> str:
    return "-" if instructions is None else f"{instructions / 1000:,.0f}"


def render_counts(results: t.Mapping[Contender, t.Mapping[str, float]], n: int) -> str:
    rows = [(c.name, *(kilo(r.get(s)) for s in SCENARIOS)) for c, r in results.items()]
    title = (
        "Instructions per request, thousands (callgrind: (total(5N) - total(N)) / 4N,"
        f" N = {n}; untouched: Flask's own machinery)"
    )
    return table(title, ("contender", *SCENARIOS), rows)


def render_against_flask_session(
    results: t.Mapping[Contender, t.Mapping[str, float]], board: Scoreboard
) -> str:
    """Ours / Flask-Session per backend and scenario; target at most :data:`TARGET`."""
    ours = {c.backend: r for c, r in results.items() if c.spec.family == "fss"}
    theirs = {c.backend: r for c, r in results.items() if c.spec.family == "fs"}
    rows = []
    for backend, mine in ours.items():
        other = theirs.get(backend)
        if other is None:
            continue
        cells = []
        for scenario in TARGET_SCENARIOS:
            ratio = mine[scenario] / other[scenario]
            board.at_most("instructions ours/Flask-Session", f"{scenario}: {backend}", ratio,
                          TARGET, "x")  # fmt: skip
            mark = "" if ratio <= TARGET else " !"
            cells.append(f"{kilo(mine[scenario])} / {kilo(other[scenario])} = {ratio:.2f}x{mark}")
        rows.append((backend, *cells))
    title = (
        "Instructions per request, thousands, ours / Flask-Session 0.8"
        f" (target at most {TARGET:.2f}x; '!': missed)"
    )
    return table(title, ("backend", *TARGET_SCENARIOS), rows)


def run(
    places: Places, backends: t.Sequence[str], board: Scoreboard, *, quick: bool = False,
    requests: int | None = None,
) -> dict[Contender, dict[str, float]]:  # fmt: skip
    if shutil.which("valgrind") is None:
        note("the instructions section is skipped: valgrind is not installed.")
        return {}
    n = requests or (QUICK_REQUESTS if quick else DEFAULT_REQUESTS)
    directory = tempfile.mkdtemp(prefix="callgrind-", dir=places.directory)
    results: dict[Contender, dict[str, float]] = {}
    elapsed = stopwatch()
    for contender in contenders(places, backends):
        try:
            results[contender] = count(contender, n, directory)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            note(f"counting {contender.name} failed: {type(e).__name__}: {e}")
        finally:
            for path in glob.glob(os.path.join(directory, "*")):
                os.remove(path)
    if results:
        print(render_counts(results, n), flush=True)
        print(render_against_flask_session(results, board), flush=True)
        print(f"(counted in {elapsed():.0f} s)\n", flush=True)
    return results
