from __future__ import annotations

import typing as t

import click
from flask import current_app
from flask.cli import with_appcontext

from .errors import ServerSessionError
from .store import SessionStore


def _run(action: t.Callable[[SessionStore], int]) -> int:
    """Run ``action`` on the app's store; a store failure becomes a one-line error."""
    store = current_app.extensions.get("serversession")
    if store is None:
        raise click.ClickException("ServerSession is not set up on this app: call 'init_app'.")
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
    removed = _run(SessionStore.purge_expired)
    click.echo(f"Removed {removed} expired sessions.")


@cli.command("count")
@with_appcontext
def count() -> None:
    """Print the number of live sessions."""
    click.echo(_run(SessionStore.count))


@cli.command("clear")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def clear(yes: bool) -> None:
    """Remove every session, signing every user out."""
    if not yes:
        click.confirm("Remove all sessions? Every user will be signed out.", abort=True)
    removed = _run(SessionStore.clear)
    click.echo(f"Removed {removed} sessions.")
