"""An app that uses its session store while gunicorn loads it with ``--preload``.

The store's first command runs in the master, before the workers are
forked: each worker must then take a Redis connection of its own. Configured
as ``fault_app``, from ``FAULT_*`` variables.
"""

from __future__ import annotations

from flask import Flask

from .fault_app import create_app as create_fault_app


def create_app() -> Flask:
    app = create_fault_app()
    # What an app's start-up check of its store would do, in the master.
    app.extensions["serversession"].backend.load("0" * 64)
    return app
