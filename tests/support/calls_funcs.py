"""
Functions and classes that tests/test_calls.py and tests/test_api.py use in
children.  Everything here may run in a child of any supported Python, so it
stays Python 2.7 compatible.
"""
import datetime
import decimal
import logging
import os
import sys
import threading
import uuid

import mitogen
import mitogen.core


# --- plain functions -------------------------------------------------------

def identity(value):
    """Return `value` unchanged: a round trip in both directions."""
    return value


def add(a, b=0):
    return a + b


def type_name_of(value):
    """Return ``module.name`` of the type of `value` as the child sees it."""
    t = type(value)
    return '%s.%s' % (t.__module__, t.__name__)


def raise_value_error(text):
    raise ValueError(text)


class CustomError(Exception):
    """An exception class defined outside the standard library."""


def raise_custom_error(text):
    raise CustomError(text)


# Values recorded by record(), so that a test can see whether a call ran.
_RECORDED = []


def record(token):
    _RECORDED.append(token)


def recorded():
    return list(_RECORDED)


def package_globals():
    """Return the ``mitogen`` package globals of the calling context."""
    return {
        'context_id': mitogen.context_id,
        'parent_id': mitogen.parent_id,
        'parent_ids': list(mitogen.parent_ids),
        'is_master': mitogen.is_master,
    }


def use_master_router():
    """Import mitogen.master and try to build a Router; return what
    happened as ``(imported, error type name, error text)``."""
    import mitogen.master
    try:
        mitogen.master.Router()
    except mitogen.core.Error:
        e = sys.exc_info()[1]
        return True, type(e).__name__, str(e)
    return True, None, None


# --- classmethods, methods -------------------------------------------------

class Thing(object):
    def __init__(self, value=0):
        self.value = value

    @classmethod
    def double(cls, x):
        return (cls.__name__, x * 2)

    @staticmethod
    def triple(x):
        return x * 3

    def method(self):
        return self.value


# --- values built in the child ---------------------------------------------

def make_values():
    """Return the values that tests/test_calls.py builds in the master, so
    the child's serializer is exercised on objects the child created."""
    return {
        u'set': set([1, 2, 3]),
        u'frozenset': frozenset([u'a', u'b']),
        u'complex': complex(1.5, -2),
        u'bytearray': bytearray(b'\x00\x01\xffabc'),
        u'datetime': datetime.datetime(2024, 2, 29, 23, 59, 58, 123456),
        u'date': datetime.date(1999, 12, 31),
        u'time': datetime.time(13, 14, 15, 16),
        u'timedelta': datetime.timedelta(days=3, seconds=4, microseconds=5),
        u'decimal': decimal.Decimal('3.14159265358979323846'),
        u'uuid': uuid.UUID('12345678-1234-5678-1234-567812345678'),
        u'small_bytes': b'small',
        u'large_bytes': b'\xab' * 200000,
        u'nested': {u'a': [1, (2, 3), {u'b': set([4, 5])}],
                    u'c': (b'y' * 100, u'\xfc')},
    }


def make_aware_datetime():
    """A datetime with a timezone (Python 3 only: 2.7 has no timezone)."""
    tz = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    return datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=tz)


# --- serialization refusals ------------------------------------------------

class Unregistered(object):
    """A plain class nobody registered with Router.register_type()."""

    def __init__(self, value=None):
        self.value = value


def make_unregistered(value):
    return Unregistered(value)


class Point(object):
    """A class a test registers with Router.register_type()."""

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __eq__(self, other):
        return (isinstance(other, Point) and
                (self.x, self.y) == (other.x, other.y))

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash((self.x, self.y))

    def __repr__(self):
        return 'Point(%r, %r)' % (self.x, self.y)


def make_point(x, y):
    return Point(x, y)


def describe_point(p):
    """Return whether `p` arrived as a Point, and its coordinates."""
    return isinstance(p, Point), p.x, p.y


class Evil(object):
    """Pickles as a call to `func(*args)`: what an attacker would send to
    make the receiving side run code while unpickling."""

    def __init__(self, func, args):
        self.func = func
        self.args = args

    def __reduce__(self):
        return self.func, self.args


def make_evil_touch(path):
    """Return an object whose unpickling would create `path` with
    os.system."""
    return Evil(os.system, ('touch %s' % (path,),))


def make_lock():
    """Return an object pickle cannot serialize at all."""
    return threading.Lock()


def make_big_bytes(size):
    return b'z' * size


# --- receivers, senders, channels ------------------------------------------

def send_values(sender, values, close=True):
    """Send each of `values` through `sender`, then close it."""
    for value in values:
        sender.send(value)
    if close:
        sender.close()
    return len(values)


def send_and_close(sender):
    sender.close()


@mitogen.core.takes_router
def channel_echo(sender, router):
    """Serve a channel: tell the caller (through `sender`) where to write;
    the first value received is the Sender for replies, every later value
    is answered doubled, until the caller closes its side."""
    recv = mitogen.core.Receiver(router)
    sender.send(recv.to_sender())
    reply_to = recv.get().unpickle()
    count = 0
    for msg in recv:
        reply_to.send(msg.unpickle() * 2)
        count += 1
    return count


@mitogen.core.takes_econtext
def econtext_facts(econtext):
    """Return what the injected `econtext` is."""
    return (type(econtext).__name__,
            econtext.router.context_id == mitogen.context_id)


@mitogen.core.takes_router
def router_facts(router):
    """Return what the injected `router` is."""
    return (isinstance(router, mitogen.core.Router),
            router.context_id, mitogen.context_id)


def describe_context(context):
    return context.context_id, context.name


def describe_sender(sender):
    return (type(sender).__name__, sender.context.context_id,
            sender.dst_handle)


def types_of(values):
    """Return ``{key: type name}`` for a dict of values."""
    return dict((k, type_name_of(v)) for k, v in values.items())


# --- logging and stdio -----------------------------------------------------

def log_warning(name, text):
    logging.getLogger(name).warning('%s', text)


def print_line(text):
    print(text)
    sys.stdout.flush()


def write_stderr(text):
    sys.stderr.write(text + '\n')
    sys.stderr.flush()

