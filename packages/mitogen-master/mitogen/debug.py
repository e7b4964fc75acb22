# Copyright the mitogen contributors. BSD-3-Clause.
"""
Help for finding where a program hangs: the stacks of every thread of a
process, on demand (:func:`format_stacks`) or logged periodically
(:func:`dump_to_logger`). Both work in any context; to watch a child::

    context.call(mitogen.debug.dump_to_logger)

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

__all__ = ['dump_to_logger', 'format_stacks', 'stop_dumping']

import logging
import sys
import threading
import traceback

LOG = logging.getLogger(__name__)

_dumpers_lock = threading.Lock()
_dumpers = []


def format_stacks():
    """Return the stack of every thread of this process as text: for each
    thread, a line naming it, then its frames, innermost last, as
    ``traceback`` prints them."""
    names = dict((t.ident, t.name) for t in threading.enumerate())
    parts = []
    for ident, frame in sorted(sys._current_frames().items(),
                               key=lambda item: item[0]):
        parts.append('Thread %r (%d):\n%s' % (
            names.get(ident, '?'), ident,
            ''.join(traceback.format_stack(frame)),
        ))
    return '\n'.join(parts)


class _StackDumper(threading.Thread):
    def __init__(self, secs):
        super(_StackDumper, self).__init__(name='mitogen.debug.dump_to_logger')
        self.daemon = True
        self.secs = secs
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(self.secs):
            LOG.info('stacks of every thread:\n%s', format_stacks())


def dump_to_logger(secs=5):
    """Start a daemon thread that logs :func:`format_stacks` every `secs`
    seconds, at INFO, on the logger ``mitogen.debug``, which it enables for
    INFO whatever the log level of the process (in a child, records reach
    the master as every other record); :func:`stop_dumping` ends it.
    Returns nothing, so that it can be called in another context."""
    if not LOG.isEnabledFor(logging.INFO):
        LOG.setLevel(logging.INFO)
    dumper = _StackDumper(secs)
    with _dumpers_lock:
        _dumpers.append(dumper)
    dumper.start()


def stop_dumping(timeout=None):
    """Stop every thread :func:`dump_to_logger` started in this process,
    and wait up to `timeout` seconds (None: as long as it takes) for each
    to end."""
    with _dumpers_lock:
        dumpers = list(_dumpers)
        del _dumpers[:]
    for dumper in dumpers:
        dumper.stopped.set()
    for dumper in dumpers:
        dumper.join(timeout)
