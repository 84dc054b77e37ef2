from __future__ import annotations

import typing as t
import uuid
from pathlib import Path

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_serversession.backend_config import build_backend
from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend
from flask_serversession.config import DEFAULTS


def unique_table_name() -> str:
    return f"serversession_{uuid.uuid4().hex[:12]}"


def fsa_app(
    uri: str, instance_path: Path, *, db: SQLAlchemy | None = None, **config: t.Any
) -> tuple[Flask, SQLAlchemy]:
    """An app with Flask-SQLAlchemy on ``uri`` and ``SERVERSESSION_SQLALCHEMY`` set to its db."""
    db = SQLAlchemy() if db is None else db
    app = Flask("tests", instance_path=str(instance_path))
    app.config.update(
        SQLALCHEMY_DATABASE_URI=uri,
        SERVERSESSION_BACKEND="sqlalchemy",
        SERVERSESSION_SQLALCHEMY=db,
    )
    app.config.update(config)
    db.init_app(app)
    return app, db


def build_sql_backend(app: Flask) -> SQLAlchemyBackend:
    """Build the backend exactly as ``init_app`` does, from ``app.config``."""
    for key, value in DEFAULTS.items():
        app.config.setdefault(key, value)
    app.config.setdefault("SERVERSESSION_BACKEND", "sqlalchemy")
    return t.cast(SQLAlchemyBackend, build_backend(app))


def dispose_fsa(app: Flask, db: SQLAlchemy) -> None:
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


def drop_table(backend: SQLAlchemyBackend) -> None:
    backend.table.drop(backend.engine, checkfirst=True)


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> t.Iterator[SQLAlchemyBackend]:
    backend = SQLAlchemyBackend.from_url(
        f"sqlite:///{tmp_path / 'sessions.sqlite'}", user_index=True
    )
    yield backend
    backend.close()


@pytest.fixture
def postgres_backend(postgres_url: str) -> t.Iterator[SQLAlchemyBackend]:
    backend = SQLAlchemyBackend.from_url(
        postgres_url, table_name=unique_table_name(), user_index=True
    )
    yield backend
    drop_table(backend)
    backend.close()


@pytest.fixture
def fsa_sqlite_backend(tmp_path: Path) -> t.Iterator[SQLAlchemyBackend]:
    app, db = fsa_app(
        f"sqlite:///{tmp_path / 'app.sqlite'}",
        tmp_path / "instance",
        SERVERSESSION_USER_KEY="_user_id",
    )
    backend = build_sql_backend(app)
    yield backend
    backend.close()
    dispose_fsa(app, db)


@pytest.fixture
def fsa_postgres_backend(postgres_url: str, tmp_path: Path) -> t.Iterator[SQLAlchemyBackend]:
    app, db = fsa_app(
        postgres_url,
        tmp_path / "instance",
        SERVERSESSION_SQLALCHEMY_TABLE=unique_table_name(),
        SERVERSESSION_USER_KEY="_user_id",
    )
    backend = build_sql_backend(app)
    yield backend
    drop_table(backend)
    backend.close()
    dispose_fsa(app, db)
