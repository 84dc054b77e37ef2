"""The client libraries the Redis backend works with: redis-py and valkey-py.

valkey-py is a fork of redis-py with the same API under other names
(``valkey.Valkey``, ``valkey.cluster.ValkeyCluster``, ``ValkeyError``), and
its exceptions are classes of their own, not redis-py's. So the backend
catches the classes of the library its client comes from, found once here.
Neither library is imported unless it is the one in use.
"""

from __future__ import annotations

import functools
import importlib
import sys
import typing as t
from dataclasses import dataclass
from urllib.parse import urlsplit

if t.TYPE_CHECKING:
    import redis
    import redis.cluster
    import valkey
    import valkey.cluster

    #: A client the backend accepts.
    Client: t.TypeAlias = (
        redis.Redis | redis.cluster.RedisCluster | valkey.Valkey | valkey.cluster.ValkeyCluster
    )

#: Per library: its client class, cluster client class, base error and
#: cluster error, by name.
_NAMES = {
    "redis": ("Redis", "RedisCluster", "RedisError", "RedisClusterException"),
    "valkey": ("Valkey", "ValkeyCluster", "ValkeyError", "ValkeyClusterException"),
}

#: The URL schemes that valkey-py opens; redis-py opens the others.
VALKEY_SCHEMES = frozenset({"valkey", "valkeys"})


@dataclass(frozen=True)
class Library:
    """What the backend uses of one client library."""

    #: The module's name: ``"redis"`` or ``"valkey"``.
    name: str
    #: Every error a command can raise (the base error and the cluster error).
    errors: tuple[type[Exception], ...]
    #: The error of a command the server refused.
    response_error: type[Exception]
    #: The error of ``EVALSHA`` for a script the server does not know.
    no_script_error: type[Exception]
    #: The cluster client class.
    cluster: type[t.Any]
    #: The single-server client class.
    client: type[t.Any]

    def retry_once(self) -> t.Any:
        """A ``Retry`` of this library that retries a command once, at once."""
        backoff = importlib.import_module(f"{self.name}.backoff")
        retry = importlib.import_module(f"{self.name}.retry")
        return retry.Retry(backoff.NoBackoff(), 1)

    def parse_url(self, url: str) -> dict[str, t.Any]:
        """The connection options in ``url``, as the library reads them."""
        connection = importlib.import_module(f"{self.name}.connection")
        return t.cast("dict[str, t.Any]", connection.parse_url(url))


@functools.cache
def library(name: str) -> Library:
    """The library ``name`` (``"redis"`` or ``"valkey"``); imports it.

    :raises ImportError: it is not installed.
    """
    client_name, cluster_name, error_name, cluster_error_name = _NAMES[name]
    module = importlib.import_module(name)
    cluster = importlib.import_module(f"{name}.cluster")
    exceptions = importlib.import_module(f"{name}.exceptions")
    return Library(
        name=name,
        errors=(getattr(exceptions, error_name), getattr(exceptions, cluster_error_name)),
        response_error=exceptions.ResponseError,
        no_script_error=exceptions.NoScriptError,
        cluster=getattr(cluster, cluster_name),
        client=getattr(module, client_name),
    )


def library_of(client: object) -> Library | None:
    """The library ``client`` is a (cluster) client of, or None.

    A Sentinel ``master_for()`` client is an instance of the plain client
    class of its library. Only libraries already imported are looked at: a
    client of one that is not could not exist.
    """
    for name, (client_name, cluster_name, _, _) in _NAMES.items():
        module = sys.modules.get(name)
        cluster = sys.modules.get(f"{name}.cluster")
        if module is None or cluster is None:
            continue
        if isinstance(client, (getattr(module, client_name), getattr(cluster, cluster_name))):
            return library(name)
    return None


def client_library(client: object) -> Library:
    """The library of a client the Redis backend was given; TypeError for any other object."""
    lib = library_of(client)
    if lib is None:
        kind = f"{type(client).__module__}.{type(client).__qualname__}"
        raise TypeError(
            "RedisBackend needs a redis.Redis, redis.cluster.RedisCluster, valkey.Valkey,"
            f" valkey.cluster.ValkeyCluster or Sentinel master_for() client, not {kind}"
        )
    return lib


def library_name_for_url(url: str) -> str:
    """The library that opens ``url``: ``"valkey"`` for ``valkey://`` and
    ``valkeys://``, ``"redis"`` for the others (which valkey-py opens as well,
    but which one a URL gets should not depend on what else is installed).
    """
    return "valkey" if urlsplit(url).scheme.lower() in VALKEY_SCHEMES else "redis"


def client_from_url(url: str, **kwargs: t.Any) -> t.Any:
    """A new single-server client for ``url``, of the library that opens it.

    Socket timeouts default to a few seconds and a command that hits a
    connection error is retried once. Raises ValueError for a URL that does
    not name a server.
    """
    lib = library(library_name_for_url(url))
    options = lib.parse_url(url)
    if url.startswith("unix://") and not options.get("path"):
        raise ValueError("the unix:// URL names no socket path")
    if not url.startswith("unix://"):
        if not options.get("host"):
            raise ValueError("the URL names no host")
        path = urlsplit(url).path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"database {path!r} in the URL is not a number")
    kwargs.setdefault("socket_timeout", 5.0)
    kwargs.setdefault("socket_connect_timeout", 3.0)
    kwargs.setdefault("retry", lib.retry_once())
    return lib.client.from_url(url, **kwargs)
