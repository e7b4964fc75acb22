# Copyright the mitogen contributors. BSD-3-Clause.
"""
Helpers for programs: running a function with a router, logging setup and
conversion of values to plain built-in types.
"""

import datetime
import logging
import os
import sys

import mitogen
import mitogen.core

PY3 = mitogen.core.PY3

_LOG_FORMAT = '%(asctime)s %(levelname).1s %(name)s: %(message)s'
_DATE_FORMAT = '%H:%M:%S'


def log_get_formatter():
    """Return the :class:`logging.Formatter` used by :func:`log_to_file`."""
    return logging.Formatter(_LOG_FORMAT, _DATE_FORMAT)


def log_to_file(path=None, io=False, level='INFO'):
    """Send log output of this process, and of every child (it arrives on
    loggers named ``mitogen.ctx.<context name>``), to `path` or stderr.

    :param str path: file to append to; stderr when None.
    :param bool io: also log every message the brokers read and write.
    :param str level: name of the level, e.g. ``'DEBUG'``; the environment
        variable ``MITOGEN_LOG_LEVEL`` overrides it.
    """
    level = os.environ.get('MITOGEN_LOG_LEVEL', level).upper()
    log = logging.getLogger('')
    if path:
        fp = open(path, 'a')
    else:
        fp = sys.stderr
    level = getattr(logging, level, logging.INFO)
    log.setLevel(level)
    for handler in list(log.handlers):
        if getattr(handler, 'is_mitogen', None):
            log.handlers.remove(handler)
    handler = logging.StreamHandler(fp)
    handler.is_mitogen = True
    handler.formatter = log_get_formatter()
    log.handlers.insert(0, handler)
    if io:
        logging.getLogger('mitogen.io').setLevel(level)


def run_with_router(func, *args, **kwargs):
    """Call `func(router, *args, **kwargs)` with a new
    :class:`mitogen.master.Router`, shutting it down afterwards."""
    import mitogen.master
    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    try:
        return func(router, *args, **kwargs)
    finally:
        broker.shutdown()
        broker.join()


def with_router(func):
    """Decorator form of :func:`run_with_router`: the decorated function is
    called with a new router as its first argument."""
    def wrapper(*args, **kwargs):
        return run_with_router(func, *args, **kwargs)
    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


_SIMPLE = (bool, int, float, type(None), datetime.datetime, datetime.date)


def cast(obj):
    """Return `obj` with subclasses of built-in types (dict, list, tuple,
    str, bytes, :class:`mitogen.core.Secret`, ...) replaced by the plain
    built-in types, recursively, so the value can be serialized by code
    that does not know the subclasses."""
    if isinstance(obj, dict):
        return dict((cast(k), cast(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return [cast(v) for v in obj]
    if isinstance(obj, _SIMPLE):
        return obj
    if isinstance(obj, mitogen.core.UnicodeType):
        return mitogen.core.UnicodeType(obj)
    if isinstance(obj, mitogen.core.BytesType):
        return mitogen.core.BytesType(obj)
    if not PY3 and isinstance(obj, long):  # noqa: F821
        return obj
    raise TypeError('cannot convert %r to a built-in type' % (obj,))
