# Copyright the mitogen contributors. BSD-3-Clause.
"""
Helpers for programs: running a function with a router, logging setup and
conversion of values to plain built-in types.
"""

__all__ = [
    'PASSTHROUGH', 'cast', 'log_get_formatter', 'log_to_file',
    'run_with_router', 'setup_gil', 'with_router',
]

import datetime
import logging
import os
import sys

import mitogen
import mitogen.core

# Type comments (PEP 484) describe the API: this module runs in children,
# which may be Python 2.7.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, TypeVar  # noqa: F401 (type comments)
    _T = TypeVar('_T')

_LOG_FORMAT = '%(asctime)s %(levelname).1s %(name)s: %(message)s'
_DATE_FORMAT = '%H:%M:%S'


def log_get_formatter():
    """Return the ``logging.Formatter`` used by :func:`log_to_file`."""
    return logging.Formatter(_LOG_FORMAT, _DATE_FORMAT)


def _levelname_to_levels(name, default=logging.WARNING):
    """Return the levels of the loggers of :data:`mitogen.core.LOGGERS`
    (root, ``mitogen``, ``mitogen.io``), in that order, for the level named
    `name` (any case): ``'DEBUG'``, ``'INFO'``, ``'WARNING'``, ... or
    ``'IO'``, which is ``DEBUG`` with every message the brokers read and
    write. Other names mean `default`. ``mitogen.io`` logs messages at
    ``DEBUG``, so it stays at ``INFO`` or above unless `name` is ``'IO'``.
    """
    name = (name or '').upper()
    if name == 'IO':
        return (logging.DEBUG, logging.DEBUG, logging.DEBUG)
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        level = default
    return (level, level, max(level, logging.INFO))


def log_to_file(path=None, io=False, level='INFO'):
    # type: (Optional[str], bool, str) -> None
    """Send log output of this process, and of every child (it arrives on
    loggers named ``mitogen.ctx.<context name>``), to `path` or stderr.
    Sets the levels of every logger of :data:`mitogen.core.LOGGERS` (see
    :func:`_levelname_to_levels`).

    :param str path: file to append to; stderr when None.
    :param bool io: also log every message the brokers read and write.
    :param str level: name of the level, e.g. ``'DEBUG'``, or ``'IO'``
        (the same as `io`); the environment variable ``MITOGEN_LOG_LEVEL``
        overrides it.
    """
    level = os.environ.get('MITOGEN_LOG_LEVEL', level)
    levels = _levelname_to_levels(level, default=logging.INFO)
    if io:
        levels = levels[:2] + (logging.DEBUG,)
    for name, value in zip(mitogen.core.LOGGERS, levels):
        logging.getLogger(name).setLevel(value)
    log = logging.getLogger('')
    if path:
        fp = open(path, 'a')
    else:
        fp = sys.stderr
    for handler in list(log.handlers):
        if getattr(handler, 'is_mitogen', None):
            log.handlers.remove(handler)
    handler = logging.StreamHandler(fp)
    handler.is_mitogen = True
    handler.formatter = log_get_formatter()
    log.handlers.insert(0, handler)


def run_with_router(func, *args, **kwargs):
    # type: (Callable[..., _T], *Any, **Any) -> _T
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
    # type: (Callable[..., _T]) -> Callable[..., _T]
    """Decorator form of :func:`run_with_router`: the decorated function is
    called with a new router as its first argument."""
    def wrapper(*args, **kwargs):
        return run_with_router(func, *args, **kwargs)
    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


#: Types :func:`cast` returns unchanged: numbers, None, and the types every
#: context deserializes (:class:`mitogen.core.Context`,
#: :class:`mitogen.core.CallError`, :class:`mitogen.core.Blob`,
#: :class:`mitogen.core.Secret`, dates and times).
PASSTHROUGH = tuple(mitogen.core.integer_types) + (
    float, bool, type(None),
    mitogen.core.Context, mitogen.core.CallError,
    mitogen.core.Blob, mitogen.core.Secret,
    datetime.datetime, datetime.date,
)


def cast(obj):
    """Return `obj` with subclasses of built-in types (dict, list, tuple,
    str, bytes, ...) replaced by the plain built-in types, recursively, so
    the value can be serialized by code that does not know the subclasses.
    Values of the types of :data:`PASSTHROUGH` are kept as they are; tuples
    become lists."""
    if isinstance(obj, dict):
        return dict((cast(k), cast(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return [cast(v) for v in obj]
    if isinstance(obj, PASSTHROUGH):
        return obj
    if isinstance(obj, mitogen.core.UnicodeType):
        return mitogen.core.UnicodeType(obj)
    if isinstance(obj, mitogen.core.BytesType):
        return mitogen.core.BytesType(obj)
    raise TypeError('cannot convert %r to a built-in type' % (obj,))


def setup_gil():
    """Let a thread keep the GIL for long stretches: raise the interval
    after which Python makes a running thread hand the GIL to a waiting
    one (``sys.setswitchinterval()``, ``sys.setcheckinterval()`` on Python
    2). Threads then give it up when they block on I/O or a lock, as the
    broker and the waiters on latches do anyway, instead of being preempted
    in the middle of CPU-heavy work by a thread that contends for the same
    work; this cuts context switches of busy multi-threaded masters. Does
    nothing where neither setting exists."""
    if hasattr(sys, 'setswitchinterval'):
        sys.setswitchinterval(_GIL_SWITCH_INTERVAL)
    elif hasattr(sys, 'setcheckinterval'):
        sys.setcheckinterval(_GIL_CHECK_INTERVAL)


# Seconds (Python 3) and bytecode instructions (Python 2) between forced
# hand-overs of the GIL after setup_gil(); the defaults are 5 ms and 100.
_GIL_SWITCH_INTERVAL = 10.0
_GIL_CHECK_INTERVAL = 100000
