from __future__ import annotations

import configparser
import json
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from flask_serversession.extras import EXTRAS

ROOT = Path(__file__).resolve().parent.parent


# A child Python in which ``module`` cannot be imported, as when it is not installed.
CHILD = """
import json, sys
sys.modules[{module!r}] = None
from flask import Flask
from flask_serversession import ConfigError, ServerSession
app = Flask("child", instance_path={instance!r})
app.config.update(SECRET_KEY="secret", **{config!r})
try:
    ServerSession(app)
except ConfigError as e:
    print(json.dumps(str(e)))
else:
    print(json.dumps(None))
"""

MISSING = [
    ("redis", {"SERVERSESSION_BACKEND": "redis"}, "SERVERSESSION_BACKEND = 'redis'"),
    (
        "psycopg",
        {"SERVERSESSION_SQLALCHEMY_URI": "postgresql+psycopg://app@127.0.0.1/app"},
        "SERVERSESSION_SQLALCHEMY_URI = 'postgresql+psycopg://app@127.0.0.1/app'",
    ),
    ("flask_sqlalchemy", {"SERVERSESSION_SQLALCHEMY": "db"}, "SERVERSESSION_SQLALCHEMY = 'db'"),
    (
        "msgspec",
        {
            "SERVERSESSION_BACKEND": "memory",
            "SERVERSESSION_ADOPT_FLASK_SESSION": True,
            "SESSION_TYPE": "filesystem",
        },
        "SERVERSESSION_ADOPT_FLASK_SESSION = True",
    ),
]


@pytest.mark.parametrize(("module", "config", "named"), MISSING, ids=[m[0] for m in MISSING])
def test_missing_extra_is_a_config_error_with_the_install_command(
    tmp_path: Path, module: str, config: dict[str, t.Any], named: str
) -> None:
    code = CHILD.format(module=module, instance=str(tmp_path / "instance"), config=config)
    child = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    message = json.loads(child.stdout)
    assert message is not None, "init_app succeeded without the package"
    assert message.startswith(f"{named} needs the {module} package, which is not installed")
    assert message.endswith(f"pip install 'Flask-ServerSession[{EXTRAS[module]}]'")


def test_every_extra_named_in_errors_exists() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert set(EXTRAS.values()) <= set(setup["options.extras_require"])
