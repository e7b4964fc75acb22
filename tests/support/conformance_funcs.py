"""
Functions tests/test_conformance.py calls in the children of every
connection method. Python 2.7 compatible, like every child-side helper.
"""
import hashlib
import logging
import os


class ConformanceError(Exception):
    """Raised on request, to see its type name arrive in the master."""


def pid_and_sum(a, b):
    """``(pid, a + b)``: proof that the call ran in another process."""
    return os.getpid(), a + b


def fail(message):
    raise ConformanceError(message)


def sha256(data):
    """Hex SHA-256 of `data`, received from the master."""
    return hashlib.sha256(data).hexdigest()


def random_blob(n):
    """``(hex SHA-256, data)`` of `n` random bytes made here."""
    data = os.urandom(n)
    return hashlib.sha256(data).hexdigest(), data


def log_warning(logger_name, text):
    logging.getLogger(logger_name).warning('%s', text)


def _parent(pid):
    with open('/proc/%d/stat' % pid) as f:
        stat = f.read()
    return int(stat[stat.rfind(')') + 2:].split()[1])


def lineage(stop_pids):
    """PIDs from this process up through its parents, stopping before the
    first one in `stop_pids` (or at PID 1): the child and every program
    between it and whatever started the connection (sudo, su, sshd's
    session processes, a shell)."""
    stop = set(stop_pids) | set([0, 1])
    pids = []
    pid = os.getpid()
    while pid not in stop:
        pids.append(pid)
        pid = _parent(pid)
    return pids
