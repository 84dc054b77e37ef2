from __future__ import annotations

import json
import re
import typing as t
from datetime import datetime
from datetime import timezone

import click
from flask import current_app
from flask.cli import with_appcontext

from .checks import Finding
from .checks import run_checks
from .checks.servers import backend_kind
from .errors import ServerSessionError
from .store import SessionStore

#: Hex digits of a storage key that ``sessions`` prints.
SHORT_KEY = 12
FULL_KEY = re.compile("[0-9a-f]{64}")
T = t.TypeVar("T")


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun`` in the number it needs: "1 session", "2 sessions"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _run(action: t.Callable[[SessionStore], T], *, shared: bool = False) -> T:
    """Run ``action`` on the app's store; a store failure becomes a one-line error.

    :param shared: the command means the sessions the app's servers hold,
        which a memory backend keeps out of this process's reach.
    """
    store = current_app.extensions.get("serversession")
    if store is None:
        raise click.ClickException("ServerSession is not set up on this app: call 'init_app'.")
    if shared and backend_kind(store.backend) == "MemoryBackend":
        raise click.ClickException(
            "The memory backend keeps sessions in the memory of each server process, which"
            " this command, a process of its own, cannot see: it would find none. Use"
            " SERVERSESSION_PURGE_INTERVAL or server_session.count() inside the app, or a"
            " store the processes share (SERVERSESSION_BACKEND = 'sqlalchemy' or 'redis')."
        )
    try:
        return action(store)
    except ServerSessionError as e:
        raise click.ClickException(str(e)) from e


@click.group("serversession")
def cli() -> None:
    """Manage the app's server-side sessions."""


@cli.command("purge")
@with_appcontext
def purge() -> None:
    """Remove expired sessions (run it from cron or a timer)."""
    removed = _run(SessionStore.purge_expired, shared=True)
    click.echo(f"Removed {counted(removed, 'expired session')}.")


@cli.command("count")
@with_appcontext
def count() -> None:
    """Print the number of live sessions."""
    click.echo(_run(SessionStore.count, shared=True))


@cli.command("clear")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def clear(yes: bool) -> None:
    """Remove every session, signing every user out."""
    if not yes:
        click.confirm("Remove all sessions? Every user will be signed out.", abort=True)
    removed = _run(SessionStore.clear, shared=True)
    click.echo(f"Removed {counted(removed, 'session')}.")


def _time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@cli.command("sessions")
@click.argument("user_id")
@with_appcontext
def sessions(user_id: str) -> None:
    """List a user's live sessions, newest first, one line each."""
    infos = _run(lambda store: store.users.sessions(user_id))
    for info in infos:
        click.echo(
            f"{info.storage_key[:SHORT_KEY]}  created {_time(info.created_at)}"
            f"  last seen {_time(info.last_seen)}  {info.user_agent or '-'}"
        )
    if not infos:
        click.echo(f"User {user_id!r} has no live sessions.")


@cli.command("revoke")
@click.argument("user_id", required=False)
@click.option("--key", help="End one session: its storage key, or with USER_ID its short key.")
@with_appcontext
def revoke(user_id: str | None, key: str | None) -> None:
    """End all of a user's sessions, or the one session given by --key."""
    if key is None:
        if user_id is None:
            raise click.UsageError("Give a USER_ID, or --key with a storage key.")
        ended = _run(lambda store: store.users.revoke_user(user_id, keep_current=False))
        if not ended:
            click.echo(f"User {user_id!r} has no live sessions.")
            return
    else:
        ended = _run(lambda store: _revoke_one(store, user_id, key))
    click.echo(f"Ended {counted(ended, 'session')}.")


def _revoke_one(store: SessionStore, user_id: str | None, key: str) -> int:
    """End the session ``key`` names: a storage key, or the start of one of a user's.

    A key that names no live session is an error, so a mistyped key never
    reads as done.
    """
    if user_id is None:
        if not FULL_KEY.fullmatch(key):
            raise click.UsageError(
                f"{key!r} is not a storage key (64 hex digits). To use the short key that"
                " 'sessions' prints, give the USER_ID too."
            )
        if not store.users.revoke(key):
            raise click.ClickException(f"No live session has the storage key {key!r}.")
        return 1
    infos = store.users.sessions(user_id)
    matches = [info.storage_key for info in infos if info.storage_key.startswith(key)]
    if len(matches) > 1:
        raise click.UsageError(f"{key!r} starts more than one session of user {user_id!r}.")
    if not matches or not store.users.revoke(matches[0]):
        raise click.ClickException(
            f"No live session of user {user_id!r} has a storage key starting with {key!r}."
        )
    return 1


@cli.command("reencrypt")
@with_appcontext
def reencrypt_command() -> None:
    """Seal every live session with SERVERSESSION_ENCRYPTION_KEY now (safe while serving)."""
    from .reencryption import reencrypt

    def run(store: SessionStore) -> t.Counter[str]:
        with click.progressbar(length=store.count(), label="Re-encrypting sessions") as bar:
            return reencrypt(store, progress=bar.update)  # type: ignore[return-value]

    done = _run(run)
    click.echo(
        f"Re-encrypted {counted(done['rewritten'], 'session')};"
        f" {done['current']} already current, {done['gone']} ended meanwhile."
    )
    problems = [(done["damaged"], "Left as stored, since no key decrypts them")]
    problems.append((done["busy"], "Changed at every attempt (run the command again)"))
    for n, what in problems:
        if n:
            click.echo(f"{what}: {counted(n, 'session')}.", err=True)
    if done["damaged"] or done["busy"]:
        raise SystemExit(1)


@cli.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as a JSON list.")
@click.option(
    "--ignore",
    multiple=True,
    metavar="ID",
    help="Leave out a check, e.g. serversession.W006 or W006 (repeatable).",
)
@with_appcontext
def check(as_json: bool, ignore: tuple[str, ...]) -> None:
    """Audit the session set-up for production; exit 1 if an error is found.

    Reads the config and the session store's server settings; changes nothing.
    """
    if current_app.extensions.get("serversession") is None:
        raise click.ClickException("ServerSession is not set up on this app: call 'init_app'.")
    # "W006" is short for "serversession.W006", the id that check prints.
    ignore = tuple(i if "." in i else f"serversession.{i}" for i in ignore)
    try:
        findings = run_checks(current_app, ignore=ignore)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--ignore'") from e
    if as_json:
        click.echo(json.dumps([finding.as_dict() for finding in findings], indent=2))
    else:
        for finding in findings:
            click.echo(finding.line())
        click.echo(_summary(findings))
    if any(finding.severity == "error" for finding in findings):
        raise SystemExit(1)


def _summary(findings: list[Finding]) -> str:
    errors = sum(finding.severity == "error" for finding in findings)
    warnings = len(findings) - errors
    if not findings:
        return "No problems found."
    return f"{counted(errors, 'error')}, {counted(warnings, 'warning')}."


@cli.command("migrate")
@click.option("--dry-run", is_flag=True, help="Count the sessions to move; change nothing.")
@click.option(
    "--batch-size",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sessions moved between two updates of the progress bar.",
)
@with_appcontext
def migrate(dry_run: bool, batch_size: int) -> None:
    """Move every session of SERVERSESSION_MIGRATE_FROM's store into the current one.

    Safe while the app serves, and to run again: a session a request moved
    meanwhile is skipped, never copied twice.
    """
    from .backends.moving import MovingBackend
    from .migration import move_all

    def run(store: SessionStore) -> tuple[int, int, int]:
        backend = store.backend
        if not isinstance(backend, MovingBackend):
            raise click.ClickException(
                "SERVERSESSION_MIGRATE_FROM is not set: set it to the store the sessions live"
                " in today (see the Migrating page), then run this command again."
            )
        keys = backend.old_keys(store.clock())
        label = "Counting" if dry_run else "Moving"
        with click.progressbar(length=len(keys), label=f"{label} sessions") as bar:
            result = move_all(
                backend,
                keys,
                store.clock,
                batch_size=batch_size,
                dry_run=dry_run,
                progress=bar.update,
            )
        left = 0 if dry_run else backend.old.count(store.clock())
        return result.moved, result.skipped, left

    moved, skipped, left = _run(run)
    if dry_run:
        click.echo(f"Would move {counted(moved, 'session')}; nothing was changed.")
        return
    click.echo(
        f"Moved {counted(moved, 'session')}; skipped {skipped} (moved by a request meanwhile,"
        " expired or ended)."
    )
    if left:
        click.echo(f"{counted(left, 'session')} arrived in the old store meanwhile: run it again.")
    else:
        click.echo("The old store holds no live session: SERVERSESSION_MIGRATE_FROM can go.")
