from __future__ import annotations

import contextlib
import os
import re
import threading
import typing as t
from urllib.parse import parse_qsl
from urllib.parse import urlencode

if t.TYPE_CHECKING:
    import sqlalchemy as sa

    from ..backends.redis.clients import Client


#: How long the check waits for a server to answer one read, in seconds: a
#: server that accepts and never answers, or trickles its reply, is unreachable.
READ_TIMEOUT = 10.0
# Query parameters that carry a secret (redis-py and libpq both read a
# password from the query string).
_SECRET_PARAMETER = re.compile("pass|secret|token|key", re.IGNORECASE)

_T = t.TypeVar("_T")


class StoreUnreachable(Exception):
    """The session store did not answer; the message says why, without secrets."""


def bounded(read: t.Callable[[], _T]) -> _T:
    """Run ``read`` and return its result, or raise :class:`StoreUnreachable` when it
    has not finished within :data:`READ_TIMEOUT`.

    Drivers wait for ever by default; the read runs in a daemon thread, left
    behind when it does not finish, so ``check`` always ends.
    """
    outcome: list[t.Any] = []

    def run() -> None:
        try:
            outcome.append((True, read()))
        except BaseException as e:
            outcome.append((False, e))

    thread = threading.Thread(target=run, name="serversession-check-read", daemon=True)
    thread.start()
    thread.join(READ_TIMEOUT)
    if not outcome:
        raise StoreUnreachable(f"the server did not answer within {READ_TIMEOUT:g} s")
    finished, value = outcome[0]
    if not finished:
        raise value
    return t.cast(_T, value)


def shown_url(url: str) -> str:
    """``url`` with the password of its user part and secret query parameters masked."""
    url = re.sub(r"//([^/@:]*):[^/@]*@", r"//\1:***@", url)
    url = re.sub(r"//[^/@:]+@", "//***@", url)
    base, mark, query = url.partition("?")
    if not mark:
        return url
    pairs = parse_qsl(query, keep_blank_values=True)
    masked = [(k, "***" if _SECRET_PARAMETER.search(k) else v) for k, v in pairs]
    return f"{base}?{urlencode(masked, safe='*')}"


class UnreadableSetting(Exception):
    """The store answered but refused to show a setting."""


def _text(value: t.Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def redis_settings(client: Client, names: t.Sequence[str]) -> dict[str, dict[str, str]]:
    """Read ``names`` with ``CONFIG GET``, by node (``host:port``; one entry for one server).

    One ``CONFIG GET`` per name, as servers before Redis 7 take one pattern.
    A cluster is read on each of its primaries. Works with redis-py and
    valkey-py clients, on Redis and on Valkey (which answers the same names).

    :raise StoreUnreachable: a node could not be reached.
    :raise UnreadableSetting: a node refused ``CONFIG GET`` (a renamed or
        forbidden command, as managed services have).
    """
    import importlib

    from ..backends.redis.clients import library_of

    lib = library_of(client)
    if lib is None:
        raise TypeError(f"not a redis-py or valkey-py client: {client!r}")
    exceptions = importlib.import_module(f"{lib.name}.exceptions")
    if isinstance(client, lib.cluster):
        targets: list[tuple[str, dict[str, t.Any]]] = [
            (node.name, {"target_nodes": node}) for node in _primaries(client, lib.errors)
        ]
    else:
        targets = [("server", {})]
    nodes: dict[str, dict[str, str]] = {}
    for node, options in targets:
        settings: dict[str, str] = {}
        for name in names:
            try:
                reply = client.config_get(name, **options)
            except (exceptions.ConnectionError, exceptions.TimeoutError) as e:
                raise StoreUnreachable(_text(e) or type(e).__name__) from e
            except lib.response_error as e:
                raise UnreadableSetting(f"CONFIG GET {name}: {_text(e)}") from e
            except lib.errors as e:
                raise StoreUnreachable(_text(e) or type(e).__name__) from e
            values = {_text(k): _text(v) for k, v in t.cast("dict[t.Any, t.Any]", reply).items()}
            if name not in values:
                raise UnreadableSetting(f"CONFIG GET {name} returned nothing")
            settings[name] = values[name]
        nodes[node] = settings
    return nodes


def _primaries(client: t.Any, errors: tuple[type[Exception], ...]) -> list[t.Any]:
    try:
        return list(client.get_primaries())
    except errors as e:
        raise StoreUnreachable(_text(e) or type(e).__name__) from e


def sql_setting(engine: sa.Engine, name: str | None) -> str | None:
    """The value ``SHOW name`` gives on a connection of ``engine``.

    It reflects the server's, the database's and the role's settings, as the
    backend's own connections see them before they set anything. With
    ``name`` None, only connect (to see that the server answers).

    :raise StoreUnreachable: no connection could be made.
    :raise UnreadableSetting: the server refused the ``SHOW``.
    """
    import sqlalchemy as sa

    try:
        connection = engine.connect()
    except sa.exc.SQLAlchemyError as e:
        raise StoreUnreachable(_sql_message(e)) from e
    with connection:
        if name is None:
            return None
        try:
            value = connection.execute(sa.text(f"SHOW {name}")).scalar_one()
        except sa.exc.SQLAlchemyError as e:
            raise UnreadableSetting(f"SHOW {name}: {_sql_message(e)}") from e
        finally:
            connection.rollback()
    return _text(value)


def _sql_message(e: Exception) -> str:
    import sqlalchemy as sa

    detail = e.orig if isinstance(e, sa.exc.DBAPIError) else e
    return " ".join(str(detail).split()) or type(detail).__name__


def directory_chain(path: str) -> list[tuple[str, os.stat_result]]:
    """``stat`` of the directory ``path`` (followed as the backend follows it), then of each parent.

    Parents come from both the path as given and its real path, so a
    symbolic link on the way is covered too.

    :raise StoreUnreachable: ``path`` cannot be read or is not a directory.
    """
    try:
        root = os.stat(path)
    except OSError as e:
        raise StoreUnreachable(f"{e.strerror}: {path!r}") from e
    if not os.path.isdir(path):
        raise StoreUnreachable(f"not a directory: {path!r}")
    chain = [(path, root)]
    seen = {path}
    for start in (os.path.abspath(path), os.path.realpath(path)):
        parent = os.path.dirname(start)
        while parent not in seen:
            seen.add(parent)
            with contextlib.suppress(OSError):
                chain.append((parent, os.stat(parent)))
            parent = os.path.dirname(parent)
    return chain
