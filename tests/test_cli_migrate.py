"""``flask serversession migrate`` (docs: cli.rst, migrating.rst): moves every
session of the old store in batches, skips what a request moved meanwhile,
and can run again."""

from __future__ import annotations

import typing as t
from datetime import datetime
from datetime import timezone

import pytest
from flask import Flask

from flask_serversession.backends.base import Backend
from flask_serversession.backends.base import Record
from flask_serversession.backends.memory import MemoryBackend
from flask_serversession.backends.moving import MovingBackend

from .conftest import store_of


def now() -> datetime:
    return datetime.now(timezone.utc)


def fill(app: Flask, n: int) -> list[str]:
    """Tokens of ``n`` sessions made through ``app``'s store."""
    return [store_of(app).create({"n": i}) for i in range(n)]


def migrate(app: Flask, *args: str) -> t.Any:
    return app.test_cli_runner().invoke(args=["serversession", "migrate", *args])


@pytest.mark.parametrize(
    ("old_name", "new_name"), [("sqlite", "redis"), ("filesystem", "postgres")]
)
def test_migrate_moves_every_session_and_can_run_again(
    request: pytest.FixtureRequest, make_app: t.Callable[..., Flask], old_name: str, new_name: str
) -> None:
    old: Backend = request.getfixturevalue(f"{old_name}_backend")
    new: Backend = request.getfixturevalue(f"{new_name}_backend")
    tokens = fill(make_app(old), 7)
    app = make_app(new, SERVERSESSION_MIGRATE_FROM=old)

    result = migrate(app, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.endswith("Would move 7 sessions; nothing was changed.\n")
    assert (old.count(now()), new.count(now())) == (7, 0)

    result = migrate(app, "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert "Moving sessions" in result.output
    assert result.output.endswith(
        "Moved 7 sessions; skipped 0 (moved by a request meanwhile, expired or ended).\n"
        "The old store holds no live session: SERVERSESSION_MIGRATE_FROM can go.\n"
    )
    assert (old.count(now()), new.count(now())) == (0, 7)
    assert [store_of(app).get(token) for token in tokens] == [{"n": i} for i in range(7)]

    result = migrate(app)
    assert result.exit_code == 0, result.output
    assert "Moved 0 sessions; skipped 0" in result.output
    assert "The old store holds no live session" in result.output


class RequestsMeanwhile(MemoryBackend):
    """An old store where, before the command's first take, requests move ``moved_by_requests``."""

    def __init__(self) -> None:
        super().__init__()
        self.moving: MovingBackend | None = None
        self.moved_by_requests: list[str] = []
        self.takes = 0

    def take(self, key: str, now: datetime) -> Record | None:
        self.takes += 1
        if self.takes == 1 and self.moving is not None:
            for other in self.moved_by_requests:
                assert self.moving.load(other) is not None
        return super().take(key, now)


def test_a_session_moved_by_a_request_meanwhile_is_skipped_not_copied(
    make_app: t.Callable[..., Flask],
) -> None:
    old = RequestsMeanwhile()
    tokens = fill(make_app(old), 5)
    new = MemoryBackend()
    app = make_app(new, SERVERSESSION_MIGRATE_FROM=old)
    old.moving = t.cast(MovingBackend, store_of(app).backend)
    keys = [key for key, _ in old.items(now())]
    # The command goes through the keys in the old store's order; the last
    # two are moved by requests while it handles the first.
    old.moved_by_requests = keys[-2:]
    result = migrate(app)
    assert result.exit_code == 0, result.output
    assert "Moved 3 sessions; skipped 2" in result.output
    assert sorted(key for key, _ in new.items(now())) == sorted(keys)
    assert old.count(now()) == 0
    assert sorted(store_of(app).get(token)["n"] for token in tokens) == list(range(5))


def test_migrate_without_the_key_says_what_to_set(make_app: t.Callable[..., Flask]) -> None:
    result = migrate(make_app())
    assert result.exit_code == 1
    assert "SERVERSESSION_MIGRATE_FROM is not set" in result.output
