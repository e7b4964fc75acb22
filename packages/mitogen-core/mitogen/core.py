# Copyright the mitogen contributors. BSD-3-Clause.
"""
The core of mitogen: the one file every child receives through its stdin.

It holds, in order, the layers every context needs; the code marks each with
a ``# N. Title`` banner:

1. Compatibility and constants: Python 2/3 helpers, handles, limits,
   versions, file descriptor and profiling helpers.
2. Exceptions: the error types, and the checks of message fields that
   raise them.
3. Value types: :class:`Blob`, :class:`Secret` and :class:`Kwargs`, which
   the serializer carries specially.
4. The wire codec: :class:`Message`, the frame header, :class:`FrameDecoder`.
5. Serialization: a restricted pickle with out-of-band bytes.
6. Signals, Latch, pollers and timers: :func:`listen`/:func:`fire`,
   :class:`Latch`, :class:`Poller`, :class:`TimerList`.
7. Streams, protocols and the Broker: :class:`Side`, :class:`Stream`,
   :class:`MitogenProtocol`, :class:`Waker`, :class:`Broker`.
8. Router, Context, Receiver, Sender, Channel: routing, and the trust
   policy :func:`has_parent_authority` that handlers are registered with.
9. The importer: the child-side :class:`Importer`.
10. Log and stdio forwarding: :class:`LogHandler`,
    :class:`IoLoggerProtocol`.
11. Dispatcher and ExternalContext: the main program of every child.

Each section uses only the ones before it, with two exceptions, both
resolved when a message is handled, never at import:

* :class:`Message` (4) is the unit every layer passes around, and Mitogen's
  API gives it convenience methods that reach forward: ``pickled()`` and
  ``unpickle()`` call the serializer (``serialize_parts``, ``deserialize``,
  5) and ``reply()`` sends through ``msg.router`` (8).  The codec itself,
  header and framing, uses none of them.
* The serializer (5) rebuilds a pickled :class:`Context` or :class:`Sender`
  (8) bound to the router that received it (``_context_unpickler``,
  ``_sender_unpickler``); a router is always there by then.

This module is written in the subset of Python that runs on 2.7 and 3.6 and
later, uses only the standard library, and imports no other mitogen module at
import time, so it also works when vendored under another name.

``__all__`` lists the public names: those the API reference documents
(names programs need, names Mitogen documents, names programs written for
Mitogen use).  Every other name is internal: other mitogen modules use some
of them, and all stay importable under their names, but they may change.
"""

# Python 2 would take "import select" for mitogen.select, a sibling module.
from __future__ import absolute_import

__all__ = [
    'ADD_ROUTE', 'ALLOCATE_ID', 'Blob', 'Broker', 'BytesType',
    'CALL_FUNCTION', 'CALL_SERVICE', 'CHUNK_SIZE', 'CallError', 'Channel',
    'ChannelError', 'Context', 'DEL_ROUTE', 'DETACHING',
    'DelimitedProtocol', 'Dispatcher', 'EpollPoller', 'Error',
    'ExternalContext', 'FIRST_USER_HANDLE', 'FORWARD_LOG',
    'FORWARD_MODULE', 'FrameDecoder', 'FsPathTypes', 'GET_MODULE',
    'GET_RESOURCE', 'IS_DEAD', 'Importer', 'IoLoggerProtocol', 'Kwargs',
    'LOAD_MODULE', 'LOGGERS', 'Latch', 'LatchError', 'LogHandler',
    'MAX_CALL_ERROR_LENGTH', 'MAX_ID', 'MAX_NAME_LENGTH', 'Message',
    'MitogenProtocol', 'ModuleNotServed', 'ModuleRecord',
    'PROTOCOL_VERSION', 'Poller', 'Protocol', 'ProtocolError', 'Receiver',
    'Router', 'SHUTDOWN', 'STUB_CALL_SERVICE', 'Secret', 'Sender', 'Side',
    'Stream', 'StreamError', 'TimeoutError', 'Timer', 'TimerList',
    'UnicodeType', 'Waker', 'any', 'b', 'bytes_partition', 'control_body',
    'enable_profiling', 'fire', 'get_blocking', 'has_parent_authority',
    'import_module', 'integer_types', 'io_op', 'is_module_name',
    'iteritems', 'listen', 'next', 'pipe', 'set_blocking', 'set_cloexec',
    'set_nonblock', 'socketpair', 'str_partition', 'str_rpartition',
    'takes_econtext', 'takes_router', 'to_text', 'unlisten',
]

import collections
import errno
import fcntl
import heapq
import itertools
import logging
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import types
import zlib

try:
    import cPickle as _pickle_impl
except ImportError:
    _pickle_impl = pickle

try:
    from io import BytesIO
except ImportError:
    from StringIO import StringIO as BytesIO


# ---------------------------------------------------------------------------
# 1. Compatibility and constants
# ---------------------------------------------------------------------------

PY3 = sys.version_info >= (3,)

if PY3:
    BytesType = bytes
    UnicodeType = str
    integer_types = (int,)
    iteritems = dict.items
else:
    BytesType = str
    UnicodeType = unicode  # noqa: F821
    integer_types = (int, long)  # noqa: F821
    iteritems = dict.iteritems

#: Types accepted as filesystem paths: text and bytes (``unicode`` and
#: ``str`` on Python 2).
FsPathTypes = (UnicodeType, BytesType)

try:
    import builtins as _builtins
except ImportError:
    import __builtin__ as _builtins

# Programs written for Mitogen import these from here: they are the built-in
# functions.
next = _builtins.next
any = _builtins.any


def b(s):
    """Return the native string literal `s` as bytes (latin-1 on Python 3);
    bytes are returned unchanged."""
    if isinstance(s, BytesType):
        return s
    return s.encode('latin-1')


def str_partition(s, sep):
    """``s.partition(sep)`` for text."""
    return s.partition(sep)


def str_rpartition(s, sep):
    """``s.rpartition(sep)`` for text."""
    return s.rpartition(sep)


def bytes_partition(s, sep):
    """``s.partition(sep)`` for bytes."""
    return s.partition(sep)

#: Version of this core file and of the mitogen-core distribution: the one
#: place it is written (pyproject.toml reads it from here).
__version__ = '0.1.0'

#: The distribution this core belongs to: tells this project's modules
#: that they run on their own core, not on another project's ``mitogen``
#: package installed over them (:mod:`mitogen.installation`).
DISTRIBUTION = 'mitogen-core'

#: Version of the wire protocol spoken by this core. A master refuses to
#: start children with a core whose protocol it does not support.
PROTOCOL_VERSION = 1

# Handles reserved by the protocol; :ref:`handles` describes each one.

#: Handle of module requests: the body is a module's full name.
GET_MODULE = 100
#: Handle of function calls; accepted only from an ancestor.
CALL_FUNCTION = 101
#: Handle of log records and output lines forwarded towards the master.
FORWARD_LOG = 102
#: Handle of route announcements: a context ID lies behind a child.
ADD_ROUTE = 103
#: Handle of route withdrawals: a context is gone.
DEL_ROUTE = 104
#: Handle on which the master hands out fresh context IDs.
ALLOCATE_ID = 105
#: Handle of shutdown requests; accepted only from an ancestor.
SHUTDOWN = 106
#: Handle of module sources, sent in answer to :data:`GET_MODULE` or ahead
#: of time; accepted only from an ancestor. The body is a
#: :class:`ModuleRecord`.
LOAD_MODULE = 107
#: Reserved for forwarding modules down a tree of contexts.
FORWARD_MODULE = 108
#: Handle on which a child announces that it detaches from its parent
#: (:meth:`ExternalContext.detach`); accepted only from a direct child.
DETACHING = 109
#: Handle of service calls (:mod:`mitogen.service`): the body is
#: ``(service name, method name, kwargs)``.
CALL_SERVICE = 110
#: Reserved for service calls made through a stub.
STUB_CALL_SERVICE = 111
#: Handle of requests for package data read through ``importlib.resources``.
GET_RESOURCE = 112

#: Special value of :attr:`Message.reply_to` marking a dead message: the
#: sender closed the channel, or the message could not be delivered.
IS_DEAD = 999

#: First handle handed out to receivers allocated at run time.
FIRST_USER_HANDLE = 1000

#: Bytes read from a file descriptor at once.
CHUNK_SIZE = 262144

#: Default largest message accepted or sent, in bytes.
DEFAULT_MAX_MESSAGE_SIZE = 128 * 1048576

# Bounds of values received in messages: a value outside them refuses the
# message with StreamError before anything uses it.

#: Largest context ID and handle: the header carries them as 32-bit
#: unsigned integers.
MAX_ID = 0xffffffff
#: Longest context name accepted, in characters; names of proxied contexts
#: join the names of every hop, so this leaves room for long chains.
MAX_NAME_LENGTH = 4096
#: Longest :class:`CallError` text accepted, in characters. A longer error
#: is shortened by its sender (keeping its beginning and the end of its
#: traceback), so an honest error always arrives.
MAX_CALL_ERROR_LENGTH = 262144

LOG = logging.getLogger('mitogen')
#: Every message read and written, at DEBUG, when enabled (see
#: mitogen.utils.log_to_file(io=True)); quiet unless asked for.
IOLOG = logging.getLogger('mitogen.io')
IOLOG.setLevel(logging.INFO)

#: Names of the loggers the library configures (see
#: ``mitogen.utils.log_to_file()``): the root logger, ``mitogen`` (records of
#: the library, and of children under ``mitogen.ctx.<name>``) and
#: ``mitogen.io``.
LOGGERS = ('', 'mitogen', 'mitogen.io')


def _io_debug():
    return IOLOG.isEnabledFor(logging.DEBUG)


def to_text(s, encoding='utf-8'):
    """Return `s` as text, decoding bytes as UTF-8."""
    if isinstance(s, UnicodeType):
        return s
    if isinstance(s, BytesType):
        return s.decode(encoding, 'replace')
    return UnicodeType(s)


def to_native(s):
    """Return `s` as the native ``str`` type of this Python."""
    if PY3:
        return to_text(s)
    if isinstance(s, UnicodeType):
        return s.encode('utf-8')
    return str(s)


def _package_module():
    """Return the ``mitogen`` package module if it is loaded, else None.

    The core never imports the package itself, so that it works when
    vendored; package globals are updated only when the package exists."""
    return sys.modules.get('mitogen')


def set_cloexec(fd):
    """Mark `fd` close-on-exec so child processes never inherit it."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFD)
    fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)


def get_blocking(fd):
    """True when `fd` is in blocking mode (``os.get_blocking()`` of
    Python 3, on every Python)."""
    return not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK


def set_blocking(fd, blocking):
    """Put `fd` in blocking mode when `blocking` is true, else in
    non-blocking mode; return its previous flags."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if blocking:
        wanted = flags & ~os.O_NONBLOCK
    else:
        wanted = flags | os.O_NONBLOCK
    if wanted != flags:
        fcntl.fcntl(fd, fcntl.F_SETFL, wanted)
    return flags


def set_nonblock(fd):
    """Put `fd` in non-blocking mode and return its previous flags."""
    return set_blocking(fd, False)


def pipe():
    """Return `(reader, writer)`: unbuffered binary file objects of a new
    pipe, both close-on-exec. Each closes its descriptor when it is closed
    or garbage collected, so an end dropped by mistake cannot leak."""
    rfd, wfd = os.pipe()
    set_cloexec(rfd)
    set_cloexec(wfd)
    return os.fdopen(rfd, 'rb', 0), os.fdopen(wfd, 'wb', 0)


def socketpair(blocking=True):
    """Return a connected pair of ``AF_UNIX`` stream sockets, both
    close-on-exec, in blocking mode unless `blocking` is false.

    Blocking sockets suit a pair used as a semaphore between processes: one
    side waits in ``recv(1)`` until the other sends a byte, or closes."""
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in pair:
        set_cloexec(sock.fileno())
        sock.setblocking(bool(blocking))
    return pair


def io_op(func, *args):
    """Run an I/O call, retrying on EINTR.

    Returns `(result, disconnected)`: errors meaning the peer went away
    (EPIPE, ECONNRESET, EIO from a closed pty) become `(None, True)`."""
    while True:
        try:
            return func(*args), False
        except (OSError, IOError, socket.error) as e:
            err = e.args[0]
            if err == errno.EINTR:
                continue
            if err in (errno.EPIPE, errno.ECONNRESET, errno.EIO,
                       errno.ENOTCONN):
                return None, True
            raise


def now():
    """Monotonic time in seconds."""
    return _monotonic()


try:
    _monotonic = time.monotonic
except AttributeError:
    _monotonic = time.time


def import_module(modname):
    """Import the module named `modname` (a dotted name imports its parents
    too) and return it, as ``sys.modules`` holds it afterwards."""
    __import__(modname)
    return sys.modules[modname]


def _profile_hook(name, func, *args):
    """Call `func(*args)` and return its result. The broker thread's main
    function runs through this hook, and programs may run theirs through it
    too; :func:`enable_profiling` replaces it with one that profiles each
    call."""
    return func(*args)


def _profile_path(name):
    import tempfile
    safe = ''.join(c if c.isalnum() or c in '._-' else '_' for c in name)
    return os.path.join(tempfile.gettempdir(),
                        'mitogen.%d.%s.pstat' % (os.getpid(), safe))


def _profile_and_dump(name, func, *args):
    # cProfile is absent from minimal interpreters (Debian's
    # python3-minimal): imported only once profiling is asked for.
    import cProfile
    profiler = cProfile.Profile()
    try:
        profiler.enable()
    except ValueError:
        # Python 3.12+ profiles every thread with one profiler at a time:
        # another call already records this one.
        return func(*args)
    try:
        return func(*args)
    finally:
        profiler.disable()
        profiler.dump_stats(_profile_path(name))


def enable_profiling():
    """Profile every later call made through :func:`_profile_hook` of this
    process (which includes the main function of brokers started from now
    on). When a call returns, its statistics are written to
    ``<tempdir>/mitogen.<pid>.<name>.pstat``, where ``<tempdir>`` is
    ``tempfile.gettempdir()`` (``$TMPDIR``, usually ``/tmp``); a later call
    of the same name replaces the file. Read it with
    ``pstats.Stats(path)``. On Python 3.12 and later one profiler records
    every thread, so calls that overlap one being profiled are not profiled
    separately."""
    global _profile_hook
    _profile_hook = _profile_and_dump


# ---------------------------------------------------------------------------
# 2. Exceptions
# ---------------------------------------------------------------------------

class Error(Exception):
    """Base for every error this package raises. Formats its arguments with
    ``%`` when more than one is given."""

    def __init__(self, fmt=None, *args):
        if args:
            fmt %= args
        if fmt is None:
            Exception.__init__(self)
        else:
            Exception.__init__(self, fmt)


class LatchError(Error):
    """Raised when a :class:`Latch` was closed."""


class StreamError(Error):
    """Raised when a stream cannot be established, is corrupt, or a message
    cannot be serialized or deserialized."""


class TimeoutError(Error):
    """Raised when a timeout expires."""


class ChannelError(Error):
    """Raised when a channel or call is closed, by either end, or the
    context at the other end disconnected."""
    remote_msg = 'Channel closed by remote end.'
    local_msg = 'Channel closed by local end.'


class CallError(Error):
    """Raised when a function called in another context raised an exception.

    Its text is ``module.Type: message`` followed by a newline and the remote
    traceback, so it reads like the original error. The parts are kept as
    :attr:`type_name`, :attr:`remote_message` and :attr:`remote_traceback`.
    """

    #: Fully qualified name of the remote exception type, e.g.
    #: ``'builtins.ValueError'``.
    type_name = None
    #: ``str()`` of the remote exception.
    remote_message = None
    #: Remote traceback text (frames only), or the empty string.
    remote_traceback = ''

    def __init__(self, fmt=None, *args):
        if isinstance(fmt, BaseException):
            e = fmt
            cls = type(e)
            self.type_name = '%s.%s' % (cls.__module__, cls.__name__)
            try:
                self.remote_message = to_text(str(e))
            except Exception:
                self.remote_message = repr(e)
            tb = sys.exc_info()[2]
            self.remote_traceback = ''.join(traceback.format_tb(tb)) \
                if tb else ''
            fmt = '%s: %s' % (self.type_name, self.remote_message)
            if self.remote_traceback:
                fmt += '\n' + self.remote_traceback
            Error.__init__(self, fmt)
        else:
            Error.__init__(self, fmt, *args)

    def __reduce__(self):
        return (_unpickle_call_error, (
            _clip(to_text(self.args[0]) if self.args else u''),
            _clip(self.type_name, MAX_NAME_LENGTH),
            _clip(self.remote_message), _clip(self.remote_traceback),
        ))


def _clip(s, limit=MAX_CALL_ERROR_LENGTH):
    # Keep the head (type and message) and the tail (the innermost frames of
    # a traceback), which say the most about an error.
    if s is None or len(s) <= limit:
        return s
    marker = u'\n[... %d characters cut ...]\n' % (len(s) - limit + 40,)
    keep = (limit - 40) // 2
    return to_text(s[:keep]) + marker + to_text(s[-keep:])


def _check_text(what, s, limit, optional=False):
    if s is None and optional:
        return
    if not isinstance(s, (UnicodeType, BytesType)):
        raise StreamError('refusing %s: %s is not a string'
                          % (what, type(s).__name__))
    if len(s) > limit:
        raise StreamError('refusing %s: %d characters, more than the %d '
                          'allowed' % (what, len(s), limit))


def _check_id(what, value, low=0):
    if not isinstance(value, integer_types) or isinstance(value, bool) or \
            not low <= value <= MAX_ID:
        raise StreamError('refusing %s %r: not an integer in %d..%d'
                          % (what, value, low, MAX_ID))


def control_body(msg, what, length):
    """Return the body of control message `msg` (called `what` in errors):
    a tuple of `length` items.

    :raises StreamError: when the body is not such a tuple."""
    body = msg.unpickle()
    if not isinstance(body, (tuple, list)) or len(body) != length:
        raise StreamError('refusing %s: the body is not a tuple of %d items'
                          % (what, length))
    return body


def is_module_name(name):
    """True when `name` (text or bytes) is a dotted name of Python
    identifiers no longer than :data:`MAX_NAME_LENGTH`: the only names a
    module request may carry."""
    if not isinstance(name, (UnicodeType, BytesType)) or \
            not 0 < len(name) <= MAX_NAME_LENGTH:
        return False
    for part in to_text(name).split(u'.'):
        if not part or part[0].isdigit() or \
                not all(c.isalnum() or c == u'_' for c in part):
            return False
    return True


def _unpickle_call_error(s, type_name=None, message=None, tb=None):
    _check_text('CallError text', s, MAX_CALL_ERROR_LENGTH)
    _check_text('CallError type name', type_name, MAX_NAME_LENGTH, True)
    _check_text('CallError message', message, MAX_CALL_ERROR_LENGTH, True)
    _check_text('CallError traceback', tb, MAX_CALL_ERROR_LENGTH, True)
    e = CallError(to_text(s) if PY3 else s)
    # A Python 2 sender's native strings arrive as bytes on Python 3.
    e.type_name = to_native(type_name) if type_name is not None else None
    e.remote_message = message
    e.remote_traceback = to_native(tb or '')
    return e


# ---------------------------------------------------------------------------
# 3. Value types
# ---------------------------------------------------------------------------

class Blob(BytesType):
    """Bytes whose :func:`repr` shows only their length, so large or binary
    values do not flood logs."""

    def __repr__(self):
        return '[blob: %d bytes]' % len(self)

    def __reduce__(self):
        return (Blob, (BytesType(self),))


class Secret(UnicodeType):
    """Text whose :func:`repr` hides the value (passwords), so it never
    appears in logs or tracebacks; ``str()`` still returns it, for use."""

    def __repr__(self):
        return '[secret]'

    if not PY3:
        def __str__(self):
            return UnicodeType(self).encode('utf-8')

    def __reduce__(self):
        return (Secret, (UnicodeType(self),))


class Kwargs(dict):
    """A dict of keyword arguments. Keys are converted to the native string
    type so they can be passed as ``**kwargs``: text keys to byte strings
    on Python 2, byte-string keys (from a Python 2 peer) to text on
    Python 3."""

    if not PY3:
        def __init__(self, dct=()):
            for k, v in dict(dct).iteritems():
                if type(k) is unicode:  # noqa: F821
                    k = k.encode('utf-8')
                self[k] = v
    else:
        def __init__(self, dct=()):
            for k, v in dict(dct).items():
                if type(k) is bytes:
                    k = k.decode('utf-8')
                self[k] = v

    def __repr__(self):
        return 'Kwargs(%s)' % (dict.__repr__(self),)

    def __reduce__(self):
        return (Kwargs, (dict(self),))


# ---------------------------------------------------------------------------
# 4. The wire codec
# ---------------------------------------------------------------------------
#
# Every message on a stream is a fixed 32-byte header then the body:
#
#   offset size field
#   0      2    magic 0x4d49 ('MI')
#   2      2    flags (FLAG_OOB: the body is a pickle with out-of-band buffers)
#   4      4    dst_id      context the message is for
#   8      4    src_id      context that wrote the message
#   12     4    auth_id     context whose authority the message acts under
#   16     4    handle      handler in dst_id that receives the message
#   20     4    reply_to    handle in src_id for replies, or IS_DEAD
#   24     4    reserved, zero
#   28     4    length      body length in bytes
#
# All integers are unsigned big-endian. The decoder checks magic and length
# against the stream's limit BEFORE it allocates anything for the body, so a
# peer cannot make us reserve memory with a header alone; anything wrong in a
# header is a protocol violation that ends the stream, because after a bad
# header the byte stream can no longer be trusted to be in frame.

HEADER_FMT = '>HHLLLLLLL'
HEADER_LEN = struct.calcsize(HEADER_FMT)
HEADER_MAGIC = 0x4d49
FLAG_OOB = 0x1
_header = struct.Struct(HEADER_FMT)

# Bodies smaller than this are joined to their header so a message leaves in
# one write; larger ones are written separately to avoid copying them.
_JOIN_LIMIT = 65536


class ProtocolError(StreamError):
    """A peer violated the wire protocol: bad magic, oversized message."""


class Message(object):
    """A message: routing header fields plus an opaque body.

    :attr:`data` is the body, usually a pickle written by :meth:`pickled`
    and read back by :meth:`unpickle`.
    """
    #: ID of the context the message is addressed to.
    dst_id = None
    #: ID of the context that created the message.
    src_id = None
    #: ID of the context on whose authority the message acts.
    auth_id = None
    #: Handle of the receiver in the destination context.
    handle = None
    #: Handle in the source context that expects the reply, 0 for none, or
    #: :data:`IS_DEAD` for a dead message.
    reply_to = None
    #: How the body is encoded; set by :meth:`pickled`.
    flags = 0
    _data = b''
    # A pickled body is kept as the list of pieces serialize_parts() made,
    # so a large byte string is written straight from the caller's object
    # instead of being copied into one joined body first.
    _parts = None
    _size = 0
    #: The :class:`Router` the message arrived on, when received; given to
    #: the constructor, the router the message is written for.
    router = None
    #: The :class:`Receiver` the message was delivered to, when received.
    receiver = None
    _unpickled = None

    def __init__(self, **kwargs):
        # src_id and auth_id default to the identity of the router the
        # message is written for, else to this process's (the package
        # globals), which is that of every router a program normally has.
        router = kwargs.get('router')
        if router is not None:
            self.src_id = router.context_id
        else:
            pkg = _package_module()
            self.src_id = pkg.context_id if pkg is not None else 0
        self.auth_id = self.src_id
        for k, v in iteritems(kwargs):
            setattr(self, k, v)

    @property
    def data(self):
        """The body: bytes, or for a large received message carrying
        out-of-band buffers, a bytearray (avoiding one copy)."""
        if self._parts is not None:
            self._data = b''.join(self._parts)
            self._parts = None
        return self._data

    @data.setter
    def data(self, value):
        self._data = value
        self._parts = None

    @property
    def size(self):
        """Length of the body in bytes."""
        if self._parts is not None:
            return self._size
        return len(self._data)

    def __repr__(self):
        return 'Message(%r, %r, %r, %r, %r, %r..%d)' % (
            self.dst_id, self.src_id, self.auth_id, self.handle,
            self.reply_to, bytes(self.data[:50]), len(self.data),
        )

    @property
    def is_dead(self):
        """True when this is a dead message (see :data:`IS_DEAD`)."""
        return self.reply_to == IS_DEAD

    @classmethod
    def dead(cls, reason=None, **kwargs):
        """Return a dead message carrying `reason` as its body."""
        if reason is not None:
            reason = to_text(reason).encode('utf-8')
        return cls(reply_to=IS_DEAD, data=reason or b'', **kwargs)

    @classmethod
    def pickled(cls, obj, **kwargs):
        """Return a message whose body is `obj` serialized."""
        self = cls(**kwargs)
        self.flags, parts, self._size = serialize_parts(obj)
        if len(parts) == 1:
            self._data = parts[0]
        else:
            self._parts = parts
        return self

    def reply(self, msg, router=None, **kwargs):
        """Send `msg` (a :class:`Message`, or any object to pickle) as the
        reply to this message, through `router` or else the router it
        arrived on."""
        router = router or self.router
        if not isinstance(msg, Message):
            msg = Message.pickled(msg, router=router)
        msg.dst_id = self.src_id
        msg.handle = self.reply_to
        for k, v in iteritems(kwargs):
            setattr(msg, k, v)
        router.route(msg)

    def _dead_reason(self):
        if self.data:
            return to_text(self.data)
        return ChannelError.remote_msg

    def unpickle(self, throw=True, throw_dead=True):
        """Deserialize the body.

        :raises ChannelError: for a dead message, when `throw_dead`.
        :raises CallError: when the body is a :class:`CallError`, when
            `throw`.
        :raises StreamError: when the body holds a type that is not allowed.
        """
        if throw_dead and self.is_dead:
            raise ChannelError(self._dead_reason())
        obj = self._unpickled
        if obj is None:
            try:
                obj = deserialize(self.flags, self.data, self.router)
            except StreamError:
                self._count_refusal(sys.exc_info()[1])
                raise
            self._unpickled = obj
        if throw and isinstance(obj, CallError):
            raise obj
        return obj

    def _count_refusal(self, e):
        # The router delivered this message; a value its body holds is
        # refused only now, in the receiving thread. It is counted and
        # logged like the messages the router drops, within the same rate
        # limit, under the stream it arrived on.
        refuse = getattr(self.router, '_refuse', None)
        if refuse is not None and self.receiver is not None:
            refuse(self, self.router.stream_by_id(self.src_id),
                   'its body was refused: %s', e)

    def encode(self):
        """Return the message as a list of byte strings to write in order.

        :raises StreamError: when a header field does not fit the header:
            an ID or handle that is not an integer up to :data:`MAX_ID`."""
        try:
            hdr = _header.pack(HEADER_MAGIC, self.flags, self.dst_id,
                               self.src_id, self.auth_id, self.handle,
                               self.reply_to or 0, 0, self.size)
        except struct.error:
            raise StreamError(
                'cannot send %r: dst_id, src_id, auth_id, handle and '
                'reply_to must be integers in 0..%d' % (self, MAX_ID))
        if self._parts is not None:
            parts = self._parts
            if len(parts[0]) < _JOIN_LIMIT:
                return [hdr + parts[0]] + parts[1:]
            return [hdr] + parts
        data = self._data
        if len(data) < _JOIN_LIMIT:
            return [hdr + data]
        return [hdr, data]


class FrameDecoder(object):
    """Sans-I/O decoder: bytes in through :meth:`feed`, messages out through
    :meth:`next_message`.

    It owns no file descriptor and no thread.

    :param int max_message_size: largest body accepted; a header announcing
        more raises :class:`ProtocolError` before anything is allocated.
    """
    # Memory is spent on what arrives, never on what a header claims: the
    # body of a message collects into a buffer that grows as its bytes come
    # in. A peer that sends a header announcing max_message_size and then
    # stalls costs us the bytes it really sent (plus the buffer's
    # over-allocation, at most 1/8 of them), not max_message_size; growing
    # by appending costs no more than filling a preallocated buffer, because
    # large buffers are grown in place (realloc) rather than copied.

    def __init__(self, max_message_size=DEFAULT_MAX_MESSAGE_SIZE):
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._msg = None      # header decoded, body pending
        self._body = None     # body collected so far, for a split body
        self._need = 0        # body length announced by the header

    def feed(self, data):
        """Add received bytes."""
        body = self._body
        if body is not None:
            need = self._need - len(body)
            if len(data) <= need:
                body += data
                return
            body += memoryview(data)[:need]
            data = memoryview(data)[need:]
        self._buf += data

    @property
    def pending(self):
        """Number of bytes received but not yet returned as a message."""
        header = HEADER_LEN if self._msg is not None else 0
        body = len(self._body) if self._body is not None else 0
        return header + len(self._buf) + body

    def next_message(self):
        """Return the next complete :class:`Message`, or None when more data
        is needed.

        :raises ProtocolError: on a corrupt or oversized header."""
        if self._msg is None:
            if len(self._buf) < HEADER_LEN:
                return None
            (magic, flags, dst_id, src_id, auth_id, handle, reply_to,
             _, length) = _header.unpack_from(bytes(self._buf[:HEADER_LEN]))
            if magic != HEADER_MAGIC:
                raise ProtocolError(
                    'bad magic 0x%04x in message header: the stream is '
                    'corrupt or is not speaking this protocol' % (magic,))
            if length > self.max_message_size:
                raise ProtocolError(
                    'message of %d bytes exceeds max_message_size of %d '
                    'bytes' % (length, self.max_message_size))
            msg = Message()
            msg.dst_id, msg.src_id, msg.auth_id = dst_id, src_id, auth_id
            msg.handle, msg.reply_to, msg.flags = handle, reply_to, flags
            del self._buf[:HEADER_LEN]
            self._msg = msg
            self._need = length
            if length > len(self._buf):
                self._body = self._buf
                self._buf = bytearray()
        msg = self._msg
        body = self._body
        if body is not None:
            if len(body) < self._need:
                return None
            if msg.flags & FLAG_OOB and len(body) >= _JOIN_LIMIT:
                # Only deserialize() reads these bodies: it accepts the
                # buffer as is, which saves copying the whole body.
                msg.data = body
            else:
                msg.data = bytes(body)
            self._body = None
        else:
            msg.data = bytes(self._buf[:self._need])
            del self._buf[:self._need]
        self._msg = None
        return msg


# ---------------------------------------------------------------------------
# 5. Serialization
# ---------------------------------------------------------------------------
#
# Bodies are pickles of protocol 2, the newest protocol Python 2.7 reads.
# Two things differ from a plain pickle:
#
# * Byte strings travel out of band. Protocol 2 has no opcode for Python 3
#   bytes, so Python 3 would pickle them as text to be re-encoded, which
#   costs more than the transfer. Instead every exact bytes object is
#   replaced by a persistent ID and appended raw after the pickle. The body
#   of such a message (flag FLAG_OOB) is:
#
#       count(4) | len(8) * count | pickle_len(4) | pickle | buffers...
#
# * Unpickling resolves only an explicit allow-list of globals: the
#   builtins pickle needs for the values we document (set, frozenset,
#   complex, bytearray, the datetime family, Decimal, UUID), the mitogen
#   types, and types a program registers with Router.register_type(). Any
#   other global raises StreamError, so a peer can never make us construct
#   arbitrary objects or run code.

_oob_header = struct.Struct('>L')
# Smaller byte strings stay inside the pickle: a table entry costs more.
_OOB_MIN = 64
_oob_len = struct.Struct('>Q')

# (module, name) pairs the unpickler resolves, by the names Python 2 and 3
# write into protocol 2 pickles.
_ALLOWED_GLOBALS = {}


def _allow(module_names, name, obj):
    for module in module_names:
        _ALLOWED_GLOBALS[(module, name)] = obj


def _warm_codecs():
    # Looking up a codec the first time imports its module. On Python 2 the
    # broker thread must never import (the main thread may hold the import
    # lock while it waits for the broker), so every codec it uses is looked
    # up here, at import time.
    import codecs
    for name in ('latin-1', 'utf-8', 'ascii'):
        codecs.lookup(name)
        u'x'.encode(name)
        b'x'.decode(name)


def _init_allowed():
    builtins = ('__builtin__', 'builtins')
    for obj in (set, frozenset, complex, object):
        _allow(builtins, obj.__name__, obj)
    _allow(builtins, 'bytearray',
           _no_length_arg(_py2_text_args(bytearray, 1)))
    if not PY3:
        _allow(builtins, 'str', str)
        _allow(builtins, 'unicode', unicode)  # noqa: F821
    _allow(('_codecs',), 'encode', _safe_codecs_encode)
    _allow(builtins, 'bytes', _safe_empty_bytes)
    _allow(('copy_reg', 'copyreg'), '_reconstructor', _safe_reconstructor)
    for name in ('datetime', 'date', 'time', 'timedelta', 'tzinfo',
                 'timezone'):
        _allow_lazy(('datetime',), name, 'datetime', name)
    _allow_lazy(('decimal', '_decimal', '_pydecimal'), 'Decimal', 'decimal',
                'Decimal', lambda cls: _py2_text_args(cls, 0))
    _allow_lazy(('uuid',), 'UUID', 'uuid', 'UUID')
    if not PY3:
        # The broker thread of Python 2 must never import (see
        # _warm_codecs): resolve them all now.
        for key in list(_LAZY_GLOBALS):
            try:
                _resolve_lazy(*key)
            except StreamError:
                pass
        # Python 2 pickles a UUID as its attribute dict, whose byte-string
        # key Python 3 refuses; send it as the call UUID(int=...) instead.
        if ('uuid', 'UUID') in _ALLOWED_GLOBALS:
            import copy_reg
            copy_reg.pickle(_ALLOWED_GLOBALS['uuid', 'UUID'], _reduce_uuid)


# Allowed globals whose module is imported when a message first names one:
# minimal interpreters (Debian's python3-minimal) have no decimal or uuid,
# and every context would otherwise pay for importing them at start.
# (pickled module, name) -> (module to import, attribute, wrapper or None).
_LAZY_GLOBALS = {}


def _allow_lazy(module_names, name, import_name, attr, wrap=None):
    for module in module_names:
        _LAZY_GLOBALS[(module, name)] = (import_name, attr, wrap)


def _resolve_lazy(module, name):
    """The allowed global `module.name` of :data:`_LAZY_GLOBALS`, imported
    now, or None if it is not one of them."""
    spec = _LAZY_GLOBALS.get((module, name))
    if spec is None:
        return None
    import_name, attr, wrap = spec
    try:
        obj = getattr(__import__(import_name), attr)
    except (ImportError, AttributeError) as e:
        raise StreamError('cannot unpickle %s.%s: this interpreter lacks it '
                          '(%s)' % (module, name, e))
    if wrap is not None:
        obj = wrap(obj)
    _ALLOWED_GLOBALS[(module, name)] = obj
    return obj


def _reduce_uuid(u):
    return type(u), (None, None, None, None, u.int)


def _py2_text_args(cls, index):
    # Python 2 pickles a text argument of some constructors (Decimal's
    # digits, bytearray's encoding name) as a byte string, which Python 3
    # constructors refuse: decode argument `index` when it is bytes.
    if not PY3:
        return cls

    def construct(*args):
        if len(args) > index and isinstance(args[index], BytesType):
            args = list(args)
            args[index] = args[index].decode('latin-1')
        return cls(*args)
    return construct


def _safe_codecs_encode(s, encoding='latin1'):
    # Protocol 2 pickles of bytes written by Python 3's own pickler (e.g. by
    # a program that pickled something itself) arrive as this call.
    if encoding not in ('latin1', 'latin-1'):
        raise StreamError('refusing _codecs.encode with encoding %r'
                          % (encoding,))
    return s.encode('latin-1')


def _no_length_arg(construct):
    # bytearray(n) allocates n bytes from a pickle of a few bytes; pickle
    # never writes that call, so a peer that does is refused.
    def construct_no_length(*args):
        if args and isinstance(args[0], integer_types):
            raise StreamError('refusing bytearray() of a length')
        return construct(*args)
    return construct_no_length


def _safe_empty_bytes(*args):
    # Python 3 writes an empty bytes object into a protocol 2 pickle as the
    # call bytes(); any argument (bytes(10**12)) is not ours to honour.
    if args:
        raise StreamError('refusing bytes() with arguments')
    return BytesType()


def _safe_reconstructor(cls, base, state):
    # copy_reg._reconstructor, limited to classes the allow-list produced.
    if not isinstance(cls, type) or not isinstance(base, type):
        raise StreamError('refusing to reconstruct a non-class')
    if base is object:
        return object.__new__(cls)
    obj = base.__new__(cls, state)
    if base.__init__ != object.__init__:
        base.__init__(obj, state)
    return obj


_SCALARS = frozenset([int, float, bool, type(None), UnicodeType] +
                     list(integer_types))
_CONTAINERS = frozenset([tuple, list, set, frozenset])
# Exact types whose emptiness holds no byte string (the test `not obj` runs
# no code of the caller's).
_EMPTY_OK = frozenset([tuple, list, set, frozenset, dict, Kwargs, BytesType])


def _needs_oob(obj, budget):
    """Decide cheaply whether `obj` may hold byte strings worth sending out
    of band. Small graphs of plain values are walked; anything larger or of
    another type answers True, which only selects the general (slower per
    object, never wrong) pickler."""
    t = type(obj)
    if t in _SCALARS:
        return False
    if t is BytesType:
        return len(obj) > _OOB_MIN
    budget[0] -= 1
    if budget[0] < 0:
        return True
    # Scalar and empty items are decided here rather than by a recursive
    # call each: a call's tuple is mostly names, None and empty arguments.
    if t in _CONTAINERS:
        for item in obj:
            it = type(item)
            if it in _SCALARS or (it in _EMPTY_OK and not item):
                continue
            if _needs_oob(item, budget):
                return True
        return False
    if t is dict or t is Kwargs:
        for k, v in iteritems(obj):
            if type(k) in _SCALARS and type(v) in _SCALARS:
                continue
            if _needs_oob(k, budget) or _needs_oob(v, budget):
                return True
        return False
    return True


def serialize(obj):
    """Serialize `obj`; return `(flags, body)`."""
    flags, parts, _ = serialize_parts(obj)
    if len(parts) == 1:
        return flags, parts[0]
    return flags, b''.join(parts)


def serialize_parts(obj):
    """Serialize `obj`; return `(flags, parts, size)` where the body is the
    concatenation of the byte strings `parts`, `size` bytes long. Large
    out-of-band byte strings appear in `parts` as the caller's own
    objects, uncopied."""
    if not _needs_oob(obj, [64]):
        try:
            if _VENDORED:
                fp = BytesIO()
                _CanonicalPickler(fp, 2).dump(obj)
                body = fp.getvalue()
            else:
                body = _pickle_impl.dumps(obj, 2)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise StreamError('cannot serialize %s: %s' % (
                _short_repr(obj), e))
        return 0, [body], len(body)
    buffers = []
    seen = {}

    def persistent_id(o):
        if type(o) is BytesType and len(o) > _OOB_MIN:
            i = seen.get(id(o))
            if i is None:
                i = seen[id(o)] = len(buffers)
                buffers.append(o)
            return i
        return None

    fp = BytesIO()
    try:
        if _VENDORED:
            p = _CanonicalPickler(fp, 2)
            p.persistent_id_func = persistent_id
        elif PY3:
            p = _Py3Pickler(fp, 2)
            p.persistent_id_func = persistent_id
        else:
            p = _pickle_impl.Pickler(fp, 2)
            p.persistent_id = persistent_id
        p.dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise StreamError('cannot serialize %s: %s' % (
            _short_repr(obj), e))
    body = fp.getvalue()
    if not buffers:
        return 0, [body], len(body)
    head = [_oob_header.pack(len(buffers))]
    head.extend(_oob_len.pack(len(b)) for b in buffers)
    head.append(_oob_header.pack(len(body)))
    head.append(body)
    parts = []
    pending = head
    for buf in buffers:
        if len(buf) < _JOIN_LIMIT:
            pending.append(buf)
        else:
            parts.append(b''.join(pending))
            parts.append(buf)
            pending = []
    if pending:
        parts.append(b''.join(pending))
    size = sum(len(p) for p in parts)
    return FLAG_OOB, parts, size


#: True when this file was imported under another name than mitogen.core:
#: copied into an application (``yourapp/_vendor/mitogen_core.py``).
_VENDORED = __name__ != 'mitogen.core'
_PurePickler = getattr(pickle, '_Pickler', pickle.Pickler)


class _CanonicalPickler(_PurePickler):
    """A pure-Python pickler that writes the types and functions of this
    module (:class:`Blob`, :class:`Secret`, :class:`Kwargs`,
    :class:`CallError`, ...) under the name every peer knows,
    ``mitogen.core``, instead of the name a vendored copy was imported
    under, which no peer would allow. Used only by a vendored copy: the C
    pickler cannot be told to."""
    persistent_id_func = None

    def persistent_id(self, obj):
        if self.persistent_id_func is None:
            return None
        return self.persistent_id_func(obj)

    def save_global(self, obj, name=None, *args):
        if getattr(obj, '__module__', None) != __name__:
            return _PurePickler.save_global(self, obj, name, *args)
        name = name or obj.__name__
        self.write(pickle.GLOBAL + b'mitogen.core\n' + name.encode('ascii')
                   + b'\n')
        self.memoize(obj)

    # The dispatch table holds the base class's function for functions
    # and (on Python 2) classes: point those entries at the method above.
    dispatch = dict(_PurePickler.dispatch)
    for _type, _func in list(dispatch.items()):
        if _func is _PurePickler.__dict__['save_global']:
            dispatch[_type] = save_global
    del _type, _func


def _short_repr(obj):
    s = repr(obj)
    if len(s) > 80:
        s = s[:77] + '...'
    return s


if PY3:
    class _Py3Pickler(pickle.Pickler):
        persistent_id_func = None

        def persistent_id(self, obj):
            return self.persistent_id_func(obj)

    class _Py3Unpickler(pickle.Unpickler):
        find_class_func = None
        persistent_load_func = None

        def find_class(self, module, name):
            return self.find_class_func(module, name)

        def persistent_load(self, pid):
            return self.persistent_load_func(pid)


def deserialize(flags, data, router=None):
    """Deserialize a body written by :func:`serialize`.

    `router` resolves :class:`Context` and :class:`Sender` references and
    supplies the types registered with :meth:`Router.register_type`.

    :raises StreamError: when the body is malformed or names a global that
        is not allowed."""
    buffers = ()
    body = data
    if flags & FLAG_OOB:
        try:
            mv = memoryview(data)
            count, = _oob_header.unpack_from(data, 0)
            off = 4
            if count > len(data) // 8:
                raise StreamError('corrupt out-of-band table')
            lens = []
            for _ in range(count):
                n, = _oob_len.unpack_from(data, off)
                lens.append(n)
                off += 8
            plen, = _oob_header.unpack_from(data, off)
            off += 4
            body = mv[off:off + plen]
            off += plen
            buffers = []
            for n in lens:
                if off + n > len(data):
                    raise StreamError('corrupt out-of-band buffer length')
                buffers.append(mv[off:off + n].tobytes())
                off += n
            if off != len(data):
                raise StreamError('trailing bytes after out-of-band buffers')
            body = body.tobytes()
        except struct.error:
            raise StreamError('corrupt out-of-band table')

    def find_class(module, name):
        obj = _ALLOWED_GLOBALS.get((module, name)) or \
            _resolve_lazy(module, name)
        if obj is not None:
            return obj
        if module == 'mitogen.core' or module == __name__:
            if name == '_unpickle_context':
                return _context_unpickler(router)
            if name == '_unpickle_sender':
                return _sender_unpickler(router)
            obj = _CHECKED_CONSTRUCTORS.get(name)
            if obj is not None:
                return obj
        if router is not None:
            obj = router._resolve_registered_type(module, name)
            if obj is not None:
                return obj
        raise StreamError(
            'cannot unpickle %s.%s: the type is not allowed. Register it '
            'with Router.register_type() on the receiving side to accept it'
            % (module, name))

    def persistent_load(pid):
        try:
            if type(pid) not in integer_types or pid < 0:
                raise TypeError()
            return buffers[pid]
        except (IndexError, TypeError):
            raise StreamError('bad out-of-band reference %r' % (pid,))

    fp = BytesIO(body)
    try:
        if PY3:
            u = _Py3Unpickler(fp, encoding='bytes')
            u.find_class_func = find_class
            u.persistent_load_func = persistent_load
        else:
            u = _pickle_impl.Unpickler(fp)
            u.find_global = find_class
            u.persistent_load = persistent_load
        return u.load()
    except StreamError:
        raise
    except Exception as e:
        raise StreamError('cannot deserialize message: %s: %s'
                          % (type(e).__name__, e))


def _checked_call_error(*args):
    # CallError pickled as a plain exception (its class and arguments).
    if len(args) > 1:
        raise StreamError('refusing CallError of %d arguments' % (len(args),))
    return _unpickle_call_error(*(args or (u'',)))


def _checked_blob(s=b''):
    # Blob(n) would allocate n bytes from a pickle of a few.
    if not isinstance(s, BytesType):
        raise StreamError('refusing Blob of %s' % (type(s).__name__,))
    return Blob(s)


def _checked_secret(s=u''):
    if isinstance(s, BytesType):
        s = s.decode('utf-8')
    if not isinstance(s, UnicodeType):
        raise StreamError('refusing Secret of %s' % (type(s).__name__,))
    return Secret(s)


def _checked_kwargs(dct=None):
    if dct is None:
        dct = {}
    if not isinstance(dct, dict):
        raise StreamError('refusing Kwargs of %s' % (type(dct).__name__,))
    return Kwargs(dct)


# What the unpickler gives for the mitogen.core names that pickles of our
# value types refer to: constructors that check their arguments first.
_CHECKED_CONSTRUCTORS = {
    'CallError': _checked_call_error,
    '_unpickle_call_error': _unpickle_call_error,
    'Blob': _checked_blob,
    'Secret': _checked_secret,
    'Kwargs': _checked_kwargs,
}


def _context_unpickler(router):
    def _unpickle_context(context_id, name=None):
        _check_id('context ID', context_id)
        _check_text('context name', name, MAX_NAME_LENGTH, True)
        if router is None:
            return Context(None, context_id, to_text(name) if name else None)
        return router.context_by_id(context_id, create=True,
                                    name=to_text(name) if name else None)
    return _unpickle_context


def _sender_unpickler(router):
    def _unpickle_sender(context_id, dst_handle, window=None):
        _check_id('Sender context ID', context_id)
        _check_id('Sender handle', dst_handle, 1)
        if window is not None:
            _check_id('Sender window', window, 1)
        if router is None:
            ctx = Context(None, context_id)
        else:
            ctx = router.context_by_id(context_id, create=True)
        return Sender(ctx, dst_handle, window)
    return _unpickle_sender


def _unpickle_context(context_id, name):
    raise TypeError('contexts are unpickled through a router')


def _unpickle_sender(context_id, dst_handle, window=None):
    raise TypeError('senders are unpickled through a router')


_warm_codecs()
_init_allowed()


# ---------------------------------------------------------------------------
# 6. Signals, Latch, pollers and timers
# ---------------------------------------------------------------------------

def listen(obj, name, func):
    """Arrange for `func()` to run when signal `name` is fired on `obj`."""
    signals = vars(obj).setdefault('_signals', {})
    signals.setdefault(name, []).append(func)


def unlisten(obj, name, func):
    """Remove `func` from the listeners of signal `name` on `obj`."""
    signals = vars(obj).get('_signals', {})
    try:
        signals.get(name, []).remove(func)
    except ValueError:
        pass


def fire(obj, name, *args, **kwargs):
    """Call every listener of signal `name` on `obj` with the arguments."""
    signals = vars(obj).get('_signals', {})
    for func in list(signals.get(name, ())):
        func(*args, **kwargs)


def takes_econtext(func):
    """Decorator: the function receives the :class:`ExternalContext` of the
    context it runs in as keyword argument `econtext` when invoked through
    :data:`CALL_FUNCTION`."""
    func.mitogen_takes_econtext = True
    return func


def takes_router(func):
    """Decorator: the function receives the :class:`Router` of the context
    it runs in as keyword argument `router` when invoked through
    :data:`CALL_FUNCTION`."""
    func.mitogen_takes_router = True
    return func


_CAN_TIMED_ACQUIRE = PY3


class Latch(object):
    """A thread-safe queue that any number of threads may wait on.

    :meth:`put` never blocks. :meth:`get` blocks until an item arrives, the
    latch is closed, or the timeout expires. Each waiter sleeps on a lock of
    its own, so a wake-up costs no file descriptor and no polling.
    """

    # Most latches hold one reply at a time, and thousands may be alive at
    # once (calls in flight): an empty deque allocates a 64-slot block
    # (~760 bytes), a list ~60. The queue is a list until it holds more
    # than _SMALL items, then a deque, so a long backlog still pops in
    # constant time; waiters are few (one per thread), a list suffices.
    _SMALL = 16

    def __init__(self):
        self._lock = threading.Lock()
        self._queue = []
        self._waiters = []
        self.closed = False

    def close(self):
        """Wake every waiter with :class:`LatchError`; later calls to
        :meth:`get` raise it too."""
        with self._lock:
            self.closed = True
            waiters, self._waiters = self._waiters, []
        for w in waiters:
            w[1] = True
            w[0].release()
        if self.notify is not None:
            self.notify(self)

    def size(self):
        """Number of items queued."""
        with self._lock:
            if self.closed:
                raise LatchError()
            return len(self._queue)

    def empty(self):
        """True when no item is queued."""
        return self.size() == 0

    #: Called with the latch after each :meth:`put`, outside its lock
    #: (used by :class:`mitogen.select.Select`).
    notify = None

    def put(self, obj=None):
        """Queue `obj`, waking one waiter."""
        with self._lock:
            if self.closed:
                raise LatchError()
            queue = self._queue
            queue.append(obj)
            if len(queue) > self._SMALL and queue.__class__ is list:
                self._queue = collections.deque(queue)
            while self._waiters:
                w = self._waiters.pop(0)
                if not w[1]:
                    w[1] = True
                    w[0].release()
                    break
        if self.notify is not None:
            self.notify(self)

    def get(self, timeout=None, block=True):
        """Return the next item.

        :raises TimeoutError: when `timeout` seconds pass first, or
            immediately when nothing is queued and `block` is false.
        :raises LatchError: when the latch is or becomes closed."""
        deadline = None if timeout is None else now() + timeout
        while True:
            remaining = None if deadline is None else deadline - now()
            with self._lock:
                if self.closed:
                    raise LatchError()
                if self._queue:
                    return self._pop()
                if not block or (remaining is not None and remaining <= 0):
                    raise TimeoutError()
                waiter = [threading.Lock(), False]
                waiter[0].acquire()
                self._waiters.append(waiter)
            acquired = _acquire(waiter[0], remaining)
            with self._lock:
                if not acquired and not waiter[1]:
                    waiter[1] = True
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        pass
                    raise TimeoutError()
                if self.closed:
                    raise LatchError()
                if self._queue:
                    return self._pop()
            # Woken for an item another thread took first: wait again for
            # what is left of the timeout.

    def _pop(self):
        # Under the lock, the queue not empty; works on a list and a deque.
        queue = self._queue
        obj = queue[0]
        del queue[0]
        return obj

    def __repr__(self):
        return 'Latch(%#x, size=%d)' % (id(self), len(self._queue))

    @classmethod
    def _on_fork(cls):
        """Discard state shared by the latches of a process, for a child
        forked from it (see ``mitogen.fork.on_fork()``). Safe at any time.

        This latch keeps none to discard: no file descriptors are cached
        between latches, and each waiter sleeps on a lock of its own."""


def _acquire(lock, timeout):
    if timeout is None:
        lock.acquire()
        return True
    if _CAN_TIMED_ACQUIRE:
        return lock.acquire(True, max(0, timeout))
    # Python 2 has no timed acquire; wait in short sleeps rather than the
    # busy loop of threading.Condition.
    deadline = now() + timeout
    delay = 0.0005
    while True:
        if lock.acquire(False):
            return True
        remaining = deadline - now()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


class Poller(object):
    """Readiness poller over file descriptors, built on ``select.poll``.

    Registered objects are returned by :meth:`poll` when their descriptor is
    ready; the broker uses the stream sides themselves."""
    #: True when this platform has what the class is built on; the broker's
    #: default is the first supported of :class:`EpollPoller` and this one.
    SUPPORTED = hasattr(select, 'poll')

    def __init__(self):
        self._select = select
        self._poll = select.poll()
        self._rfds = {}
        self._wfds = {}

    def _update(self, fd):
        mask = 0
        if fd in self._rfds:
            mask |= self._select.POLLIN
        if fd in self._wfds:
            mask |= self._select.POLLOUT
        if mask:
            self._poll.register(fd, mask)
        else:
            try:
                self._poll.unregister(fd)
            except KeyError:
                pass

    def start_receive(self, fd, data):
        self._rfds[fd] = data
        self._update(fd)

    def stop_receive(self, fd):
        self._rfds.pop(fd, None)
        self._update(fd)

    def start_transmit(self, fd, data):
        self._wfds[fd] = data
        self._update(fd)

    def stop_transmit(self, fd):
        self._wfds.pop(fd, None)
        self._update(fd)

    @property
    def readers(self):
        return list(self._rfds.items())

    @property
    def writers(self):
        return list(self._wfds.items())

    def close(self):
        pass

    def poll(self, timeout=None):
        """Yield `(kind, data)` for each ready registration, where kind is
        ``'r'`` or ``'w'``; errors and hang-ups count as readable so the
        owner discovers them by reading."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
        while True:
            try:
                events = self._poll.poll(ms)
                break
            except (OSError, IOError, self._select.error) as e:
                if e.args[0] != errno.EINTR:
                    raise
        POLLOUT = self._select.POLLOUT
        for fd, ev in events:
            if ev & ~POLLOUT:
                data = self._rfds.get(fd)
                if data is not None:
                    yield 'r', data
                elif ev & ~self._select.POLLIN and fd in self._wfds:
                    yield 'w', self._wfds[fd]
            if ev & POLLOUT:
                data = self._wfds.get(fd)
                if data is not None:
                    yield 'w', data


class EpollPoller(Poller):
    """:class:`Poller` built on epoll."""
    SUPPORTED = hasattr(select, 'epoll')

    def __init__(self):
        self._select = select
        self._epoll = select.epoll()
        self._rfds = {}
        self._wfds = {}
        self._registered = {}

    def _update(self, fd):
        mask = 0
        if fd in self._rfds:
            mask |= self._select.EPOLLIN
        if fd in self._wfds:
            mask |= self._select.EPOLLOUT
        old = self._registered.get(fd)
        if mask == (old or 0):
            return
        if not mask:
            del self._registered[fd]
            try:
                self._epoll.unregister(fd)
            except (OSError, IOError, ValueError):
                pass
        elif old is None:
            self._registered[fd] = mask
            self._epoll.register(fd, mask)
        else:
            self._registered[fd] = mask
            self._epoll.modify(fd, mask)

    def close(self):
        self._epoll.close()

    def poll(self, timeout=None):
        t = -1 if timeout is None else max(0, timeout)
        while True:
            try:
                events = self._epoll.poll(t)
                break
            except (OSError, IOError) as e:
                if e.args[0] != errno.EINTR:
                    raise
        EPOLLOUT = self._select.EPOLLOUT
        EPOLLIN = self._select.EPOLLIN
        for fd, ev in events:
            if ev & ~EPOLLOUT:
                data = self._rfds.get(fd)
                if data is not None:
                    yield 'r', data
                elif ev & ~EPOLLIN and fd in self._wfds:
                    yield 'w', self._wfds[fd]
                    continue
            if ev & EPOLLOUT:
                data = self._wfds.get(fd)
                if data is not None:
                    yield 'w', data


def _default_poller():
    if EpollPoller.SUPPORTED:
        return EpollPoller
    return Poller


class Timer(object):
    """A callback scheduled by :meth:`TimerList.schedule` (a broker's
    ``timers``); see :meth:`cancel`."""

    def __init__(self, when, func):
        self.when = when
        self.func = func
        self.active = True

    def __lt__(self, other):
        return self.when < other.when

    def cancel(self):
        """Prevent the callback from running."""
        self.active = False


class TimerList(object):
    """Callbacks due at a time, run on the broker thread."""

    def __init__(self):
        self._heap = []

    def schedule(self, delay, func):
        """Run `func()` on the broker thread `delay` seconds from now."""
        timer = Timer(now() + delay, func)
        heapq.heappush(self._heap, timer)
        return timer

    def get_timeout(self):
        while self._heap and not self._heap[0].active:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        return max(0, self._heap[0].when - now())

    def expire(self):
        t = now()
        while self._heap and self._heap[0].when <= t:
            timer = heapq.heappop(self._heap)
            if timer.active:
                timer.active = False
                timer.func()


# ---------------------------------------------------------------------------
# 7. Streams, protocols and the Broker
# ---------------------------------------------------------------------------

class Side(object):
    """One direction of a :class:`Stream`: a file descriptor holder.

    Closing sets :attr:`fd` to None, so a number the kernel later reuses for
    something else is never read, written or closed through this object.

    :param bool keep_alive: while this side is open, the broker keeps
        running during shutdown.
    :param bool blocking: leave the descriptor in blocking mode.
    """

    def __init__(self, stream, fd, cloexec=True, keep_alive=True,
                 blocking=False):
        #: The :class:`Stream` this side belongs to.
        self.stream = stream
        #: The file descriptor, or None once closed.
        self.fd = fd
        #: True once :meth:`close` was called.
        self.closed = False
        self.keep_alive = keep_alive
        if cloexec:
            set_cloexec(fd)
        if not blocking:
            set_nonblock(fd)

    def __repr__(self):
        return '<Side of %s fd %s>' % (self.stream, self.fd)

    def close(self):
        """Close the descriptor once; later calls do nothing."""
        if not self.closed:
            self.closed = True
            fd, self.fd = self.fd, None
            os.close(fd)

    def read(self, n=CHUNK_SIZE):
        """Read up to `n` bytes; return b'' on end of file or when closed."""
        if self.closed:
            return b''
        s, disconnected = io_op(os.read, self.fd, n)
        if disconnected:
            return b''
        return s

    def write(self, s):
        """Write from `s`; return the count written, None when the other end
        is gone, 0 when the write would block."""
        if self.fd is None:
            return None
        try:
            n, disconnected = io_op(os.write, self.fd, s)
        except (OSError, IOError) as e:
            if e.args[0] in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            raise
        if disconnected:
            return None
        return n


class Protocol(object):
    """Behaviour attached to a :class:`Stream`: what to do with bytes that
    arrive, when the stream can be written, on shutdown and on disconnect.
    """
    stream = None

    def on_receive(self, broker, buf):
        """Handle bytes read from the stream."""

    def on_transmit(self, broker):
        """The transmit side became writable."""

    def on_shutdown(self, broker):
        """The broker is shutting down; the default disconnects."""
        self.stream.on_disconnect(broker)

    def on_disconnect(self, broker):
        """The stream was disconnected; sides are already closed."""


class Stream(object):
    """A connection the broker polls: a receive :class:`Side`, a transmit
    :class:`Side` (possibly the same descriptor) and a :class:`Protocol`.

    Contract: the broker calls :meth:`on_receive` when the receive side is
    readable, :meth:`on_transmit` when the transmit side is writable and it
    was asked to watch it, and :meth:`on_disconnect` exactly once when the
    stream ends. After disconnection both sides are closed and no callback
    runs again.
    """
    name = 'default'
    receive_side = None
    transmit_side = None
    protocol = None
    #: For a stream to a child this process started, the connection that
    #: started it (a :class:`mitogen.parent.Connection`: its process, its
    #: method's details); None for any other stream.
    conn = None

    def __init__(self, protocol=None, name=None):
        if protocol is not None:
            self.set_protocol(protocol)
        if name is not None:
            self.name = name
        self.disconnected = False

    def __repr__(self):
        return '<Stream %s>' % (self.name,)

    def set_protocol(self, protocol):
        """Attach `protocol`."""
        self.protocol = protocol
        protocol.stream = self

    def accept(self, rfd, wfd):
        """Wrap the descriptors `rfd` and `wfd` (which may be equal)."""
        self.receive_side = Side(self, rfd)
        if wfd == rfd:
            self.transmit_side = self.receive_side
        else:
            self.transmit_side = Side(self, wfd)

    def on_receive(self, broker):
        """Read what is available and pass it to the protocol; end of file
        disconnects the stream."""
        buf = self.receive_side.read(CHUNK_SIZE)
        if not buf:
            self.on_disconnect(broker)
            return
        self.protocol.on_receive(broker, buf)

    def on_transmit(self, broker):
        """Let the protocol write what it has queued."""
        self.protocol.on_transmit(broker)

    def on_shutdown(self, broker):
        self.protocol.on_shutdown(broker)

    def on_disconnect(self, broker):
        """Stop polling, close both sides, tell the protocol and fire the
        ``disconnect`` signal; later calls do nothing."""
        if self.disconnected:
            return
        self.disconnected = True
        broker.stop_polling(self)
        lock = getattr(self.protocol, '_lock', None)
        if lock is not None:
            lock.acquire()
        try:
            for side in (self.receive_side, self.transmit_side):
                if side is not None and not side.closed:
                    side.close()
        finally:
            if lock is not None:
                lock.release()
        self.protocol.on_disconnect(broker)
        fire(self, 'disconnect')


class DelimitedProtocol(Protocol):
    """A protocol handling its input line by line (see :meth:`on_line`)."""
    delimiter = b'\n'
    _trailer = b''

    def on_receive(self, broker, buf):
        buf = self._trailer + buf
        lines = buf.split(self.delimiter)
        self._trailer = lines.pop()
        for line in lines:
            self.on_line(line)
        if len(self._trailer) > 65536:
            self.on_line(self._trailer)
            self._trailer = b''

    def on_disconnect(self, broker):
        if self._trailer:
            self.on_line(self._trailer)
            self._trailer = b''

    def on_line(self, line):
        """Handle one line, without its delimiter."""


class MitogenProtocol(Protocol):
    """The message protocol: decodes frames into :class:`Message` objects
    for the router and writes messages to the stream.

    :meth:`send` may be called from any thread. It writes immediately when
    nothing is queued, and queues only what a partial write left over, so
    a message normally leaves in the thread that sent it without waking the
    broker.

    :param Router router: the router received messages go to.
    :param int remote_id: ID of the context at the other end.
    """
    #: True for the stream to our parent: messages on it act with the
    #: authority of our ancestors.
    is_privileged = False

    def __init__(self, router, remote_id, auth_id=None):
        self._router = router
        self.remote_id = remote_id
        self.auth_id = auth_id
        self._decoder = FrameDecoder(router.max_message_size)
        self._lock = threading.Lock()
        self._pending = collections.deque()
        self._pending_off = 0
        self._transmitting = False
        #: Messages received on this stream.
        self.recv_count = 0
        #: IDs of the contexts this stream's peer sent messages to through
        #: this context: told with :data:`DEL_ROUTE` when one of them goes.
        self.egress_ids = set()

    def __repr__(self):
        return 'MitogenProtocol(remote_id=%s)' % (self.remote_id,)

    def on_receive(self, broker, buf):
        self._decoder.feed(buf)
        while True:
            try:
                msg = self._decoder.next_message()
            except ProtocolError as e:
                LOG.error('%r: %s; disconnecting', self, e)
                self.stream.on_disconnect(broker)
                return
            if msg is None:
                return
            self.recv_count += 1
            if msg.flags & ~FLAG_OOB:
                self._router._refuse(msg, self.stream, 'unknown flags 0x%x'
                                     % (msg.flags,))
                continue
            if _io_debug():
                IOLOG.debug('%r: received %r', self, msg)
            if self.auth_id is not None and msg.src_id == self.remote_id:
                # Only the peer's own messages act with the stamped
                # authority; those of contexts behind it keep theirs and are
                # verified like any other.
                msg.auth_id = self.auth_id
            self._router._async_route(msg, self.stream)
            if self.stream.disconnected:
                return

    def send(self, msg):
        """Encode and write `msg`. Returns False if the stream is gone."""
        parts = msg.encode()
        with self._lock:
            side = self.stream.transmit_side
            if side is None or side.closed:
                return False
            if _io_debug():
                IOLOG.debug('%r: sending %r', self, msg)
            if not self._pending:
                for i, part in enumerate(parts):
                    n = self._write_all(side, part)
                    if n is None:
                        return False
                    if n < len(part):
                        self._pending.append(part)
                        self._pending_off = n
                        self._pending.extend(parts[i + 1:])
                        break
            else:
                self._pending.extend(parts)
            start = self._pending and not self._transmitting
            if start:
                self._transmitting = True
        if start:
            self._router.broker.start_transmit(self.stream)
        return True

    @staticmethod
    def _write_all(side, part):
        off = 0
        mv = memoryview(part) if len(part) > _JOIN_LIMIT else None
        while off < len(part):
            n = side.write(mv[off:] if mv is not None else
                           (part[off:] if off else part))
            if n is None:
                return None
            if n == 0:
                return off
            off += n
        return off

    _close_when_flushed = False

    def on_transmit(self, broker):
        gone = False
        with self._lock:
            side = self.stream.transmit_side
            while self._pending:
                part = self._pending[0]
                n = side.write(memoryview(part)[self._pending_off:])
                if n is None:
                    self._pending.clear()
                    gone = True
                    break
                if n == 0:
                    return
                self._pending_off += n
                if self._pending_off == len(part):
                    self._pending.popleft()
                    self._pending_off = 0
            self._transmitting = False
            gone = gone or self._close_when_flushed
        broker.stop_transmit(self.stream)
        if gone:
            self.stream.on_disconnect(broker)

    def on_shutdown(self, broker):
        """For a stream to a child: ask it to shut down, and wait for it to
        disconnect. For the stream to the parent: disconnect once every
        queued byte is written."""
        if not self.is_privileged:
            self._router._on_stream_shutdown(self.stream)
            return
        with self._lock:
            flushed = not self._pending
            self._close_when_flushed = True
        if flushed:
            self.stream.on_disconnect(broker)

    def on_disconnect(self, broker):
        self._router._on_stream_disconnect(self.stream)


class Waker(Protocol):
    """Wakes the broker from other threads through a pipe, and runs the
    functions they queued with :meth:`defer`."""

    def __init__(self, broker):
        self._broker = broker
        self._lock = threading.Lock()
        self._deferred = collections.deque()
        rfd, wfd = os.pipe()
        self._wfd = wfd
        set_nonblock(wfd)
        set_cloexec(wfd)
        stream = Stream(self, name='waker')
        stream.accept(rfd, rfd)
        stream.receive_side.keep_alive = False
        self._pending_wake = False

    def __repr__(self):
        return 'Waker(%r)' % (self._broker,)

    def close(self):
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None

    def wake(self):
        with self._lock:
            if self._pending_wake or self._wfd is None:
                return
            self._pending_wake = True
        try:
            os.write(self._wfd, b'\0')
        except (OSError, IOError) as e:
            if e.args[0] not in (errno.EAGAIN, errno.EBADF):
                raise

    def defer(self, func, *args, **kwargs):
        """Run `func(*args, **kwargs)` on the broker thread: at once when
        called there, else soon after waking it."""
        if threading.current_thread() is self._broker._thread:
            func(*args, **kwargs)
            return
        self._deferred.append((func, args, kwargs))
        self.wake()

    def on_receive(self, broker, buf):
        with self._lock:
            self._pending_wake = False
        self.run_deferred()

    def run_deferred(self):
        while self._deferred:
            func, args, kwargs = self._deferred.popleft()
            try:
                func(*args, **kwargs)
            except Exception:
                LOG.exception('%r: deferred function %r failed', self, func)

    def on_shutdown(self, broker):
        pass

    def on_disconnect(self, broker):
        pass


class Broker(object):
    """The I/O thread of a process: polls every stream and runs timers and
    deferred functions. User threads never block it; they wait on
    :class:`Latch` objects instead.

    :param poller_class: :class:`Poller` subclass; epoll where available.
    """
    poller_class = None
    #: Seconds :meth:`~mitogen.core.Broker.shutdown` waits for streams to
    #: disconnect gracefully before closing them by force.
    shutdown_timeout = 5.0

    def __init__(self, poller_class=None, activate_compat=True):
        self._alive = True
        self._exitted = False
        self._shutdown_fired = False
        self.poller = (poller_class or self.poller_class or
                       _default_poller())()
        self.timers = TimerList()
        self._thread = None
        self._waker = Waker(self)
        self._streams = set()
        self._reapers = set()
        self.start_receive(self._waker.stream)
        self._thread = threading.Thread(
            target=_profile_hook, args=('mitogen.broker', self._broker_main),
            name='mitogen.broker')
        self._thread.daemon = True
        self._thread.start()

    def __repr__(self):
        return 'Broker(%04x)' % (id(self) & 0xffff,)

    def defer(self, func, *args, **kwargs):
        """Run `func(*args, **kwargs)` on the broker thread soon; runs it at
        once when called on the broker thread."""
        if self._exitted and not self.on_thread():
            raise Error('broker has exited')
        self._waker.defer(func, *args, **kwargs)

    def defer_sync(self, func):
        """Run `func()` on the broker thread and return its result,
        re-raising its exception in the caller."""
        latch = Latch()

        def wrapper():
            try:
                latch.put((True, func()))
            except Exception:
                latch.put((False, sys.exc_info()[1]))
        self.defer(wrapper)
        ok, value = latch.get()
        if not ok:
            raise value
        return value

    def on_thread(self):
        """True when called on the broker thread."""
        return threading.current_thread() is self._thread

    def start_receive(self, stream):
        """Watch `stream`'s receive side."""
        self.defer(self._start_receive, stream)

    def _start_receive(self, stream):
        self._streams.add(stream)
        side = stream.receive_side
        if side is not None and not side.closed:
            self.poller.start_receive(side.fd, (side, stream.on_receive))

    def stop_receive(self, stream):
        """Stop watching `stream`'s receive side."""
        self.defer(self._stop_receive, stream)

    def _stop_receive(self, stream):
        side = stream.receive_side
        if side is not None and side.fd is not None:
            self.poller.stop_receive(side.fd)
        self._streams.discard(stream)

    def start_transmit(self, stream):
        """Watch `stream`'s transmit side: its :meth:`Stream.on_transmit`
        runs whenever the side can be written, until :meth:`stop_transmit`.
        """
        self.defer(self._start_transmit, stream)

    def _start_transmit(self, stream):
        side = stream.transmit_side
        if side is not None and not side.closed:
            self.poller.start_transmit(side.fd, (side, stream.on_transmit))

    def stop_transmit(self, stream):
        """Stop watching `stream`'s transmit side (at once when called on
        the broker thread, as protocols do once their queue is empty)."""
        self.defer(self._stop_transmit, stream)

    def _stop_transmit(self, stream):
        side = stream.transmit_side
        if side is not None and side.fd is not None:
            self.poller.stop_transmit(side.fd)

    def stop_polling(self, stream):
        """Stop watching both sides of `stream` and forget it, at once
        whatever the thread: :meth:`Stream.on_disconnect` calls it before it
        closes the descriptors, so the poller never holds a closed (and
        perhaps reused) number."""
        self._stop_receive(stream)
        self._stop_transmit(stream)

    def add_reaper(self, reaper):
        """Make shutdown wait for `reaper`, which waits for a child process
        to exit (:class:`mitogen.parent.Reaper`), until
        :meth:`remove_reaper`: a context ends only after the processes it
        started. Past :attr:`shutdown_timeout`, shutdown calls
        ``reaper.force()``, which must kill the process and remove the
        reaper. Call it on the broker thread."""
        self._reapers.add(reaper)

    def remove_reaper(self, reaper):
        """Forget `reaper` (see :meth:`add_reaper`); its process is gone."""
        self._reapers.discard(reaper)

    def keep_alive(self):
        """True while any stream with a keep-alive side remains."""
        for stream in self._streams:
            side = stream.receive_side
            if side is not None and side.keep_alive and not side.closed:
                return True
        return False

    def _call(self, side, func):
        try:
            func(self)
        except Exception:
            LOG.exception('%r crashed; disconnecting it', side.stream)
            side.stream.on_disconnect(self)

    def _loop_once(self, timeout=None):
        self._waker.run_deferred()
        t = self.timers.get_timeout()
        if t is not None and (timeout is None or t < timeout):
            timeout = t
        for kind, (side, func) in list(self.poller.poll(timeout)):
            if side.closed:
                continue
            self._call(side, func)
        self.timers.expire()
        self._waker.run_deferred()

    def _broker_main(self):
        try:
            while self._alive:
                self._loop_once()
            self._fire_shutdown()
            self._do_shutdown()
        except Exception:
            LOG.exception('broker crashed')
            self._force_close_all()
        finally:
            self._fire_shutdown()
            self._exitted = True
            self._waker.run_deferred()
            self._waker.stream.on_disconnect(self)
            self._waker.close()
            self.poller.close()
            fire(self, 'exit')

    def _fire_shutdown(self):
        # The 'shutdown' signal: fired once, on the broker thread, as
        # shutdown begins (or as a crashed broker exits), before 'exit'.
        if not self._shutdown_fired:
            self._shutdown_fired = True
            try:
                fire(self, 'shutdown')
            except Exception:
                LOG.exception('%r: a shutdown listener failed', self)

    @staticmethod
    def _is_upward(stream):
        return getattr(stream.protocol, 'is_privileged', False)

    def _shutdown_streams(self, streams):
        for stream in streams:
            try:
                stream.on_shutdown(self)
            except Exception:
                LOG.exception('%r: shutdown of %r failed', self, stream)

    def _do_shutdown(self):
        # Children first: they are asked to shut down and given time to
        # disconnect; only then is the stream to our parent flushed and
        # closed, so replies and records sent during shutdown still leave.
        downward = [s for s in self._streams if not self._is_upward(s)]
        upward = [s for s in self._streams if self._is_upward(s)]
        self._shutdown_streams(downward)
        deadline = now() + self.shutdown_timeout

        def downward_alive():
            # Until the children's processes are gone too: closing the
            # stream to our parent lets it reap (and signal) this process,
            # which must not end before its own children.
            if self._reapers:
                return True
            for s in downward:
                side = s.receive_side
                if side is not None and side.keep_alive and not side.closed:
                    return True
            return False
        while downward_alive() and now() < deadline:
            self._loop_once(max(0, deadline - now()))
        if downward_alive():
            # Past the deadline, children that did not go are cut off and
            # their processes killed now, while our parent still waits for
            # us: closing our upward stream first would let it kill this
            # process and orphan them.
            for s in downward:
                side = s.receive_side
                if side is not None and side.keep_alive and not side.closed:
                    s.on_disconnect(self)
            self._waker.run_deferred()
            for reaper in list(self._reapers):
                reaper.force()
        self._shutdown_streams(upward)
        deadline = max(deadline, now() + 1.0)
        while self.keep_alive() and now() < deadline:
            self._loop_once(max(0, deadline - now()))
        if self.keep_alive():
            LOG.warning('%r: streams still open after %.1f s; closing them:'
                        ' %r', self, self.shutdown_timeout,
                        [s for s in self._streams])
        self._force_close_all()

    def _force_close_all(self):
        for stream in list(self._streams):
            if stream is not self._waker.stream:
                try:
                    stream.on_disconnect(self)
                except Exception:
                    LOG.exception('%r: disconnect of %r failed', self, stream)
        self._waker.run_deferred()

    def shutdown(self):
        """Begin shutdown: streams are asked to close, then the thread ends.
        Returns at once; see :meth:`join`."""
        if not self._exitted:
            self._alive = False
            self._waker.wake()

    def join(self, timeout=None):
        """Wait for the broker thread to exit."""
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


# ---------------------------------------------------------------------------
# 8. Router, Context, Receiver, Sender, Channel
# ---------------------------------------------------------------------------

class Context(object):
    """A context: the process (or future process) a message can be routed
    to, identified by :attr:`context_id`.

    :param Router router: the router used to reach it.
    :param int context_id: its ID.
    :param str name: human-readable name, such as ``local.1234``.
    """
    remote_name = None

    def __init__(self, router, context_id, name=None):
        #: The :class:`Router` used to reach the context.
        self.router = router
        #: The context's ID, unique in the whole tree; 0 is the master.
        self.context_id = context_id
        #: Human-readable name, such as ``local.1234``.
        self.name = name

    def __reduce__(self):
        return _unpickle_context, (self.context_id, self.name)

    def on_disconnect(self):
        """Fires the ``disconnect`` signal."""
        fire(self, 'disconnect')

    def send_async(self, msg, persist=False):
        """Send `msg` with a fresh reply handle; return the
        :class:`Receiver` its replies arrive on."""
        recv = Receiver(self.router, persist=persist, respondent=self)
        msg.dst_id = self.context_id
        msg.reply_to = recv.handle
        self.router.route(msg)
        return recv

    def send_await(self, msg, deadline=None):
        """Send `msg` and wait for one reply; return it unpickled."""
        recv = self.send_async(msg)
        return recv.get(timeout=deadline).unpickle()

    def send(self, msg):
        """Send `msg` to this context (setting its ``dst_id``)."""
        msg.dst_id = self.context_id
        self.router.route(msg)

    def call_service_async(self, service_name, method_name, **kwargs):
        """Ask the service pool of this context to run `method_name` of the
        service named `service_name` (a name like ``pkg.mod.Class``, or a
        service class) with `kwargs`; return the :class:`Receiver` the reply
        arrives on. See :mod:`mitogen.service`."""
        name = getattr(service_name, 'name', None)
        if callable(name):
            service_name = name()
        tup = (to_text(service_name), to_text(method_name), Kwargs(kwargs))
        return self.send_async(Message.pickled(tup, handle=CALL_SERVICE,
                                              router=self.router))

    def call_service(self, service_name, method_name, **kwargs):
        """Like :meth:`call_service_async`, then wait for the reply and
        return it; a failure in the service raises :class:`CallError`."""
        recv = self.call_service_async(service_name, method_name, **kwargs)
        return recv.get().unpickle()

    def __eq__(self, other):
        return (isinstance(other, Context) and
                other.context_id == self.context_id and
                other.router is self.router)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash((self.router, self.context_id))

    def __repr__(self):
        return 'Context(%s, %r)' % (self.context_id, self.name)


class Receiver(object):
    """Receives messages sent to a handle of this context.

    :param Router router: router to register with.
    :param int handle: handle to listen on; a fresh one when None.
    :param bool persist: keep receiving after the first message.
    :param Context respondent: the context expected to send; when it
        disconnects the receiver gets a dead message, so waiters fail
        instead of hanging.
    :param policy: function `(msg, stream) -> bool` deciding whether to
        accept a message.
    :param int window: opt into flow control: each sender may have at most
        this many bytes of messages queued here that :meth:`get` has not
        returned yet (a single larger message is let through when nothing
        else is queued). Senders made by :meth:`to_sender` wait for room
        before they send; a message from any other sender that would exceed
        the window is dropped, and its sender told with a dead message when
        it expects a reply. None (the default) queues without limit.
    """
    #: Called with the receiver after each message is queued.
    notify = None
    #: When true, :meth:`get` raises :class:`ChannelError` on a dead
    #: message (unless called with ``throw_dead=False``); when false it
    #: returns dead messages like any other, for a subclass or an instance
    #: that inspects them itself. Iteration ends at a dead message either
    #: way.
    raise_channelerror = True
    #: The flow control window in bytes, or None; see the `window` argument.
    window = None

    def __init__(self, router, handle=None, persist=True, respondent=None,
                 policy=None, overwrite=False, window=None):
        self.router = router
        self._latch = Latch()
        if window is not None:
            self.window = window
            self._flow_lock = threading.Lock()
            # (src_id, credit handle) -> [bytes queued or not yet credited,
            # bytes returned by get() and not yet credited]
            self._flow = {}
        self.handle = router.add_handler(
            fn=self._on_receive, handle=handle, policy=policy,
            persist=persist, respondent=respondent, overwrite=overwrite,
        )

    def __repr__(self):
        return 'Receiver(%r, %r)' % (self.router, self.handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def to_sender(self):
        """Return a :class:`Sender` that sends to this receiver (and keeps
        to its flow control window, if it has one)."""
        return Sender(self.router.myself(), self.handle, window=self.window)

    def _on_receive(self, msg):
        if self.window is not None and not msg.is_dead and \
                not self._admit(msg):
            return
        msg.receiver = self
        try:
            self._latch.put(msg)
        except LatchError:
            return
        if self.notify:
            self.notify(self)

    # Flow control is credit based. A windowed Sender counts the bytes it
    # sent and may send while that count stays within the window (or is
    # zero); it marks each message with reply_to = the handle on which it
    # receives credit. Once get() has returned half a window of a sender's
    # bytes, or the queue is empty, those bytes are credited back to it. The
    # receiver keeps the same count per sender, so an honest sender can
    # never exceed it, and any message that would is refused here: what is
    # queued stays bounded whoever sends.

    def _admit(self, msg):
        key = (msg.src_id, msg.reply_to)
        size = msg.size
        with self._flow_lock:
            state = self._flow.setdefault(key, [0, 0])
            if state[0] and state[0] + size > self.window:
                refused = True
            else:
                state[0] += size
                refused = False
        if refused:
            reason = ('flow control window of %d bytes of handle %d '
                      'exceeded' % (self.window, self.handle))
            self.router._refuse(msg, self.router.stream_by_id(msg.src_id),
                                reason)
            self.router._maybe_send_dead(msg, reason)
        return not refused

    def _consumed(self, msg):
        key = (msg.src_id, msg.reply_to)
        try:
            drained = self._latch.empty()
        except LatchError:
            drained = True
        with self._flow_lock:
            state = self._flow.get(key)
            if state is None:
                return
            state[1] += msg.size
            credit = state[1]
            if credit < self.window // 2 and not drained:
                return
            state[0] -= credit
            state[1] = 0
            if not state[0]:
                del self._flow[key]
        if msg.reply_to:
            self.router.route(Message.pickled(credit, dst_id=msg.src_id,
                                              handle=msg.reply_to,
                                              router=self.router))

    def close(self):
        """Unregister the handle and wake waiters with
        :class:`ChannelError`; senders waiting for room in the flow control
        window get :class:`ChannelError` too."""
        if self.handle:
            self.router.del_handler(self.handle)
            self.handle = None
        self._latch.close()
        if self.window is not None:
            with self._flow_lock:
                waiting, self._flow = list(self._flow), {}
            for src_id, credit_handle in waiting:
                if credit_handle:
                    self.router.route(Message.dead(
                        ChannelError.remote_msg, dst_id=src_id,
                        handle=credit_handle, router=self.router))
        if self.notify:
            self.notify(self)

    def size(self):
        """Number of messages queued."""
        return self._latch.size()

    def empty(self):
        """True when no message is queued."""
        return self._latch.empty()

    def get(self, timeout=None, block=True, throw_dead=True):
        """Return the next :class:`Message`.

        :raises TimeoutError: when `timeout` seconds pass first.
        :raises ChannelError: when the receiver is closed, or a dead message
            arrives while `throw_dead` and :attr:`raise_channelerror` are
            true."""
        try:
            msg = self._latch.get(timeout=timeout, block=block)
        except LatchError:
            raise ChannelError(ChannelError.local_msg)
        if self.window is not None and not msg.is_dead:
            self._consumed(msg)
        if msg.is_dead and throw_dead and self.raise_channelerror:
            msg.unpickle()
        return msg

    def __iter__(self):
        """Yield messages until the channel is closed or a dead message
        arrives."""
        while True:
            try:
                msg = self.get()
            except ChannelError:
                return
            if msg.is_dead:
                return
            yield msg


class Sender(object):
    """Sends messages to a handle in another context; picklable, so a
    :class:`Receiver`'s sender can be passed to a remote function.

    :param Context context: destination context.
    :param int dst_handle: destination handle.
    :param int window: keep to the flow control window of a
        :class:`Receiver` made with this `window`: :meth:`send` waits while
        the receiver holds `window` bytes of this sender's messages that it
        has not consumed. :meth:`Receiver.to_sender` sets it."""

    #: The flow control window in bytes, or None.
    window = None
    _credit_recv = None

    def __init__(self, context, dst_handle, window=None):
        self.context = context
        self.dst_handle = dst_handle
        if window is not None:
            self.window = window
            self._flow_lock = threading.Lock()
            self._outstanding = 0

    def send(self, data):
        """Send `data` pickled. With a window, first wait until the
        receiver has room for it.

        :raises ChannelError: when the receiver went away while this
            sender waited for room."""
        msg = Message.pickled(data, handle=self.dst_handle,
                              router=self.context.router)
        if self.window is None:
            self.context.send(msg)
            return
        with self._flow_lock:
            self._wait_for_room(msg)
            self.context.send(msg)

    def _wait_for_room(self, msg):
        recv = self._credit_recv
        if recv is None:
            recv = self._credit_recv = Receiver(self.context.router,
                                                respondent=self.context)
        while True:
            full = self._outstanding and \
                self._outstanding + msg.size > self.window
            try:
                credit = recv.get(block=full).unpickle()
            except TimeoutError:
                break
            if isinstance(credit, integer_types):
                self._outstanding = max(0, self._outstanding - credit)
        self._outstanding += msg.size
        msg.reply_to = recv.handle

    def close(self):
        """Send a dead message so the receiving end sees the channel
        close."""
        self.context.send(Message.dead(handle=self.dst_handle,
                                       reason=ChannelError.remote_msg,
                                       router=self.context.router))
        if self._credit_recv is not None:
            self._credit_recv.close()

    def __reduce__(self):
        if self.window is not None:
            return _unpickle_sender, (self.context.context_id,
                                      self.dst_handle, self.window)
        return _unpickle_sender, (self.context.context_id, self.dst_handle)

    def __repr__(self):
        return 'Sender(%r, %r)' % (self.context, self.dst_handle)


class Channel(Sender, Receiver):
    """A bidirectional pair: a :class:`Sender` to `dst_handle` in `context`
    and a :class:`Receiver` on `handle`."""

    def __init__(self, router, context, dst_handle, handle=None):
        Sender.__init__(self, context, dst_handle)
        Receiver.__init__(self, router, handle)

    def close(self):
        Receiver.close(self)
        Sender.close(self)

    def __repr__(self):
        return 'Channel(%s, %s)' % (Sender.__repr__(self),
                                    Receiver.__repr__(self))


class Router(object):
    """Routes messages between this context's handlers and its streams.

    A message for this context goes to the handler registered for its
    handle; any other goes to the stream leading to its destination (a
    directly connected child, a route added with :data:`ADD_ROUTE`, or else
    the parent). :meth:`route` is safe to call from any thread.

    Every message received on a stream is first checked against the stream
    the router would use to reach the message's ``auth_id`` and ``src_id``
    (source verification): a message arriving from any other direction is
    dropped and logged, so no context can speak with the authority of one
    nearer the root.

    The router's identity, :attr:`context_id` and :attr:`parent_ids`, is
    the one every check reads: it is the process's own (the package
    globals :data:`mitogen.context_id` and :data:`mitogen.parent_ids`)
    unless given to the constructor, which lets two routers with
    different identities live in one process.

    :param Broker broker: the broker whose streams this router uses.
    :param int context_id: this router's :attr:`context_id`; None follows
        :data:`mitogen.context_id`.
    :param list parent_ids: this router's :attr:`parent_ids`; None follows
        :data:`mitogen.parent_ids`.
    """
    context_class = Context
    max_message_size = DEFAULT_MAX_MESSAGE_SIZE
    #: In a child: the :class:`Receiver` on :data:`CALL_SERVICE` that holds
    #: service calls from parents until a service pool exists; the pool
    #: takes it over (:func:`mitogen.service.get_or_create_pool`). None in
    #: a master, which builds its pools by hand.
    service_stub_recv = None
    #: When true, messages between two child streams are refused.
    unidirectional = False
    #: In a child, the name its parent gave this context (set by
    #: :class:`ExternalContext`); :meth:`myself` carries it. None in the
    #: master, whose :meth:`myself` is called ``master``.
    context_name = None
    #: Dropped messages logged in full per stream and per
    #: :attr:`drop_log_interval`; the others are counted and summarised.
    drop_log_burst = 10
    #: Seconds between the summaries of dropped messages not logged in full.
    drop_log_interval = 10.0
    # A child names the destinations of the messages it sends through us,
    # so it could make egress_ids grow without end: past this many, a child
    # learns of a lost destination only by waiting for its reply.
    _egress_limit = 10000

    _context_id = None
    _parent_ids = None

    def __init__(self, broker, context_id=None, parent_ids=None):
        self.broker = broker
        self._context_id = context_id
        if parent_ids is not None:
            self._parent_ids = list(parent_ids)
        listen(broker, 'exit', self._on_broker_exit)
        #: Messages this router refused (dropped) since it started, by the
        #: ID of the context at the other end of the stream each arrived on
        #: (None for messages written in this process).
        self.drop_counts = {}
        self._drop_lock = threading.Lock()
        self._drop_windows = {}
        self._drop_summary_due = False
        self._handle_map = {}
        self._handles_by_respondent = {}
        self._stream_by_id = {}
        self._context_by_id = {}
        self._registered_types = {}
        self._handle_counter = itertools.count(FIRST_USER_HANDLE)
        self.parent_stream = None
        self.add_handler(self._on_add_route, ADD_ROUTE,
                         policy=self._from_immediate_child)
        self.add_handler(self._on_del_route, DEL_ROUTE,
                         policy=self._from_child_or_parent)

    def __repr__(self):
        return 'Router(%r)' % (self.broker,)

    # The identity follows the package globals unless it was given: a child
    # (or a process attached with mitogen.unix) learns its ID after parts of
    # the program may have built its router.

    @property
    def context_id(self):
        """ID of the context this router belongs to: the one it writes as
        ``src_id`` and ``auth_id`` and delivers messages for. Unless set
        (by the constructor or by assignment), :data:`mitogen.context_id`,
        or 0 when the ``mitogen`` package is not loaded."""
        if self._context_id is not None:
            return self._context_id
        pkg = _package_module()
        return pkg.context_id if pkg is not None else 0

    @context_id.setter
    def context_id(self, value):
        self._context_id = value

    @property
    def parent_ids(self):
        """IDs of the ancestors of this router's context, nearest first:
        the authorities :func:`has_parent_authority` accepts and the routes
        no child may redirect. Unless set (by the constructor or by
        assignment), :data:`mitogen.parent_ids`, or empty when the
        ``mitogen`` package is not loaded."""
        if self._parent_ids is not None:
            return self._parent_ids
        pkg = _package_module()
        return pkg.parent_ids if pkg is not None else []

    @parent_ids.setter
    def parent_ids(self, value):
        self._parent_ids = list(value)

    def myself(self):
        """Return the :class:`Context` for this process."""
        name = self.context_name
        if name is None:
            name = 'master' if self.context_id == 0 else None
        return self.context_class(self, self.context_id, name)

    def register_type(self, cls):
        """Allow instances of `cls` in messages received by this router.

        A type must be registered on each receiving side; types registered
        on a master before a child starts are registered in the child too.
        """
        key = (cls.__module__, cls.__name__)
        self._registered_types[key] = cls
        return cls

    def registered_types(self):
        """``(module, name)`` of every type this router accepts through
        :meth:`register_type`; a parent passes them on to its children."""
        return list(self._registered_types)

    def _resolve_registered_type(self, module, name):
        obj = self._registered_types.get((module, name))
        if obj is not None:
            if not isinstance(obj, type):
                mod = __import__(module, {}, {}, [''])
                obj = getattr(mod, name)
                self._registered_types[(module, name)] = obj
            return obj
        return None

    def context_by_id(self, context_id, via_id=None, create=True, name=None):
        """Return the :class:`Context` for `context_id`, creating it."""
        ctx = self._context_by_id.get(context_id)
        if ctx is None and create:
            ctx = self.context_class(self, context_id, name=name)
            ctx = self._context_by_id.setdefault(context_id, ctx)
        return ctx

    def stream_by_id(self, dst_id):
        """Return the :class:`Stream` used to reach `dst_id`: a direct or
        added route, else the parent stream (None in the master)."""
        return self._stream_by_id.get(dst_id, self.parent_stream)

    def register(self, context, stream):
        """Route messages for `context` through `stream`, and fire the
        context's ``disconnect`` signal when the stream disconnects."""
        self._context_by_id[context.context_id] = context
        self._stream_by_id[context.context_id] = stream
        stream.protocol.remote_id = context.context_id
        listen(stream, 'disconnect', lambda: context.on_disconnect())
        self.broker.start_receive(stream)

    def add_route(self, target_id, stream):
        """Route messages for `target_id` through `stream`."""
        self._stream_by_id[target_id] = stream

    def del_route(self, target_id):
        """Forget the route to `target_id` and fire its ``disconnect``."""
        gone = self._stream_by_id.pop(target_id, None)
        ctx = self._context_by_id.get(target_id)
        if ctx is not None:
            ctx.on_disconnect()
        self._tell_senders(target_id, gone)

    def _tell_senders(self, target_id, gone):
        # DEL_ROUTE travels up the tree only, so a child that sent messages
        # to `target_id` through us (say, a process attached through
        # mitogen.unix waiting for a reply) would never learn it is gone:
        # tell each such child directly.
        for stream in set(self._stream_by_id.values()):
            protocol = stream.protocol
            if stream is gone or stream.disconnected or \
                    protocol.is_privileged or \
                    target_id not in getattr(protocol, 'egress_ids', ()):
                continue
            protocol.egress_ids.discard(target_id)
            protocol.send(Message.pickled(
                target_id, dst_id=protocol.remote_id, handle=DEL_ROUTE,
                src_id=self.context_id, auth_id=self.context_id))

    # Routes to contexts this one did not start itself are learned from
    # ADD_ROUTE messages that travel upward: the context that starts a child
    # tells its parent, which tells its own parent, and so on to the master.
    # Only an immediate child may add or delete a route, only through its
    # own stream, and never for this context, its ancestors, or an ID
    # already reached another way; so a compromised context can at most
    # affect routes into its own subtree.

    def _from_child_or_parent(self, msg, stream):
        # DEL_ROUTE also comes down from the parent (see _tell_senders).
        if stream is not None and stream.protocol.is_privileged and \
                msg.src_id == stream.protocol.remote_id:
            return True
        return self._from_immediate_child(msg, stream)

    def _from_immediate_child(self, msg, stream):
        if stream is None or stream.protocol.is_privileged or \
                stream.protocol.remote_id != msg.src_id or \
                msg.auth_id not in (msg.src_id, stream.protocol.auth_id):
            self._refuse(msg, stream, 'routes are only accepted from an '
                         'immediate child')
            return False
        return True

    # A peer can send us any number of messages that must be dropped. Each
    # is counted (drop_counts), but only the first drop_log_burst of a
    # stream are logged in full in each drop_log_interval; the rest of the
    # interval's drops are reported in one summary line per stream, so a
    # hostile child cannot flood the master's log.

    def _refuse(self, msg, stream, reason, *args):
        """Count `msg`, which arrived on `stream` (None: written here), as
        dropped, and log why (`reason % args`) within the rate limit."""
        if args:
            reason %= args
        key = getattr(getattr(stream, 'protocol', None), 'remote_id', None)
        t = now()
        with self._drop_lock:
            self.drop_counts[key] = self.drop_counts.get(key, 0) + 1
            window = self._drop_windows.get(key)
            if window is None or (not window[2] and
                                  t - window[0] >= self.drop_log_interval):
                window = self._drop_windows[key] = [t, 0, 0, None]
            full = window[1] < self.drop_log_burst
            if full:
                window[1] += 1
            else:
                window[2] += 1
                window[3] = reason
                schedule = not self._drop_summary_due
                self._drop_summary_due = True
        if full:
            LOG.error('%r: dropped %r: %s', self, msg, reason)
        elif schedule:
            try:
                self.broker.defer(self.broker.timers.schedule,
                                  self.drop_log_interval,
                                  self._summarise_drops)
            except Error:
                pass  # the broker has exited and summarised already

    def _summarise_drops(self):
        with self._drop_lock:
            windows, self._drop_windows = self._drop_windows, {}
            self._drop_summary_due = False
        for key, (start, logged, suppressed, reason) in windows.items():
            if suppressed:
                LOG.error('%r: dropped %d more messages from context %s in '
                          'the last %.0f s (%d in all); the last because: %s',
                          self, suppressed, key, now() - start,
                          self.drop_counts.get(key, 0), reason)

    def _may_route(self, target_id, stream):
        """True when `stream` may become the route to `target_id`."""
        if not isinstance(target_id, integer_types) or target_id <= 0 or \
                target_id == self.context_id or target_id in self.parent_ids:
            return False
        current = self._stream_by_id.get(target_id)
        return current is None or current is stream

    def route_owner(self, target_id):
        """Return the ID of the context to which this one gave the context
        ID `target_id` (itself or in a block); 0 when none was given it
        (never handed out, or kept by this context); None when this router
        hands out no IDs and cannot tell.

        An :data:`ADD_ROUTE` for `target_id` is accepted only on the stream
        that reaches the owner, unless the answer is None. The base router
        answers None; :class:`mitogen.parent.Router`, which hands out IDs
        to its children, overrides this method."""
        return None

    def _on_add_route(self, msg):
        if msg.is_dead:
            return
        stream = self._stream_by_id.get(msg.src_id)
        target_id, name = control_body(msg, 'ADD_ROUTE', 2)
        _check_id('ADD_ROUTE context ID', target_id)
        _check_text('ADD_ROUTE context name', name, MAX_NAME_LENGTH, True)
        if not self._may_route(target_id, stream):
            self._refuse(msg, stream, 'refused ADD_ROUTE for %r from %r',
                         target_id, stream)
            return
        owner = self.route_owner(target_id)
        if owner is not None:
            # The router knows which child each ID was given to: the route
            # must come from the subtree holding that context.
            if not owner or self._stream_by_id.get(owner) is not stream:
                self._refuse(msg, stream, 'refused ADD_ROUTE for %r from %r: '
                             'that ID was not allocated to its subtree',
                             target_id, stream)
                return
        parent = self._context_by_id.get(msg.src_id)
        if name is not None and parent is not None and parent.name:
            name = u'%s.%s' % (parent.name, to_text(name))
        self.add_route(target_id, stream)
        ctx = self.context_by_id(target_id, name=name)
        if ctx.name is None:
            ctx.name = name
        LOG.debug('%r: route to %r via %r', self, ctx, stream)
        self.propagate_route(target_id, name)

    def propagate_route(self, target_id, name):
        """Tell the parent (if any) that `target_id`, called `name` here,
        is reached through this context."""
        if self.parent_stream is not None and \
                not self.parent_stream.disconnected:
            self.parent_stream.protocol.send(Message.pickled(
                (target_id, name), dst_id=self.parent_stream.protocol.remote_id,
                handle=ADD_ROUTE, src_id=self.context_id,
                auth_id=self.context_id))

    def propagate_del_route(self, target_id):
        """Tell the parent (if any) that `target_id` is gone."""
        if self.parent_stream is not None and \
                not self.parent_stream.disconnected:
            self.parent_stream.protocol.send(Message.pickled(
                target_id, dst_id=self.parent_stream.protocol.remote_id,
                handle=DEL_ROUTE, src_id=self.context_id,
                auth_id=self.context_id))

    def _on_del_route(self, msg):
        if msg.is_dead:
            return
        target_id = msg.unpickle()
        _check_id('DEL_ROUTE context ID', target_id)
        stream = self._stream_by_id.get(msg.src_id)
        if stream is not None and stream is self.parent_stream:
            # From the parent: a context we reach through it is gone.
            if target_id == self.context_id or \
                    target_id in self.parent_ids or \
                    self.stream_by_id(target_id) is not stream:
                return
            ctx = self._context_by_id.get(target_id)
            if ctx is not None:
                ctx.on_disconnect()
            self._tell_senders(target_id, stream)
            return
        if target_id == msg.src_id or \
                self._stream_by_id.get(target_id) is not stream:
            return
        self.del_route(target_id)
        self.propagate_del_route(target_id)

    def add_handler(self, fn, handle=None, persist=True, policy=None,
                    respondent=None, overwrite=False):
        """Invoke `fn(msg)` on the broker thread for each message that
        arrives for `handle`; return the handle.

        :param bool persist: keep the handler after its first message.
        :param policy: `(msg, stream) -> bool`; rejected messages are
            logged and answered with a dead message.
        :param Context respondent: deliver a dead message to `fn` when that
            context disconnects.
        :param bool overwrite: allow replacing an existing handler."""
        handle = handle or next(self._handle_counter)
        if not overwrite and handle in self._handle_map:
            raise Error('handle %r is already in use' % (handle,))
        self._handle_map[handle] = persist, fn, policy, respondent
        if respondent is not None:
            # Every call registers its reply handle here: one lookup of the
            # respondent's set (hashing a Context builds a tuple).
            handles = self._handles_by_respondent.get(respondent)
            if handles is None:
                handles = self._handles_by_respondent[respondent] = set()
                listen(respondent, 'disconnect',
                       lambda: self._on_respondent_disconnect(respondent))
            handles.add(handle)
            if self._respondent_gone(respondent):
                self.broker.defer(self._on_respondent_disconnect, respondent)
        return handle

    def _respondent_gone(self, context):
        target_id = context.context_id
        stream = self._stream_by_id.get(target_id, self.parent_stream)
        if stream is None or stream.disconnected:
            return target_id != self.context_id
        return False

    def _on_respondent_disconnect(self, context):
        for handle in self._handles_by_respondent.pop(context, ()):
            entry = self._handle_map.get(handle)
            if entry is None:
                continue
            _, fn, _, _ = entry
            self._handle_map.pop(handle, None)
            try:
                fn(Message.dead('the respondent context %s disconnected'
                                % (context.name or context.context_id,),
                                handle=handle))
            except Exception:
                LOG.exception('%r: handler for dead %r failed', self, handle)

    def del_handler(self, handle):
        """Remove the handler for `handle`."""
        entry = self._handle_map.pop(handle, None)
        if entry is not None and entry[3] is not None:
            handles = self._handles_by_respondent.get(entry[3])
            if handles:
                handles.discard(handle)

    def _on_broker_exit(self):
        self._summarise_drops()
        # Fail every waiter: nothing will be delivered after this.
        for handle in list(self._handle_map):
            entry = self._handle_map.pop(handle, None)
            if entry is None:
                continue
            try:
                entry[1](Message.dead('the broker has shut down',
                                      handle=handle))
            except Exception:
                LOG.exception('%r: dead-on-exit handler failed', self)

    def _maybe_send_dead(self, msg, reason, *args):
        if args:
            reason %= args
        LOG.debug('%r: %r is dead: %r', self, msg, reason)
        if msg.reply_to and not msg.is_dead:
            self.route(Message.dead(
                dst_id=msg.src_id, handle=msg.reply_to, reason=reason,
                router=self,
            ))

    def _invoke(self, msg, stream):
        entry = self._handle_map.get(msg.handle)
        if entry is None:
            if not msg.is_dead:
                self._maybe_send_dead(msg, 'no handler for handle %r in '
                                      'context %r', msg.handle,
                                      self.context_id)
            return
        persist, fn, policy, respondent = entry
        # Policies such as has_parent_authority read the identity of the
        # router that received the message.
        msg.router = self
        if policy and not policy(msg, stream):
            self._refuse(msg, stream, 'refused by the policy of handle %r',
                         msg.handle)
            self._maybe_send_dead(msg, 'refused by policy of context %r',
                                  self.context_id)
            return
        if not persist:
            self.del_handler(msg.handle)
        try:
            fn(msg)
        except StreamError as e:
            # The body did not deserialize, or held a value out of range.
            self._refuse(msg, stream, 'malformed body: %s', e)
        except Exception:
            LOG.exception('%r: handler %r for %r failed', self, fn, msg)

    def _verify_source(self, msg, in_stream):
        protocol = in_stream.protocol
        if protocol.auth_id is not None and \
                msg.src_id == protocol.remote_id and \
                msg.auth_id == protocol.auth_id:
            # Stamped by the stream itself (e.g. a local client accepted by
            # a listener acts with the listener's authority), and the source
            # is the peer at the other end of this very stream.
            return True
        expect = self.stream_by_id(msg.auth_id)
        if in_stream is not expect:
            self._refuse(msg, in_stream, 'it arrived on %r but auth_id %r is '
                         'reached through %r', in_stream, msg.auth_id, expect)
            return False
        if msg.src_id != msg.auth_id:
            expect = self.stream_by_id(msg.src_id)
            if in_stream is not expect:
                self._refuse(msg, in_stream, 'it arrived on %r but src_id %r '
                             'is reached through %r', in_stream, msg.src_id,
                             expect)
                return False
        return True

    def _async_route(self, msg, in_stream=None):
        """Deliver or forward `msg`; `in_stream` is the stream it arrived
        on, or None when it was written in this process."""
        if in_stream is not None and not self._verify_source(msg, in_stream):
            return
        if msg.dst_id == self.context_id:
            if in_stream is None and not self.broker.on_thread():
                self.broker.defer(self._invoke, msg, None)
            else:
                self._invoke(msg, in_stream)
            return
        out = self.stream_by_id(msg.dst_id)
        if out is None:
            if in_stream is None and not (
                    isinstance(msg.dst_id, integer_types) and
                    0 <= msg.dst_id <= MAX_ID):
                raise StreamError('cannot send %r: no context can have ID %r'
                                  % (msg, msg.dst_id))
            self._maybe_send_dead(msg, 'no route to context %r from '
                                  'context %r', msg.dst_id, self.context_id)
            return
        if out is in_stream:
            self._refuse(msg, in_stream, 'would be sent back where it came '
                         'from')
            # E.g. a route the sender's side still holds for a context gone
            # here: its caller fails now, not when it gives up waiting.
            self._maybe_send_dead(msg, 'no route to context %r from '
                                  'context %r', msg.dst_id, self.context_id)
            return
        if in_stream is not None and not in_stream.protocol.is_privileged:
            egress_ids = in_stream.protocol.egress_ids
            if len(egress_ids) < self._egress_limit:
                egress_ids.add(msg.dst_id)
        if (self.unidirectional and in_stream is not None and
                not in_stream.protocol.is_privileged and
                not out.protocol.is_privileged):
            self._refuse(msg, in_stream, 'unidirectional routing forbids '
                         'messages between children')
            self._maybe_send_dead(msg, 'unidirectional routing forbids '
                                  'messages between children of context %r',
                                  self.context_id)
            return
        if msg.size > self.max_message_size:
            reason = ('message of %d bytes exceeds max_message_size of %d '
                      'bytes' % (msg.size, self.max_message_size))
            if not msg.reply_to and not msg.is_dead:
                # A reply (or a Sender's message) has nobody to answer: tell
                # its recipient instead, so a caller waiting for it fails
                # rather than hangs.
                self.route(Message.dead(dst_id=msg.dst_id,
                                        handle=msg.handle, reason=reason,
                                        router=self))
            self._maybe_send_dead(msg, reason)
            return
        if not out.protocol.send(msg):
            self._maybe_send_dead(msg, 'the stream to context %r is '
                                  'disconnected', msg.dst_id)

    def route(self, msg):
        """Send `msg` towards ``msg.dst_id``. Safe from any thread."""
        if self.broker._exitted and msg.dst_id != self.context_id:
            self._maybe_send_dead(msg, 'the broker has shut down')
            return
        self._async_route(msg)

    def _on_stream_shutdown(self, stream):
        """Broker shutdown: the default sends nothing and waits for the
        peer; subclasses send SHUTDOWN to children."""

    def _on_stream_disconnect(self, stream):
        for target_id, s in list(self._stream_by_id.items()):
            if s is stream:
                del self._stream_by_id[target_id]
                self._tell_senders(target_id, stream)
                ctx = self._context_by_id.get(target_id)
                if ctx is not None and target_id != \
                        stream.protocol.remote_id:
                    ctx.on_disconnect()
                if target_id != stream.protocol.remote_id:
                    self.propagate_del_route(target_id)
        if stream is self.parent_stream:
            LOG.debug('%r: parent stream disconnected; shutting down',
                      self)
            fire(self, 'parent_disconnect')
            self.broker.shutdown()

    def shutdown(self):
        """Shut down the broker."""
        self.broker.shutdown()


def has_parent_authority(msg, _stream=None):
    """Policy accepting messages sent with the authority of this context or
    any of its ancestors: the identity (:attr:`Router.context_id`,
    :attr:`Router.parent_ids`) of the router that received `msg`, or of
    the package globals (:data:`mitogen.context_id`,
    :data:`mitogen.parent_ids`) for a message no router handled."""
    router = msg.router
    if router is not None:
        return msg.auth_id == router.context_id or \
            msg.auth_id in router.parent_ids
    pkg = _package_module()
    parent_ids = pkg.parent_ids if pkg is not None else []
    context_id = pkg.context_id if pkg is not None else 0
    return msg.auth_id == context_id or msg.auth_id in parent_ids


# ---------------------------------------------------------------------------
# 9. The importer
# ---------------------------------------------------------------------------

try:
    _NotFoundBase = ModuleNotFoundError
except NameError:
    _NotFoundBase = ImportError


class ModuleNotServed(_NotFoundBase):
    """The parent declined to serve a module; the text says why. On Python
    3.6+ it is a ``ModuleNotFoundError``, so code probing for optional
    modules (``except ModuleNotFoundError``) behaves as without mitogen."""


class ModuleRecord(object):
    """One module as :data:`LOAD_MODULE` carries it, by field name.

    On the wire the body is a pickled 5-tuple, the same whoever builds it
    (the master's responder, an intermediate's forwarder, a fork)::

        (fullname, pkg_present, path, compressed, related)   # found
        (fullname, None,        None, None,       reason)    # not served

    The fourth field tells the two apart: for a found module the fifth is
    the list of related modules the sender may preload, for one it does not
    serve it is the reason (text, shown in the child's :class:`ImportError`
    as a refusal) or None (simply not found). :meth:`to_message` and
    :meth:`from_message` are the only code that knows the positions.

    Use :meth:`found` and :meth:`absent` to build one.
    """
    __slots__ = ('fullname', 'pkg_present', 'path', 'compressed', 'related',
                 'reason')

    def __init__(self, fullname, pkg_present, path, compressed, related,
                 reason):
        #: The module's dotted name (native ``str``).
        self.fullname = fullname
        #: For a package, the names of its submodules the sender has (a
        #: list, possibly empty); None for a plain module.
        self.pkg_present = pkg_present
        #: The file name shown in tracebacks, or None.
        self.path = path
        #: The zlib-compressed source (bytes), or None when not served.
        self.compressed = compressed
        #: Names of modules that importing this one will ask for.
        self.related = related
        #: Why the module is not served, when it was refused; else None.
        self.reason = reason

    @classmethod
    def found(cls, fullname, pkg_present, path, compressed, related=()):
        """A record for a module that is served."""
        return cls(fullname, pkg_present, path, compressed, list(related),
                   None)

    @classmethod
    def absent(cls, fullname, reason=None):
        """A record for a module that is not served: refused with
        `reason`, or simply not found when `reason` is None."""
        return cls(fullname, None, None, None, [], reason)

    @property
    def is_found(self):
        """True when the record carries the module's source."""
        return self.compressed is not None

    @property
    def is_pkg(self):
        """True when the module is a package."""
        return self.pkg_present is not None

    def __repr__(self):
        if self.is_found:
            return 'ModuleRecord(%r, %d bytes)' % (self.fullname,
                                                   len(self.compressed))
        return 'ModuleRecord(%r, absent: %r)' % (self.fullname, self.reason)

    def to_tuple(self):
        """The body as it travels: the 5-tuple described above."""
        if self.is_found:
            return (self.fullname, self.pkg_present, self.path,
                    self.compressed, self.related)
        return (self.fullname, None, None, None, self.reason)

    def to_message(self, **kwargs):
        """A :data:`LOAD_MODULE` :class:`Message` carrying this record;
        `kwargs` are passed to :meth:`Message.pickled` (``dst_id``)."""
        return Message.pickled(self.to_tuple(), handle=LOAD_MODULE, **kwargs)

    @classmethod
    def from_message(cls, msg):
        """Read the body of the :data:`LOAD_MODULE` message `msg`.

        :raises StreamError: when a field has the wrong type."""
        body = control_body(msg, 'LOAD_MODULE', 5)
        # Any name our importer may have asked for, valid or not, so that
        # the answer "absent" wakes whoever waits for it.
        _check_text('LOAD_MODULE name', body[0], MAX_NAME_LENGTH)
        fullname, pkg_present, path, compressed, last = body
        related = last if compressed is not None else None
        for value, types in ((pkg_present, (list, tuple)),
                             (path, FsPathTypes), (compressed, BytesType),
                             (related, (list, tuple))):
            if value is not None and not isinstance(value, types):
                raise StreamError('refusing LOAD_MODULE of %s: malformed'
                                  % (_short_repr(fullname),))
        fullname = to_native(fullname)
        if compressed is None:
            return cls.absent(fullname, to_text(last) if last else None)
        if pkg_present is not None:
            pkg_present = [to_native(n) for n in pkg_present]
        return cls.found(fullname, pkg_present, path, compressed,
                         [to_native(n) for n in related or ()])


class Importer(object):
    """Imports modules from the parent context, as a :data:`sys.meta_path`
    hook placed after the normal finders: a module installed in the child
    always wins over the parent's copy.

    For a name the child cannot find it sends :data:`GET_MODULE` to its
    parent and waits for the :data:`LOAD_MODULE` reply. Modules the parent
    preloads arrive the same way, unasked, and are kept until imported. A
    submodule of a package served by the parent that is not in that
    package's list of present modules fails at once, without a request.

    :param Router router: the child's router.
    :param Context context: the parent context serving modules.
    """

    def __init__(self, router, context, core_compressed=None, whitelist=(),
                 blacklist=(), pkg_present=None):
        self._router = router
        self._context = context
        self._lock = threading.Lock()
        #: fullname -> ModuleRecord of a module received
        self._cache = {}
        #: fullname -> reason, for modules the parent cannot serve
        self._absent = {}
        #: names the parent refused to serve, with a reason worth showing
        #: (standard library, native extension, ...), unlike plain absence
        self._refused = set()
        #: fullname -> [Latch], requests in flight
        self._callbacks = {}
        self._present = {'mitogen': [to_native(n) for n in pkg_present or ()]}
        self.whitelist = list(whitelist) or ['']
        self.blacklist = list(blacklist)
        #: Names of GET_MODULE requests sent, in order.
        self.requests = []
        router.add_handler(self._on_load_module, LOAD_MODULE,
                           policy=has_parent_authority)
        if core_compressed is not None:
            # Kept as it arrived, for children this context may start.
            self._cache['mitogen.core'] = ModuleRecord.found(
                'mitogen.core', None, 'mitogen/core.py', core_compressed)

    #: The compiled core this context was started with (see
    #: :func:`mitogen.parent.get_core_code`), kept for the children it
    #: starts that run the same interpreter; empty if it has none.
    core_code = b''

    def __repr__(self):
        return 'Importer'

    @property
    def core_compressed(self):
        """The zlib-compressed core this context was started with, kept for
        the children it starts; None if it has none."""
        record = self._cache.get('mitogen.core')
        return record.compressed if record is not None else None

    def get_record(self, fullname):
        """What this importer knows of `fullname`, as a
        :class:`ModuleRecord`: the module as received, or an absent record
        (with the parent's reason when it refused the module); None while
        nothing is known. The forwarder of a context that starts children
        answers them with it."""
        with self._lock:
            record = self._cache.get(fullname)
            if record is not None:
                return record
            if fullname not in self._absent:
                return None
            reason = None
            if fullname in self._refused:
                reason = self._absent[fullname]
            return ModuleRecord.absent(fullname, reason)

    def package_contents(self, pkgname):
        """Names of the submodules of package `pkgname` the parent has, or
        None when they are not known."""
        return self._present.get(pkgname)

    def inherit(self, other):
        """Take over what the importer `other` learned (modules received,
        names absent or refused, package contents) without replacing what
        this one knows: a forked context starts with the knowledge of the
        process it was forked from instead of asking its parent again.

        `other` is read without its lock: in a fork, a thread that no longer
        exists may have held it at the moment of the fork."""
        with self._lock:
            for name, record in list(other._cache.items()):
                self._cache.setdefault(name, record)
            for name, reason in list(other._absent.items()):
                self._absent.setdefault(name, reason)
            self._refused.update(other._refused)
            for name, names in list(other._present.items()):
                self._present.setdefault(name, names)

    # Python 2 / legacy protocol.
    def find_module(self, fullname, path=None):
        if fullname in self._refused:
            return self
        if self._refuse_fast(fullname):
            return None
        if not PY3 and self._installed_locally(fullname, path):
            return None
        return self

    @staticmethod
    def _installed_locally(fullname, path):
        # Python 2 consults sys.meta_path before searching sys.path, so a
        # module the child has installed (the standard library included)
        # must be ruled out here, or the parent would be asked for it.
        if fullname in sys.builtin_module_names:
            return True
        import imp
        try:
            fp, _, _ = imp.find_module(fullname.rpartition('.')[2], path)
        except ImportError:
            return False
        if fp is not None:
            fp.close()
        return True

    def _refuse_fast(self, fullname):
        """True when `fullname` is certainly not available from the parent,
        decided without a round trip."""
        if fullname in self._cache:
            return False
        if fullname in self._absent:
            return True
        if any(fullname.startswith(b) for b in self.blacklist if b):
            return True
        if not any(fullname.startswith(w) for w in self.whitelist):
            return True
        pkgname, _, _ = fullname.rpartition('.')
        if pkgname:
            present = self._present.get(pkgname)
            if present is not None and fullname not in present:
                return True
            pkg = sys.modules.get(pkgname)
            if pkg is None or not isinstance(
                    getattr(pkg, '__loader__', None), Importer):
                # The parent package was not loaded by us. Only mitogen's
                # own package is synthesised and served by us.
                if pkgname != 'mitogen' and present is None:
                    return True
        return False

    def find_spec(self, fullname, path=None, target=None):
        """Python 3 finder protocol."""
        import importlib.util
        if fullname not in self._refused:
            if self._refuse_fast(fullname):
                return None
            if self._router.broker.on_thread():
                return None
            try:
                record = self._get_module(fullname)
            except ModuleNotServed:
                if fullname not in self._refused:
                    return None
        if fullname in self._refused:
            # A spec whose loader raises: the ImportError then says why the
            # parent refused, instead of a bare "No module named".
            return importlib.util.spec_from_loader(
                fullname, _RefusedLoader(self.import_error(fullname)))
        spec = importlib.util.spec_from_loader(fullname, self,
                                               origin=record.path,
                                               is_package=record.is_pkg)
        if record.path:
            spec.has_location = False
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        fullname = module.__name__
        record = self._get_module(fullname)
        self._prepare(module, record)
        if record.is_pkg and sys.version_info[:2] == (3, 9):
            _teach_files_to_python39()
        code = self._compile(record)
        exec(code, module.__dict__)

    def load_module(self, fullname):
        """Python 2 loader protocol."""
        if self._router.broker.on_thread():
            raise ImportError('cannot import %r on the broker thread'
                              % (fullname,))
        record = self._get_module(fullname)
        module = sys.modules.get(fullname)
        created = module is None
        if created:
            module = types.ModuleType(fullname)
            sys.modules[fullname] = module
        module.__loader__ = self
        self._prepare(module, record)
        try:
            exec(self._compile(record), module.__dict__)
        except BaseException:
            if created:
                sys.modules.pop(fullname, None)
            raise
        return sys.modules.get(fullname, module)

    def _prepare(self, module, record):
        fullname = record.fullname
        module.__file__ = self._filename(record)
        if record.is_pkg:
            module.__path__ = []
            module.__package__ = fullname
            self._present[fullname] = record.pkg_present
        else:
            module.__package__ = fullname.rpartition('.')[0]

    def _filename(self, record):
        return to_native('master:%s' % (to_text(record.path or
                                                record.fullname),))

    def _compile(self, record):
        compressed = record.compressed
        source = zlib.decompress(compressed) if compressed else b''
        return compile(source, self._filename(record), 'exec', 0, True)

    def get_source(self, fullname):
        """Return the source text of `fullname`, for tracebacks."""
        record = self._cache.get(fullname)
        if record is None or not record.compressed:
            return None
        return to_text(zlib.decompress(record.compressed))

    def get_filename(self, fullname):
        record = self._cache.get(fullname)
        return self._filename(record) if record else None

    def is_package(self, fullname):
        record = self._cache.get(fullname)
        return record is not None and record.is_pkg

    def get_resource_reader(self, fullname):
        """Resource reader for :mod:`importlib.resources` on Python 3.7+:
        files are fetched from the parent on demand."""
        if not self.is_package(fullname):
            return None
        return ResourceReader(self, fullname)

    def _on_load_module(self, msg):
        if msg.is_dead:
            return
        record = ModuleRecord.from_message(msg)
        fullname = record.fullname
        with self._lock:
            if not record.is_found:
                self._absent[fullname] = record.reason or \
                    u'not found on the parent'
                if record.reason:
                    self._refused.add(fullname)
            else:
                self._cache[fullname] = record
                if record.is_pkg:
                    self._present[fullname] = record.pkg_present
            callbacks = self._callbacks.pop(fullname, [])
        self._run_callbacks(callbacks)

    @staticmethod
    def _run_callbacks(callbacks):
        for callback in callbacks:
            if isinstance(callback, Latch):
                callback.put(None)
                continue
            try:
                callback()
            except Exception:
                LOG.exception('importer callback %r failed', callback)

    def request_module(self, fullname, callback):
        """Arrange for `callback()` to run once `fullname` is cached or
        known absent, asking the parent only if nobody has yet. Never
        blocks, so it is safe on the broker thread (the module forwarder of
        an intermediate context uses it)."""
        with self._lock:
            known = fullname in self._cache or fullname in self._absent
            if not known:
                pkgname = fullname.rpartition('.')[0]
                present = self._present.get(pkgname)
                if pkgname and present is not None and \
                        fullname not in present:
                    self._absent[fullname] = u'not in its package on the parent'
                    known = True
            if not known:
                waiting = fullname in self._callbacks
                self._callbacks.setdefault(fullname, []).append(callback)
        if known:
            callback()
        elif not waiting:
            self.requests.append(fullname)
            self._context.send(Message(data=fullname.encode('utf-8'),
                                       handle=GET_MODULE,
                                       router=self._context.router))

    def _get_module(self, fullname):
        with self._lock:
            record = self._cache.get(fullname)
            if record is not None:
                return record
            reason = self._absent.get(fullname)
            if reason is not None:
                raise ModuleNotServed(reason)
            latch = Latch()
            waiting = fullname in self._callbacks
            self._callbacks.setdefault(fullname, []).append(latch)
        if not waiting:
            self.requests.append(fullname)
            self._context.send(Message(data=fullname.encode('utf-8'),
                                       handle=GET_MODULE,
                                       router=self._context.router))
        latch.get()
        with self._lock:
            record = self._cache.get(fullname)
            if record is not None:
                return record
            raise ModuleNotServed(self._absent.get(fullname,
                                                   'not served'))

    def _on_disconnect(self):
        with self._lock:
            callbacks = list(self._callbacks.items())
            self._callbacks.clear()
            for fullname, _ in callbacks:
                self._absent.setdefault(
                    fullname, 'the parent context disconnected')
        for _, latches in callbacks:
            self._run_callbacks(latches)

    def import_error(self, fullname):
        """Return the :class:`ImportError` explaining why `fullname` was not
        served, or None."""
        reason = self._absent.get(fullname)
        if reason:
            return ModuleNotServed('%s: %s' % (fullname, reason))
        return None


class _RefusedLoader(object):
    """Loader of a module the parent refused: raises the explanation."""

    def __init__(self, error):
        self.error = error

    def create_module(self, spec):
        raise self.error

    def exec_module(self, module):
        raise self.error


class ResourceReader(object):
    """Reads data files of a package served by the parent, fetching each
    with a :data:`GET_RESOURCE` request."""

    def __init__(self, importer, package):
        self._importer = importer
        self._package = package

    def _request(self, kind, name):
        ctx = self._importer._context
        recv = Receiver(ctx.router, persist=False, respondent=ctx)
        ctx.send(Message.pickled((kind, self._package, name),
                                 handle=GET_RESOURCE,
                                 reply_to=recv.handle, router=ctx.router))
        return recv.get().unpickle()

    def open_resource(self, resource):
        data = self._request('read', resource)
        if data is None:
            raise _file_not_found(resource)
        import io
        return io.BytesIO(data)

    def resource_path(self, resource):
        raise _file_not_found(resource)

    def is_resource(self, name):
        for entry, is_dir in self._request('list', '') or ():
            if to_text(entry) == name:
                return not is_dir
        return False

    def contents(self):
        return [to_text(n) for n, _ in self._request('list', '') or ()]

    def files(self):
        return RemoteTraversable(self, '')


_python39_files_taught = []


def _teach_files_to_python39():
    """Python 3.9's ``importlib.resources.files()`` looks for data files
    beside ``__spec__.origin`` on disk and never asks the loader: send it
    to the parent for packages the :class:`Importer` loaded."""
    if _python39_files_taught:
        return
    _python39_files_taught.append(True)
    import importlib._common as common
    from_package = common.from_package

    def from_package_or_parent(package):
        spec = package.__spec__
        if isinstance(spec.loader, Importer):
            return ResourceReader(spec.loader, spec.name).files()
        return from_package(package)
    common.from_package = from_package_or_parent


def _file_not_found(name):
    if PY3:
        return FileNotFoundError(name)  # noqa: F821
    return IOError(errno.ENOENT, 'No such file', name)


class RemoteTraversable(object):
    """A read-only :class:`importlib.abc.Traversable` over a package
    directory on the parent."""

    def __init__(self, reader, path):
        self._reader = reader
        self._path = path

    @property
    def name(self):
        return self._path.rpartition('/')[2]

    def __repr__(self):
        return 'RemoteTraversable(%r, %r)' % (self._reader._package,
                                              self._path)

    def _entries(self):
        return self._reader._request('list', self._path) or ()

    def iterdir(self):
        for name, _ in self._entries():
            name = to_text(name)
            yield RemoteTraversable(
                self._reader, (self._path + '/' + name).lstrip('/'))

    def is_dir(self):
        if not self._path:
            return True
        parent, _, name = self._path.rpartition('/')
        for entry, is_dir in self._reader._request('list', parent) or ():
            if to_text(entry) == name:
                return bool(is_dir)
        return False

    def is_file(self):
        if not self._path:
            return False
        parent, _, name = self._path.rpartition('/')
        for entry, is_dir in self._reader._request('list', parent) or ():
            if to_text(entry) == name:
                return not is_dir
        return False

    def joinpath(self, *parts):
        path = self._path
        for part in parts:
            for piece in to_text(part).split('/'):
                if piece:
                    path = (path + '/' + piece).lstrip('/')
        return RemoteTraversable(self._reader, path)

    __truediv__ = joinpath

    def read_bytes(self):
        data = self._reader._request('read', self._path)
        if data is None:
            raise _file_not_found(self._path)
        return data

    def read_text(self, encoding=None, errors=None):
        return self.read_bytes().decode(encoding or 'utf-8',
                                        errors or 'strict')

    def open(self, mode='r', *args, **kwargs):
        import io
        if 'b' in mode:
            return io.BytesIO(self.read_bytes())
        return io.TextIOWrapper(io.BytesIO(self.read_bytes()),
                                *args, **kwargs)


# ---------------------------------------------------------------------------
# 10. Log and stdio forwarding
# ---------------------------------------------------------------------------

class LogHandler(logging.Handler):
    """Sends log records to the master as :data:`FORWARD_LOG` messages.
    Records emitted while sending are dropped instead of recursing."""

    def __init__(self, context):
        logging.Handler.__init__(self)
        self.context = context
        self.local = threading.local()

    def emit(self, rec):
        if getattr(self.local, 'in_emit', False):
            return
        if rec.name == 'mitogen.io':
            return
        self.local.in_emit = True
        try:
            msg = self.format(rec)
            encoded = u'%s\x00%d\x00%s' % (to_text(rec.name), rec.levelno,
                                           to_text(msg))
            self.context.send(Message(data=encoded.encode('utf-8'),
                                      handle=FORWARD_LOG,
                                      router=self.context.router))
        except Exception:
            pass
        finally:
            self.local.in_emit = False


class IoLoggerProtocol(DelimitedProtocol):
    """Turns lines written to a file descriptor (the child's stdout or
    stderr) into log records on logger `name`."""

    def __init__(self, name, level=logging.INFO):
        self._log = logging.getLogger(name)
        self._level = level

    def on_line(self, line):
        self._log.log(self._level, '%s', to_text(line.rstrip(b'\r')))

    def on_shutdown(self, broker):
        pass


# ---------------------------------------------------------------------------
# 11. Dispatcher and ExternalContext
# ---------------------------------------------------------------------------

class Dispatcher(object):
    """Runs :data:`CALL_FUNCTION` requests on the main thread of a child.

    A request is ``(chain_id, module, class, function, args, kwargs)``. When
    a call in a pipelined chain fails, later calls of the same chain are
    answered with the same error without running, until the chain is
    forgotten with :meth:`forget_chain`.
    """
    _error_by_chain_id = {}

    def __init__(self, econtext):
        self.econtext = econtext
        self.recv = Receiver(router=econtext.router, handle=CALL_FUNCTION,
                             policy=has_parent_authority)
        listen(econtext.broker, 'shutdown', self.recv.close)

    @classmethod
    @takes_econtext
    def forget_chain(cls, chain_id, econtext):
        """Forget the error recorded for pipelined chain `chain_id`."""
        cls._error_by_chain_id.pop(chain_id, None)

    def _parse_request(self, msg):
        data = msg.unpickle(throw=False)
        chain_id, modname, klass, func, args, kwargs = data
        modname, func = to_text(modname), to_text(func)
        if not PY3:
            modname, func = str(modname), str(func)
        module = self._import(modname)
        obj = module
        if klass:
            obj = getattr(module, str(klass) if not PY3 else to_text(klass))
        fn = getattr(obj, func)
        kwargs = Kwargs(dict(kwargs or {}))
        if getattr(fn, 'mitogen_takes_econtext', None):
            kwargs['econtext'] = self.econtext
        if getattr(fn, 'mitogen_takes_router', None):
            kwargs['router'] = self.econtext.router
        return chain_id, fn, args, kwargs

    def _import(self, modname):
        if modname == '__main__':
            return self.econtext.importer_main()
        try:
            __import__(modname)
        except ImportError:
            err = self.econtext.importer.import_error(modname)
            if err is not None:
                raise err
            raise
        return sys.modules[modname]

    def _dispatch_one(self, msg):
        chain_id = None
        try:
            chain_id, fn, args, kwargs = self._parse_request(msg)
        except Exception:
            return chain_id, CallError(sys.exc_info()[1])
        if chain_id in self._error_by_chain_id:
            return chain_id, self._error_by_chain_id[chain_id]
        try:
            return chain_id, fn(*args, **kwargs)
        except Exception:
            e = CallError(sys.exc_info()[1])
            if chain_id is not None:
                self._error_by_chain_id[chain_id] = e
            return chain_id, e

    def _dispatch_calls(self):
        for msg in self.recv:
            chain_id, ret = self._dispatch_one(msg)
            if msg.reply_to:
                try:
                    reply = Message.pickled(ret, router=msg.router)
                except StreamError:
                    reply = Message.pickled(CallError(sys.exc_info()[1]),
                                            router=msg.router)
                msg.reply(reply)
            elif isinstance(ret, CallError) and chain_id is None:
                LOG.error('call_no_reply() failed: %s', ret)
            msg = None
            ret = None

    def run(self):
        """Serve calls until the channel is closed."""
        self._dispatch_calls()


class ExternalContext(object):
    """The main program of a child context: sets up the broker, the router
    and the stream to the parent, the importer, log and stdio forwarding,
    then serves function calls on the main thread until shut down.

    :param dict config: values sent by the parent at boot.
    """
    #: Set by :meth:`detach`: losing the parent then no longer shuts this
    #: context down.
    detached = False
    _parent_lost = False
    #: Seconds code still running on the main thread is given to finish
    #: once the parent was lost (rather than shut this context down), after
    #: which the process ends itself: its results have nowhere to go.
    lost_parent_grace = 0.25

    #: Called as ``on_start(econtext)`` once the context is set up, just
    #: before it starts serving calls (used by :mod:`mitogen.fork`).
    on_start = None

    #: The compiled core this context was started with, as its parent sent
    #: it, or empty if it compiled the source itself.
    core_code = b''

    def __init__(self, config):
        self.config = config

    def _setup_package(self):
        pkg = sys.modules.get('mitogen')
        if pkg is None:
            pkg = types.ModuleType('mitogen')
            pkg.__path__ = []
            pkg.__package__ = 'mitogen'
            sys.modules['mitogen'] = pkg
        pkg.is_master = False
        pkg.context_id = self.config['context_id']
        pkg.parent_ids = list(self.config['parent_ids'])
        pkg.parent_id = pkg.parent_ids[0]
        pkg.core = sys.modules[__name__]
        pkg.main = _child_main_decorator
        pkg.__version__ = tuple(int(x) for x in __version__.split('.'))
        # The names mitogen/__init__.py exports, which children lack.
        pkg.__all__ = ['context_id', 'is_master', 'main', 'parent_id',
                       'parent_ids']

    def _setup_master(self):
        Router.max_message_size = self.config['max_message_size']
        self.broker = Broker()
        # Shorter than our parent's, so that at the deadline this context
        # still has time to kill its own children before its parent gives
        # up on it.
        self.broker.shutdown_timeout = float(self.config.get(
            'shutdown_timeout', Broker.shutdown_timeout))
        self.router = Router(self.broker)
        self.router.context_name = self.config.get('name')
        self.router.unidirectional = bool(self.config.get('unidirectional'))
        for key in self.config.get('registered_types', ()):
            self.router._registered_types[tuple(key)] = 'lazy'
        parent_id = self.config['parent_ids'][0]
        self.parent = self.router.context_class(self.router, parent_id,
                                                'parent')
        self.master = self.router.context_class(self.router, 0, 'master')
        in_fd = self.config['in_fd']
        out_fd = self.config['out_fd']
        stream = Stream(MitogenProtocol(self.router, parent_id),
                        name='parent')
        stream.protocol.is_privileged = True
        stream.accept(in_fd, out_fd)
        self.stream = stream
        self.router.parent_stream = stream
        self.router.register(self.parent, stream)
        self.router._context_by_id[0] = self.master
        listen(stream, 'disconnect', self._on_parent_disconnect)
        listen(self.broker, 'exit', self._on_broker_exit)

    def _on_parent_disconnect(self):
        importer = getattr(self, 'importer', None)
        if importer is not None:
            importer._on_disconnect()
        if self.detached:
            LOG.debug('%r: detached from the parent', self)
            return
        if not self.broker._shutdown_fired:
            # Lost, not shut down: nobody above is left to serve or report
            # to. Cut the streams to our children too, so the whole subtree
            # learns at once instead of level by level, each after its own
            # shutdown grace.
            self._parent_lost = True
            for stream in list(self.broker._streams):
                protocol = stream.protocol
                if isinstance(protocol, MitogenProtocol) and \
                        not protocol.is_privileged:
                    stream.on_disconnect(self.broker)
            # The grace of user code runs from now, alongside the shutdown.
            self._start_reaper()
        self.broker.shutdown()

    def detach(self):
        """Detach this context from its parent, so it lives on when the
        parent goes away: for work that must outlive the connection that
        started it (Mitogen for Ansible's asynchronous tasks). The parent
        is told with :data:`DETACHING`, closes the connection without
        ending the process, and no longer waits for it or kills it. Once
        the parent is gone, nothing more can be imported or logged upwards;
        the context ends when its code shuts the broker down."""
        if self.detached:
            return
        self.detached = True
        self.parent.send(Message(handle=DETACHING, router=self.router))

    def _on_shutdown_msg(self, msg):
        if not msg.is_dead:
            LOG.debug('%r: SHUTDOWN received', self)
            self.broker.shutdown()

    def _on_broker_exit(self):
        self._start_reaper()

    _reaper_started = False

    def _start_reaper(self):
        if not self.config.get('profiling') and not self._reaper_started:
            # The last resort of shutdown: if the main thread is stuck in
            # user code, it cannot end the process, so the broker does.
            self._reaper_started = True
            t = threading.Thread(target=self._reaper, name='mitogen.reaper')
            t.daemon = True
            t.start()

    def _reaper(self):
        grace = self.config.get('exit_grace', 2.0)
        if self._parent_lost:
            grace = min(grace, self.lost_parent_grace)
        if self._main_done.wait(grace):
            return
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)
        finally:
            os._exit(1)

    def _setup_importer(self):
        self.importer = Importer(self.router, self.parent,
                                 self.core_compressed,
                                 whitelist=self.config.get('whitelist', ()),
                                 blacklist=self.config.get('blacklist', ()),
                                 pkg_present=self.config.get('pkg_present'))
        self.importer.core_code = self.core_code
        sys.meta_path.append(self.importer)
        self._main_module = None

    def importer_main(self):
        """Return the parent's ``__main__`` module, loading it on first use
        (it is served with its main guard removed)."""
        if self._main_module is None:
            record = self.importer._get_module('__main__')
            mod = types.ModuleType('__mitogen_main__')
            mod.__loader__ = self.importer
            self.importer._prepare(mod, record)
            mod.__name__ = '__main__'
            old_main = sys.modules.get('__main__')
            sys.modules['__main__'] = mod
            try:
                exec(self.importer._compile(record), mod.__dict__)
            except BaseException:
                if old_main is not None:
                    sys.modules['__main__'] = old_main
                raise
            self._main_module = mod
        return self._main_module

    def _setup_logging(self):
        root = logging.getLogger()
        root.setLevel(self.config.get('log_level', logging.INFO))
        for h in list(root.handlers):
            root.removeHandler(h)
        self.log_handler = LogHandler(self.master)
        self.log_handler.setFormatter(logging.Formatter('%(message)s'))
        root.addHandler(self.log_handler)
        if self.config.get('debug'):
            root.setLevel(logging.DEBUG)

    def _setup_stdio(self):
        # fd 0 reads /dev/null; fds 1 and 2 feed pipes whose lines become log
        # records, so print() and stray writes reach the master's logging.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.close(null)
        for fd, name in ((1, 'stdout'), (2, 'stderr')):
            rfd, wfd = os.pipe()
            os.dup2(wfd, fd)
            os.close(wfd)
            stream = Stream(IoLoggerProtocol(name), name=name)
            stream.accept(rfd, rfd)
            stream.receive_side.keep_alive = False
            self.broker.start_receive(stream)
        if PY3:
            import io
            sys.stdout = io.TextIOWrapper(
                io.FileIO(1, 'w', closefd=False), encoding='utf-8',
                errors='backslashreplace', line_buffering=True)
            sys.stderr = io.TextIOWrapper(
                io.FileIO(2, 'w', closefd=False), encoding='utf-8',
                errors='backslashreplace', line_buffering=True)
        else:
            sys.stdout = os.fdopen(1, 'w', 1)
            sys.stderr = os.fdopen(2, 'w', 0)
        sys.stdin = open(os.devnull)

    def _setup_service_stub(self):
        # Service calls may reach a child before any code there imported
        # mitogen.service. A parent's first one starts a thread that imports
        # it and builds the pool, which takes over this receiver and what it
        # queued. Only parents may call services in a child.
        self._service_pool_started = False
        recv = Receiver(self.router, handle=CALL_SERVICE,
                        policy=has_parent_authority)
        recv.notify = self._on_first_service_call
        self.router.service_stub_recv = recv
        listen(self.broker, 'shutdown', recv.close)

    def _on_first_service_call(self, recv):
        # Broker thread: importing here would deadlock on the importer,
        # which needs this thread to receive the module.
        if self._service_pool_started:
            return
        self._service_pool_started = True
        t = threading.Thread(target=self._start_service_pool,
                             name='mitogen.service.stub')
        t.daemon = True
        t.start()

    def _start_service_pool(self):
        try:
            __import__('mitogen.service')
            sys.modules['mitogen.service'].get_or_create_pool(
                router=self.router)
        except Exception:
            e = CallError(sys.exc_info()[1])
            LOG.exception('%r: could not start the service pool', self)
            recv = self.router.service_stub_recv
            while True:
                try:
                    msg = recv.get(block=False)
                except (TimeoutError, ChannelError):
                    break
                if msg.reply_to:
                    msg.reply(e)
            # The next call tries again.
            self._service_pool_started = False

    def main(self):
        """Run the child until shutdown."""
        self._main_done = threading.Event()
        self._setup_package()
        self._setup_master()
        self._setup_importer()
        self.router.add_handler(self._on_shutdown_msg, SHUTDOWN,
                                policy=has_parent_authority)
        self.dispatcher = Dispatcher(self)
        self._setup_service_stub()
        # Only now, with every handler in place, may the parent send.
        os.write(self.config['out_fd'], self.ready_line)
        self._setup_logging()
        self._setup_stdio()
        LOG.debug('%r: started, parent %r', self, self.parent)
        try:
            if self.on_start is not None:
                self.on_start(self)
            self.dispatcher.run()
        finally:
            self.broker.shutdown()
            self.broker.join()
            self._main_done.set()

    def __repr__(self):
        return 'ExternalContext(%s)' % (self.config.get('context_id'),)


def _child_main_decorator(*args, **kwargs):
    # mitogen.main() in a child: the decorated program runs only in the
    # master, so the decorator leaves the function alone.
    return lambda func: func


def ready_line():
    """The line a child writes once its core runs and every handler is in
    place: ``MITO001 <protocol> <core version> <python version>``."""
    line = 'MITO001 %d %s %d.%d.%d\n' % (
        (PROTOCOL_VERSION, __version__) + tuple(sys.version_info[:3]))
    return line.encode('ascii')


def _bootstrap_main(config_bytes, core_compressed, core_code=b''):
    """Entry point called by the first stage with the parent's config, the
    zlib-compressed core and, if this context runs it, the compiled core as
    the parent sent it (else empty); never returns."""
    config = deserialize(ord(config_bytes[0:1]), config_bytes[1:])
    config = dict((to_text(k), v) for k, v in config.items())
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    config['in_fd'] = in_fd
    config['out_fd'] = out_fd
    econtext = ExternalContext(config)
    econtext.core_compressed = core_compressed
    econtext.core_code = core_code
    econtext.ready_line = ready_line()
    econtext.main()
    os._exit(0)
