"""
Functions the fleet tests run on their targets (Python 2.7 and 3.6+); kept
apart from the test modules so that a target imports only this.
"""
import os
import time

import mitogen.core

#: Addresses on which :func:`probe` misbehaves.
CRASH_ADDRESS = '127.0.0.50'
HANG_ADDRESS = '127.0.0.60'


def probe():
    """The address the target's ssh login arrived on (from
    ``SSH_CONNECTION``); raises on :data:`CRASH_ADDRESS` and never returns
    on :data:`HANG_ADDRESS`."""
    address = os.environ['SSH_CONNECTION'].split()[2]
    if address == CRASH_ADDRESS:
        raise ValueError('crashed on purpose on %s' % (address,))
    if address == HANG_ADDRESS:
        time.sleep(3600)
    return address


def work(seconds, fail=False):
    """Sleep `seconds`, then return this process's ID, or raise
    ``ValueError`` when `fail`."""
    time.sleep(seconds)
    if fail:
        raise ValueError('failed on purpose')
    return os.getpid()


@mitogen.core.takes_econtext
def pid_sleeping_if_named(name, seconds, econtext):
    """This process's ID, after sleeping `seconds` if the context is called
    `name`."""
    if econtext.config['name'] == name:
        time.sleep(seconds)
    return os.getpid()
