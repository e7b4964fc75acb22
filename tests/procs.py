"""
Waiting for processes to end, for tests that check a context leaves no
process behind (master side only: uses :mod:`leakcheck`).
"""
import time

import leakcheck


def is_gone(pid):
    """True if `pid` has exited (a zombie no one reaped counts)."""
    status = leakcheck.process_status(pid)
    return status is None or status[1] == 'Z'


def wait_all_gone(pids, timeout=10.0):
    """Return the PIDs of `pids` still alive after up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if not is_gone(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)
