"""The WSGI app gunicorn serves in the concurrency section; run by concurrency.py.

The contender comes from the ``BENCH_SPEC`` environment variable (a ``Spec``
as JSON), so that every worker process builds the same app:

    BENCH_SPEC='{"family": ...}' gunicorn --chdir benchmarks serve:application
"""

from __future__ import annotations

import os

from apps import build_app
from apps import Spec

application = build_app(Spec.from_json(os.environ["BENCH_SPEC"]))
