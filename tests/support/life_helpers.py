"""
Functions that tests/test_lifecycle.py calls in children: user code that
never returns, and children that die on cue.  They run in children, so this
module stays Python 2.7 compatible.
"""
import os
import time


def block_forever(marker):
    """Create the file `marker`, then sleep (as good as) forever: user code
    stuck in a call."""
    open(marker, 'w').close()
    time.sleep(1000)


def exit_when(path, status):
    """Wait until the file `path` exists, then end the process at once with
    `status`, as a crash would."""
    while not os.path.exists(path):
        time.sleep(0.01)
    os._exit(status)
