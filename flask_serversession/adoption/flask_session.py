from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
import struct
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from functools import partial

import msgspec
from itsdangerous import BadSignature
from itsdangerous import Signer

from ..errors import ConfigError
from ..log import logger
from . import Found
from . import plain_pickle

if t.TYPE_CHECKING:
    from flask import Flask

# The alphabet of secrets.token_urlsafe, which made Flask-Session's ids.
_SID = re.compile(r"[A-Za-z0-9_-]{1,256}")
_DECODERS = (msgspec.msgpack.Decoder(), msgspec.json.Decoder())
# cachelib's FileSystemCache: a native unsigned int (expiry, 0 for never), then the value.
_EXPIRY = struct.Struct("I")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UnreadableRecord(Exception):
    """A Flask-Session record that is not adopted; the message says why."""


def decode_record(raw: bytes) -> dict[t.Any, t.Any]:
    """Decode what Flask-Session 0.7 and 0.8 store: msgpack, or JSON.

    :raises UnreadableRecord: anything else, pickles of older versions included.
    """
    for decoder in _DECODERS:
        try:
            value = decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    raise UnreadableRecord(
        "it is neither msgpack nor JSON; a pickle, as Flask-Session wrote before 0.7,"
        " is never loaded"
    )


#: A live record's data, and when it expires (aware UTC; None for never).
Loaded = tuple[dict[t.Any, t.Any], "datetime | None"]


class Records(t.Protocol):
    """Flask-Session's store, as adoption needs it: read one record, delete one."""

    #: What the store raises when it is down or failing.
    errors: tuple[type[Exception], ...]

    def load(self, key: str) -> Loaded | None:
        """Return the live record stored under ``key`` and its expiry, or None."""

    def delete(self, key: str) -> None:
        """Delete the record stored under ``key``, if any."""


class RedisRecords:
    """Records of ``SESSION_TYPE = "redis"``: a string per key, expired by Redis.

    :param client: the ``SESSION_REDIS`` client.
    """

    def __init__(self, client: t.Any) -> None:
        from redis.exceptions import RedisClusterException
        from redis.exceptions import RedisError

        self.client = client
        self.errors: tuple[type[Exception], ...] = (RedisError, RedisClusterException)

    def load(self, key: str) -> Loaded | None:
        # One round trip: the value and its time to live (ms; negative for none).
        raw, ttl = self.client.pipeline(transaction=False).get(key).pttl(key).execute()
        if raw is None:
            return None
        expires_at = None if ttl < 0 else _utcnow() + timedelta(milliseconds=ttl)
        return decode_record(raw), expires_at

    def delete(self, key: str) -> None:
        self.client.delete(key)


class SQLRecords:
    """Records of ``SESSION_TYPE = "sqlalchemy"``: rows ``session_id``, ``data``, ``expiry``.

    Read and deleted on connections of their own, never in the app's ``db.session``.

    :param db: the ``SESSION_SQLALCHEMY`` Flask-SQLAlchemy instance.
    :param table: ``SESSION_SQLALCHEMY_TABLE``.
    :param schema: ``SESSION_SQLALCHEMY_SCHEMA``.
    :param bind_key: ``SESSION_SQLALCHEMY_BIND_KEY``.
    """

    def __init__(self, db: t.Any, table: str, schema: str | None, bind_key: str | None) -> None:
        import sqlalchemy as sa

        self.db = db
        self.bind_key = bind_key
        self.table = sa.table(
            table,
            sa.column("session_id", sa.String),
            sa.column("data", sa.LargeBinary),
            sa.column("expiry", sa.DateTime),
            schema=schema,
        )
        self.errors: tuple[type[Exception], ...] = (sa.exc.SQLAlchemyError,)

    def _engine(self) -> t.Any:
        # A setup mistake, not a store failure: it is raised, not logged away.
        try:
            engines = self.db.engines
        except RuntimeError as e:
            raise ConfigError(f"SESSION_SQLALCHEMY cannot be used: {e}") from None
        try:
            return engines[self.bind_key]
        except KeyError:
            raise ConfigError(
                f"SESSION_SQLALCHEMY_BIND_KEY = {self.bind_key!r} names no engine of"
                " SESSION_SQLALCHEMY."
            ) from None

    def load(self, key: str) -> Loaded | None:
        import sqlalchemy as sa

        columns = self.table.c
        query = sa.select(columns.data, columns.expiry).where(columns.session_id == key)
        with self._engine().connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        data, expiry = row
        # As Flask-Session: naive UTC, and a row without an expiry is expired.
        if expiry is None:
            return None
        expiry = expiry if expiry.tzinfo else expiry.replace(tzinfo=timezone.utc)
        if expiry <= _utcnow():
            return None
        if data is None:
            raise UnreadableRecord("its data is NULL")
        return decode_record(bytes(data)), expiry

    def delete(self, key: str) -> None:
        import sqlalchemy as sa

        with self._engine().begin() as connection:
            connection.execute(sa.delete(self.table).where(self.table.c.session_id == key))


class FileRecords:
    """Records of ``SESSION_TYPE = "cachelib"`` or ``"filesystem"``: cachelib's files.

    cachelib frames each value as a pickle: it is read by
    :mod:`~flask_serversession.adoption.plain_pickle`, which never unpickles.
    Deleting removes the file alone, as cachelib's own ``delete`` would load
    its count file with pickle.

    :param filename: the file path that stores a key.
    """

    def __init__(self, filename: t.Callable[[str], str]) -> None:
        self.filename = filename
        self.errors: tuple[type[Exception], ...] = (OSError,)

    def load(self, key: str) -> Loaded | None:
        try:
            fd = os.open(self.filename(key), os.O_RDONLY | _NOFOLLOW)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            header = f.read(_EXPIRY.size)
            body = f.read(plain_pickle.MAX_BYTES + 1)
        if len(header) != _EXPIRY.size:
            raise UnreadableRecord("the file is truncated")
        (expires,) = _EXPIRY.unpack(header)
        if expires and expires < time.time():
            return None
        expires_at = datetime.fromtimestamp(expires, timezone.utc) if expires else None
        if not body.startswith(b"\x80"):
            # A FileSystemCache given a JSON serializer.
            return decode_record(body), expires_at
        try:
            value = plain_pickle.loads(body)
        except plain_pickle.Unreadable as e:
            raise UnreadableRecord(f"the pickle is not plain data: {e}") from None
        if type(value) is not dict:
            raise UnreadableRecord("the pickle does not hold a dict")
        values = {
            k: plain_pickle.PickledObject() if plain_pickle.holds_pickled_object(v) else v
            for k, v in value.items()
        }
        return values, expires_at

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.filename(key))


def _describe(error: Exception) -> str:
    # SQLAlchemy's message lists the statement's parameters, the session id
    # among them; the driver's own error says what failed without them.
    return repr(getattr(error, "orig", None) or error)


class FlaskSessionSource:
    """Sessions that Flask-Session stored, read from its own store.

    :param records: Flask-Session's store.
    :param key_prefix: ``SESSION_KEY_PREFIX``, put before the id in the store.
    :param use_signer: ``SESSION_USE_SIGNER``: the cookie holds the signed id.
    """

    name = "Flask-Session session"
    #: Flask-Session's salt for signing ids; the key derivation is hmac, the digest sha1.
    salt = "flask-session"

    def __init__(self, records: Records, *, key_prefix: str, use_signer: bool) -> None:
        self.records = records
        self.key_prefix = key_prefix
        self.use_signer = use_signer

    def sid_from(self, app: Flask, cookie: str) -> str | None:
        """Return the Flask-Session id a cookie holds, verifying its signature if it has one."""
        if self.use_signer:
            if not app.secret_key:
                return None
            keys = [*(app.config.get("SECRET_KEY_FALLBACKS") or ()), app.secret_key]
            signer = Signer(keys, salt=self.salt, key_derivation="hmac")
            try:
                cookie = signer.unsign(cookie).decode("utf-8", "replace")
            except BadSignature:
                return None
        return cookie if _SID.fullmatch(cookie) else None

    def find(self, app: Flask, cookie: str) -> Found | None:
        sid = self.sid_from(app, cookie)
        if sid is None:
            return None
        key = self.key_prefix + sid
        try:
            loaded = self.records.load(key)
        except UnreadableRecord as e:
            logger.warning("A Flask-Session record is not adopted: %s.", e)
            return None
        except self.records.errors as e:
            logger.error(
                "Flask-Session's store failed, so its session is not adopted: %s", _describe(e)
            )
            return None
        if loaded is None:
            return None
        values, expires_at = loaded
        return Found(values, partial(self._discard, key), expires_at)

    def _discard(self, key: str) -> None:
        try:
            self.records.delete(key)
        except self.records.errors as e:
            logger.error(
                "An adopted Flask-Session record could not be deleted; it stays until it"
                " expires: %s",
                _describe(e),
            )


def _bad(key: str, value: t.Any, accepted: str) -> ConfigError:
    return ConfigError(
        f"{key} = {value!r} cannot be used by SERVERSESSION_ADOPT_FLASK_SESSION: expected"
        f" {accepted}."
    )


def _optional_string(config: t.Mapping[str, t.Any], key: str) -> str | None:
    value = config.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise _bad(key, value, "a non-empty string or None")
    return value


def _is_instance(value: t.Any, *classes: str) -> bool:
    # Each class is "module:name"; a module that is not installed made no value.
    for name in classes:
        module, _, attribute = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attribute)
        except ImportError:
            continue
        if isinstance(value, cls):
            return True
    return False


def _redis(config: t.Mapping[str, t.Any]) -> Records:
    client = config.get("SESSION_REDIS")
    if not _is_instance(client, "redis:Redis", "redis.cluster:RedisCluster"):
        raise _bad("SESSION_REDIS", client, "the redis.Redis client that Flask-Session used")
    return RedisRecords(client)


def _sqlalchemy(config: t.Mapping[str, t.Any]) -> Records:
    db = config.get("SESSION_SQLALCHEMY")
    if not _is_instance(db, "flask_sqlalchemy:SQLAlchemy"):
        raise _bad("SESSION_SQLALCHEMY", db, "the Flask-SQLAlchemy db that Flask-Session used")
    table = config.get("SESSION_SQLALCHEMY_TABLE", "sessions")
    if not isinstance(table, str) or not table:
        raise _bad("SESSION_SQLALCHEMY_TABLE", table, "a table name")
    schema = _optional_string(config, "SESSION_SQLALCHEMY_SCHEMA")
    bind_key = _optional_string(config, "SESSION_SQLALCHEMY_BIND_KEY")
    return SQLRecords(db, table, schema, bind_key)


def _in_directory(directory: str) -> t.Callable[[str], str]:
    # FileSystemCache's default naming: the sha256 of the key.
    def filename(key: str) -> str:
        return os.path.join(directory, hashlib.sha256(key.encode("utf-8")).hexdigest())

    return filename


def _cachelib(config: t.Mapping[str, t.Any]) -> Records:
    cache = config.get("SESSION_CACHELIB")
    if cache is None:
        # Flask-Session's default: FileSystemCache("flask_session").
        return FileRecords(_in_directory(os.path.abspath("flask_session")))
    if not _is_instance(cache, "cachelib.file:FileSystemCache"):
        raise _bad("SESSION_CACHELIB", cache, "a cachelib FileSystemCache")
    # Its own naming, so that a custom hash_method is honoured.
    return FileRecords(cache._get_filename)


def _filesystem(config: t.Mapping[str, t.Any]) -> Records:
    directory = config.get("SESSION_FILE_DIR", os.path.join(os.getcwd(), "flask_session"))
    if not isinstance(directory, (str, os.PathLike)):
        raise _bad("SESSION_FILE_DIR", directory, "a directory path")
    return FileRecords(_in_directory(os.fspath(directory)))


_RECORDS: dict[str, t.Callable[[t.Mapping[str, t.Any]], Records]] = {
    "redis": _redis,
    "sqlalchemy": _sqlalchemy,
    "cachelib": _cachelib,
    "filesystem": _filesystem,
}


def source_from_config(config: t.Mapping[str, t.Any]) -> FlaskSessionSource:
    """Build the source that Flask-Session's own ``SESSION_*`` keys describe.

    Contacts no server.

    :raises ConfigError: the keys name no store that can be read.
    """
    kind = config.get("SESSION_TYPE")
    builder = _RECORDS.get(kind.lower()) if isinstance(kind, str) else None
    if builder is None:
        names = ", ".join(map(repr, _RECORDS))
        raise _bad("SESSION_TYPE", kind, f"one of {names}, as Flask-Session was configured")
    prefix = config.get("SESSION_KEY_PREFIX", "session:")
    if not isinstance(prefix, str):
        raise _bad("SESSION_KEY_PREFIX", prefix, "a string")
    use_signer = bool(config.get("SESSION_USE_SIGNER", False))
    return FlaskSessionSource(builder(config), key_prefix=prefix, use_signer=use_signer)
