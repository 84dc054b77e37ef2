from __future__ import annotations

import os
import subprocess


def after_death(cleanup: str) -> subprocess.Popen[bytes]:
    """Run the shell command ``cleanup`` once this process has died.

    Servers that tests start outlive a test process killed before its
    teardown; this stops them all the same.
    """
    script = f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; {cleanup}"
    return subprocess.Popen(
        ["sh", "-c", script],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
