"""
Functions that tests/test_interpreters.py and tests/test_packaging.py call
in children of every Python version.  They run in the child, so this module
stays Python 2.7 compatible.
"""
import hashlib
import logging
import os
import sys


class MatrixError(Exception):
    """Raised on purpose in a child, to check how it reaches the master."""


def describe(arg):
    """Return `arg`, the Python version (a tuple) and the process ID."""
    return arg, tuple(sys.version_info[:2]), os.getpid()


def fail(text):
    raise MatrixError(text)


def sha256_of(data):
    """Return whether `data` is bytes, its length and its SHA-256."""
    return (isinstance(data, bytes), len(data),
            hashlib.sha256(data).digest())


def random_bytes(size):
    """Return `size` random bytes and their SHA-256."""
    data = os.urandom(size)
    return data, hashlib.sha256(data).digest()


def log(name, text):
    """Log `text` at WARNING on logger `name`."""
    logging.getLogger(name).warning('%s', text)
