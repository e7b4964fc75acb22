"""
Functions that tests/test_hostile.py runs in children: a producer for the
flow control test, and a peer that writes raw frames onto its stream to
the parent, as a hostile child could. They run in children of any Python
version, so this module stays Python 2.7 compatible.
"""
import errno
import os
import random
import select
import struct
import time

import mitogen.core


def rss_kib():
    """Resident set size of this process in KiB (Linux)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise RuntimeError('no VmRSS in /proc/self/status')


def produce(sender, total, chunk):
    """Send `total` bytes through `sender` in messages of `chunk` bytes as
    fast as it lets us, then close it; return the largest resident set size
    seen, in KiB."""
    data = b'x' * chunk
    peak = rss_kib()
    sent = 0
    while sent < total:
        sender.send(data)
        sent += chunk
        if not sent % (16 * chunk):
            peak = max(peak, rss_kib())
    sender.close()
    return max(peak, rss_kib())
