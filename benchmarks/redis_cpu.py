"""Redis' own CPU per request, from the server's ``INFO commandstats``.

On a shared host and at scale, Redis' CPU is the budget, not the client's.
Each round resets the server's statistics (``CONFIG RESETSTAT``), runs the
same requests through one contender's app, and reads what the server spent
on each command: ``usec_per_call`` and calls per request. A script's
``evalsha`` time includes the commands it runs, which are listed too (marked
"in script") but not added again: a request's total is the sum over the
commands its client sent. ``INFO cpu`` (the process's user + system time)
gives the whole server's CPU per request, reading sockets and replying
included. Figures are medians over rounds, the contenders' order rotating
round by round; compare them within one run only. Instructions per request,
which the load does not move, are counted on a server under callgrind
(``redis_counted.py``).
"""

from __future__ import annotations

import functools
import statistics
import typing as t
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field

from apps import build_app
from apps import call
from apps import check_ok
from apps import close_app
from apps import make_environ
from apps import seed_session
from apps import Spec
from lineup import lineup
from lineup import note
from lineup import Places
from redis_counted import CountedRedis
from servers import ServerUnavailable
from stats import load
from stats import table
from stats import wait_for_quiet
from targets import Scoreboard

#: The requests measured: change one key of the seven-key session, and create one.
SCENARIOS = ("write", "new")
TARGET = "Redis server CPU per write within 3x of Flask-Session's SET"
_IGNORED = {"info", "config|resetstat"}


@dataclass
class Round:
    """What the server counted for ``requests`` requests of one contender."""

    requests: int
    stats: dict[str, dict[str, float]]
    sent: set[str]
    cpu_us: float

    def total_us(self) -> float:
        """Microseconds of command time per request, counting each client command once."""
        return sum(s["usec"] for name, s in self.stats.items() if name in self.sent) / self.requests


@dataclass
class Figures:
    rounds: list[Round] = field(default_factory=list)

    def median(self, value: t.Callable[[Round], float]) -> float:
        return statistics.median(value(r) for r in self.rounds)

    def commands(self) -> list[str]:
        """Every command seen, client ones first, each group by time spent."""
        names = {name for r in self.rounds for name in r.stats}
        sent = {name for r in self.rounds for name in r.sent}
        return sorted(names, key=lambda n: (n not in sent, -self.per_request(n, "usec")))

    def per_call(self, name: str) -> float:
        return self.median(lambda r: r.stats.get(name, {}).get("usec_per_call", 0.0))

    def per_request(self, name: str, key: str) -> float:
        return self.median(lambda r: r.stats.get(name, {}).get(key, 0.0) / r.requests)

    def sent(self, name: str) -> bool:
        return any(name in r.sent for r in self.rounds)


@contextmanager
def client_commands() -> t.Iterator[set[str]]:
    """Collect the names of the commands redis-py sends meanwhile."""
    import redis.connection

    names: set[str] = set()
    connection = redis.connection.AbstractConnection
    send_command, pack_commands = connection.send_command, connection.pack_commands
    send_packed_command = connection.send_packed_command

    def one(self: t.Any, *args: t.Any, **kwargs: t.Any) -> None:
        names.add(_name(args))
        send_command(self, *args, **kwargs)

    def packed(self: t.Any, command: t.Any, *args: t.Any, **kwargs: t.Any) -> None:
        # What the backend packs itself (its held connections): the first
        # bulk string of each packed command, "*N\r\n$L\r\nNAME\r\n...".
        for item in [command] if isinstance(command, (bytes, str)) else command:
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts = data.split(b"\r\n", 3)
            if data.startswith(b"*") and len(parts) > 2:
                names.add(_name([parts[2]]))
        send_packed_command(self, command, *args, **kwargs)

    def many(self: t.Any, commands: t.Any) -> t.Any:  # a pipeline's
        commands = list(commands)
        names.update(_name(args) for args in commands)
        return pack_commands(self, commands)

    connection.send_command = one  # type: ignore[method-assign]
    connection.pack_commands = many  # type: ignore[method-assign]
    connection.send_packed_command = packed  # type: ignore[method-assign]
    try:
        yield names
    finally:
        connection.send_command = send_command  # type: ignore[method-assign]
        connection.pack_commands = pack_commands  # type: ignore[method-assign]
        connection.send_packed_command = send_packed_command  # type: ignore[method-assign]


def _name(args: t.Sequence[t.Any]) -> str:
    name = args[0]
    return (name.decode() if isinstance(name, bytes) else str(name)).lower()


def _server_cpu(admin: t.Any) -> float:
    cpu = admin.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def measure(admin: t.Any, app: t.Any, environ: dict[str, t.Any], requests: int) -> Round:
    """Run ``requests`` requests from a clean slate of server statistics."""
    check_ok(app, environ)  # scripts loaded, connections made: not counted
    admin.config_resetstat()
    before = _server_cpu(admin)
    with client_commands() as sent:
        for _ in range(requests):
            call(app, environ)
    after = _server_cpu(admin)
    stats = {
        name.removeprefix("cmdstat_"): {k: float(v) for k, v in values.items()}
        for name, values in admin.info("commandstats").items()
    }
    for name in _IGNORED:
        stats.pop(name, None)
    return Round(requests, stats, sent - _IGNORED, (after - before) * 1e6 / requests)


def run(
    places: Places,
    board: Scoreboard,
    *,
    quick: bool = False,
    rounds: int | None = None,
    requests: int | None = None,
) -> None:
    import redis

    if places.servers.redis is None:
        note("The redis-cpu section is skipped: no Redis server.")
        return
    specs = lineup(places, "redis-cpu", families=("fss", "fs"), backends=("redis",))
    if len(specs) < 2:
        note("The redis-cpu section is skipped: it needs both contenders.")
        return
    rounds = rounds or (5 if quick else 9)
    requests = requests or (500 if quick else 2000)
    admin = redis.Redis.from_url(places.servers.redis.url())
    apps = {spec: build_app(spec) for spec in specs}
    wait_for_quiet("redis-cpu")
    started = load()
    figures: dict[tuple[str, Spec], Figures] = {}
    try:
        cookies = {spec: seed_session(app) for spec, app in apps.items()}
        for index in range(rounds):
            order = specs[index % len(specs) :] + specs[: index % len(specs)]
            for scenario in SCENARIOS:
                for spec in order:
                    cookie = None if scenario == "new" else cookies[spec]
                    environ = make_environ(f"/{scenario}", cookie)
                    done = measure(admin, apps[spec], environ, requests)
                    figures.setdefault((scenario, spec), Figures()).rounds.append(done)
    finally:
        for app in apps.values():
            close_app(app)
        admin.close()
    ours, theirs = specs
    print(_commands_table(figures, specs, rounds, requests, started), flush=True)
    print(_summary_table(figures, ours, theirs, board), flush=True)
    counted = instructions(places.directory, 100 if quick else 300)
    if counted is not None:
        print(_instructions_table(counted, ours, theirs), flush=True)


def instructions(directory: str, requests: int) -> dict[str, float] | None:
    """Server instructions per request by "scenario family", and per call of
    Flask-Session's ``SET`` ("set") and of a ``PING`` ("ping"), on a
    redis-server under callgrind; None when it cannot run here."""
    import redis

    try:
        server = CountedRedis(directory)
    except ServerUnavailable as e:
        note(f"Redis instructions are skipped: {e}.")
        return None
    counts: dict[str, float] = {}
    apps: list[t.Any] = []
    client = redis.Redis.from_url(server.url())
    try:
        idle = server.idle()
        for family in ("fss", "fs"):
            spec = Spec(family, "redis", server.url(), f"redis-cpu-counted:{family}:")
            app = build_app(spec)
            apps.append(app)
            cookie = seed_session(app)
            for scenario in SCENARIOS:
                environ = make_environ(f"/{scenario}", None if scenario == "new" else cookie)
                check_ok(app, environ)
                one = functools.partial(call, app, environ)
                counts[f"{scenario} {family}"] = server.count(requests, one, idle)
        # Flask-Session's SET alone: its stored session, written again as it writes it.
        (name,) = [
            n for n in client.scan_iter(match="redis-cpu-counted:fs:*") if client.ttl(n) > 0
        ][:1]
        value, ttl = client.get(name), client.ttl(name)
        counts["set"] = server.count(requests, lambda: client.set(name, value, ex=ttl), idle)
        counts["ping"] = server.count(requests, client.ping, idle)
    finally:
        for app in apps:
            close_app(app)
        client.close()
        server.stop()
    return counts


def _commands_table(
    figures: dict[tuple[str, Spec], Figures],
    specs: list[Spec],
    rounds: int,
    requests: int,
    started: str,
) -> str:
    rows = []
    for scenario in SCENARIOS:
        for spec in specs:
            found = figures[(scenario, spec)]
            for name in found.commands():
                rows.append((
                    scenario,
                    spec.name,
                    name if found.sent(name) else f"  {name} (in script)",
                    f"{found.per_request(name, 'calls'):.2f}",
                    f"{found.per_call(name):.2f}",
                    f"{found.per_request(name, 'usec'):.2f}",
                ))  # fmt: skip
    title = (
        f"Redis INFO commandstats per request, median of {rounds} rounds of {requests}"
        f" requests (load {started} before, {load()} after)"
    )
    headers = ("scenario", "contender", "command", "calls/req", "usec_per_call", "usec/req")
    return table(title, headers, rows)


def _instructions_table(counts: dict[str, float], ours: Spec, theirs: Spec) -> str:
    rows = []
    their_set = counts["set"]
    for scenario in SCENARIOS:
        mine, other = counts[f"{scenario} fss"], counts[f"{scenario} fs"]
        rows.append((
            scenario,
            f"{mine / 1000:,.1f}",
            f"{other / 1000:,.1f}",
            f"{mine / other:.2f}x",
            f"{their_set / 1000:,.1f}",
            f"{mine / their_set:.2f}x",
        ))  # fmt: skip
    title = (
        f"Redis server instructions per request, thousands (callgrind, user space, less the"
        f" idle server's; a round trip alone, PING, is {counts['ping'] / 1000:,.1f}):"
        f" {ours.name} against {theirs.name}"
    )
    headers = ("scenario", "ours", "theirs", "ratio", "their SET", "ours / SET")
    return table(title, headers, rows)


def _summary_table(
    figures: dict[tuple[str, Spec], Figures], ours: Spec, theirs: Spec, board: Scoreboard
) -> str:
    rows = []
    for scenario in SCENARIOS:
        mine, other = figures[(scenario, ours)], figures[(scenario, theirs)]
        total, other_total = mine.median(Round.total_us), other.median(Round.total_us)
        cpu, other_cpu = mine.median(lambda r: r.cpu_us), other.median(lambda r: r.cpu_us)
        # Guards against an empty table when a round counted nothing.
        other_total, other_cpu = other_total or float("nan"), other_cpu or float("nan")
        their_set = other.per_call("set") or float("nan")
        rows.append((
            scenario,
            f"{total:.2f}",
            f"{other_total:.2f}",
            f"{total / other_total:.2f}x",
            f"{their_set:.2f}",
            f"{total / their_set:.2f}x",
            f"{mine.per_call('evalsha') / their_set:.2f}x",
            f"{cpu:.1f}",
            f"{other_cpu:.1f}",
            f"{cpu / other_cpu:.2f}x",
        ))  # fmt: skip
        if scenario == "write":
            board.at_most(TARGET, ours.name, total / their_set, 3.0, "x")
    title = (
        f"Redis server CPU per request: {ours.name} against {theirs.name} (command time:"
        " the sum of usec over the client's commands; our script: evalsha's usec_per_call;"
        " process: INFO cpu user + sys)"
    )
    headers = (
        "scenario",
        "ours usec",
        "theirs usec",
        "ratio",
        "their SET usec",
        "ours / SET",
        "our script / SET",
        "ours process usec",
        "theirs process usec",
        "ratio",
    )
    return table(title, headers, rows)
