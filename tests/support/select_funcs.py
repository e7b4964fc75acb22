"""
Functions that tests/test_select.py calls in children.  They run in
children of every supported Python, so this module stays Python 2.7
compatible.
"""
import os
import sys
import threading
import time

import mitogen.core
import mitogen.select


def add(a, b):
    return a + b


def fail(text):
    raise ValueError(text)


def return_when(path, value, timeout=60.0):
    """Return `value` once the file `path` exists: a call whose completion
    the test decides."""
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            raise AssertionError('%s never appeared' % (path,))
        time.sleep(0.01)
    return value


def block_forever(marker):
    """Create the file `marker`, then sleep (as good as) forever."""
    open(marker, 'w').close()
    time.sleep(1000)


def select_over_threaded_latches():
    """Build a Select over two latches that two threads feed, and report
    what it returned: ``((major, minor), [(latch index, item), ...] in
    arrival order, members left)``."""
    latches = [mitogen.core.Latch(), mitogen.core.Latch()]
    threads = [
        threading.Thread(target=latches[i].put, args=(u'item-%d' % (i,),))
        for i in range(2)
    ]
    got = []
    with mitogen.select.Select(latches) as select:
        for t in threads:
            t.start()
        for event in select.iter_events():
            got.append((latches.index(event.source), event.data))
        remaining = len(select)
    for t in threads:
        t.join()
    return tuple(sys.version_info[:2]), got, remaining
