"""
Master-side helpers for tests about log records: a handler that keeps what
it receives, and polling the records ``caplog`` captured.
"""
import logging
import time


class Collect(logging.Handler):
    """A handler keeping every record it is given in :attr:`records`."""

    def __init__(self):
        logging.Handler.__init__(self)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def wait_for_record(caplog, predicate, timeout=10.0):
    """The first record of ``caplog`` for which `predicate` is true, polled
    for up to `timeout` s; None if none came."""
    deadline = time.monotonic() + timeout
    while True:
        for record in list(caplog.records):
            if predicate(record):
                return record
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
