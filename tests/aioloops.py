"""
Running coroutines in tests on each event loop :mod:`mitogen.aio` supports:
asyncio's own and uvloop's (a visible skip where uvloop is not installed).
"""
import asyncio

import pytest

try:
    import uvloop
except ImportError:
    uvloop = None
else:
    # uvloop opens a pipe of its own, once per process, with its first
    # loop: open it now, so that the leak check of the first test that
    # runs a loop does not count it.
    uvloop.new_event_loop().close()

KINDS = ('asyncio', 'uvloop')


def params():
    """``pytest.param`` for each kind of loop, uvloop's skipped when absent."""
    return [
        pytest.param('asyncio'),
        pytest.param('uvloop', marks=pytest.mark.skipif(
            uvloop is None, reason='uvloop is not installed '
            '(scripts/requirements-test.txt has it)')),
    ]


def run(kind, coro):
    """Run `coro` to completion on a new loop of `kind`, as
    ``asyncio.run()`` does, and return its result."""
    loop = uvloop.new_event_loop() if kind == 'uvloop' else \
        asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
