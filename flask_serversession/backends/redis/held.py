"""A connection held by each thread: the Redis backend's hot commands skip the pool.

Taking a connection from redis-py's pool and giving it back costs about as
much as the command itself (a lock, a fork check, a poll of the socket for
unread data and the library's observability hooks, twice), and the client's
packing of a command's arguments in Python as much again for a script's. A
session load and a session save are one command each, so a thread keeps one
connection of the pool for its lifetime and packs its commands in one call
of hiredis, where installed. Other commands (listings, purges, the users'
sets) go through the client as before.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import typing as t
import weakref

if t.TYPE_CHECKING:
    from .clients import Client


def _pack_in_python(args: tuple[t.Any, ...]) -> bytes:
    """A command in the Redis protocol: an array of bulk strings (UTF-8 for text)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if type(arg) is bytes else str(arg).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


#: Packs a command's arguments (str, bytes or int) as the Redis protocol sends them.
pack_command: t.Callable[[tuple[t.Any, ...]], bytes] = _pack_in_python
with contextlib.suppress(ImportError):  # hiredis is optional
    from hiredis import pack_command

#: Incremented in a child process after a fork: connections held before it
#: belong to the parent, whose sockets the child must neither use nor close.
_generation = 0


def _forked() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forked)


def holds_connections(client: Client) -> bool:
    """Whether commands of ``client`` can run on connections held per thread.

    A single-server or Sentinel client that takes connections from a pool,
    as redis-py's clients do by default. A client that keeps one connection
    of its own (``single_connection_client``), a pool with a client-side
    cache, and a cluster client are used as they are.
    """
    pool = getattr(client, "connection_pool", None)
    if pool is None or getattr(client, "connection", None) is not None:
        return False
    return getattr(pool, "cache", None) is None and isinstance(
        getattr(pool, "max_connections", None), int
    )


class _Seats:
    """How many of the pool's connections threads hold, at most half of them.

    The other half serves threads beyond that number, one command at a
    time, as the pool always did: a limited or blocking pool never runs out
    because of held connections.
    """

    __slots__ = ("count", "generation", "limit", "lock")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.generation = _generation
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.generation != _generation:
                # A child process holds none of its parent's connections.
                self.count, self.generation = 0, _generation
            if self.count >= self.limit:
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        with self.lock:
            self.count -= 1

    def give_back(self, pool: t.Any, connection: t.Any, generation: int) -> None:
        """Called when a holding thread ends: the connection goes back to the pool."""
        if generation != _generation:
            return
        self.leave()
        pool.release(connection)


class _Held:
    """One thread's connection; given back when the thread ends and this is dropped."""

    __slots__ = ("__weakref__", "connection", "generation")

    def __init__(self, connection: t.Any) -> None:
        self.connection = connection
        self.generation = _generation


class HeldConnections:
    """Run commands of ``client`` on a connection that each thread takes once and keeps.

    A command that meets a connection error is retried on the same
    connection, reconnected, as the connection's own ``retry`` policy says
    (the client's): a restarted Redis costs the first command after it a
    reconnection, as with the pool. After a fork, the child takes
    connections of its own. Replies are read undecoded, as ``NEVER_DECODE``
    gives them; so are those of commands run through the pool.

    :param client: a client for which :func:`holds_connections` is true.
    :param pooled: runs a command through the client's pool, for threads
        beyond half the pool's size.
    """

    def __init__(self, client: Client, pooled: t.Callable[..., t.Any]) -> None:
        pool = self._pool = client.connection_pool  # type: ignore[union-attr]
        self._pooled = pooled
        self._local = threading.local()
        self._seats = _Seats(pool.max_connections // 2)
        # valkey-py's pool wants a command name, which redis-py's warns about.
        parameter = inspect.signature(pool.get_connection).parameters.get("command_name")
        if parameter is not None and parameter.default is inspect.Parameter.empty:
            self._take: t.Callable[[], t.Any] = lambda: pool.get_connection("HGETALL")
        else:
            self._take = pool.get_connection

    def _hold(self) -> _Held | None:
        """A connection for this thread to keep, or None when half the pool is held."""
        seats = self._seats
        if not seats.take():
            return None
        try:
            connection = self._take()
        except BaseException:
            seats.leave()
            raise
        held = self._local.held = _Held(connection)
        weakref.finalize(held, seats.give_back, self._pool, connection, held.generation)
        return held

    def execute(self, *args: t.Any) -> t.Any:
        """Send one command and return its reply; errors as the client raises them."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is None or held.generation != _generation:
            held = self._hold()
            if held is None:
                return self._pooled(*args)
        connection = held.connection
        # A list: the connection sends each item of what it is given.
        packed = [pack_command(args)]

        def send() -> t.Any:
            connection.send_packed_command(packed)
            return connection.read_response(disable_decoding=True)

        def failed(error: Exception) -> None:
            connection.disconnect()

        return connection.retry.call_with_retry(send, failed)
