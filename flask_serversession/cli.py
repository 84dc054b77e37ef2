from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from .errors import ServerSessionError
from .store import SessionStore


def _store() -> SessionStore:
    store = current_app.extensions.get("serversession")
    if store is None:
        raise click.ClickException("ServerSession is not set up on this app: call 'init_app'.")
    return store  # type: ignore[no-any-return]


@click.group("serversession")
def cli() -> None:
    """Manage the app's server-side sessions."""


@cli.command("purge")
@with_appcontext
def purge() -> None:
    """Remove expired sessions (run it from cron or a timer)."""
    try:
        removed = _store().purge_expired()
    except ServerSessionError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"Removed {removed} expired sessions.")


@cli.command("count")
@with_appcontext
def count() -> None:
    """Print the number of live sessions."""
    try:
        click.echo(_store().count())
    except ServerSessionError as e:
        raise click.ClickException(str(e)) from e


@cli.command("clear")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def clear(yes: bool) -> None:
    """Remove every session, signing every user out."""
    if not yes:
        click.confirm("Remove all sessions? Every user will be signed out.", abort=True)
    try:
        removed = _store().clear()
    except ServerSessionError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"Removed {removed} sessions.")
