"""
Master-side helpers for tests that must not hang: bounded calls, polling
with a deadline instead of sleeping, and daemon threads.
"""
import threading
import time

import pytest

#: Seconds a reply may take before a test calls it a hang.
REPLY_TIMEOUT = 30.0


def caller(timeout):
    """A ``call(context, fn, *args, **kwargs)``: context.call() that fails
    instead of hanging when no reply comes within `timeout` s."""
    def call(context, fn, *args, **kwargs):
        recv = context.call_async(fn, *args, **kwargs)
        return recv.get(timeout=timeout).unpickle()
    return call


#: context.call() that fails instead of hanging.
call = caller(REPLY_TIMEOUT)


def wait_for(predicate, timeout=10.0):
    """Poll `predicate` until it returns something true, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail('condition not met within %.0f s' % (timeout,))
        time.sleep(0.01)


def wait_until(predicate, timeout=5.0):
    """Poll `predicate` until it is true; an AssertionError after
    `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'condition never became true'
        time.sleep(0.005)


def start_thread(target, *args):
    """Start and return a daemon thread running ``target(*args)``."""
    t = threading.Thread(target=target, args=args)
    t.daemon = True
    t.start()
    return t
