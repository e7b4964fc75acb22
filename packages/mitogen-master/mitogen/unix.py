# Copyright the mitogen contributors. BSD-3-Clause.
"""
Attaching other local programs to a running tree through a UNIX socket.

A :class:`Listener` accepts connections on a UNIX socket, on the broker of
the context that owns it (usually the master). Each accepted program
becomes a new context of the tree, a child of the listener's context: it
gets a context ID and the listener's ``parent_ids`` chain, and may call
into every context of the tree that trusts the listener's context::

    # In the running program (here the master):
    listener = mitogen.unix.Listener.build_stream(router)
    print(listener.protocol.path)

    # In another program run by the same user:
    router, parent = mitogen.unix.connect(path)
    parent.call(os.getpid)

Security: the socket file is created with mode 0600, and the listener
checks the credentials of every peer with ``SO_PEERCRED``: a program
running under any other user ID is disconnected at once. An accepted
program acts with the authority of the listener's context: the listener
stamps its own context ID as the ``auth_id`` of every message the client
sends, so a client can never claim the authority of another context.

This module runs in children too (Python 2.7 and 3.6+); :func:`connect`
needs :mod:`mitogen.master`, so it runs in master-side programs only.
"""

from __future__ import absolute_import

__all__ = [
    'ClientProtocol', 'ConnectError', 'HANDSHAKE_TIMEOUT', 'Listener',
    'ListenerStream', 'connect', 'is_path_dead', 'make_socket_path',
    'peer_credentials',
]

import errno
import os
import socket
import stat
import struct
import sys
import tempfile
import threading

import mitogen
import mitogen.core
from mitogen.core import LOG

#: Seconds :func:`connect` waits for the listener's handshake.
HANDSHAKE_TIMEOUT = 30.0

# The handshake is one small message; anything larger is not a listener.
_MAX_HANDSHAKE_SIZE = 65536

# struct ucred of Linux: pid, uid, gid. Python 2 lacks the constant, whose
# value is 17 on the common architectures; on another architecture a wrong
# option returns data of another size, and the client is refused.
_SO_PEERCRED = getattr(socket, 'SO_PEERCRED', None)
if _SO_PEERCRED is None and sys.platform.startswith('linux'):
    _SO_PEERCRED = 17
_ucred = struct.Struct('3i')


class ConnectError(mitogen.core.StreamError):
    """Raised by :func:`connect` when it cannot reach a listener at the path:
    nothing listens there (no file, or a socket its program left behind),
    the path cannot be used, or the listener refused this program."""


def make_socket_path():
    """Return a new path for a listening socket in the temporary directory.

    Nothing is created: :class:`Listener` refuses to replace a live socket,
    so a name taken by someone else in between makes it fail, not share.
    """
    return tempfile.mktemp(prefix='mitogen_unix_', suffix='.sock')


def is_path_dead(path):
    """Return True when nothing listens on the UNIX socket `path`: the file
    is missing, or no process accepts connections on it any more (a socket
    file left behind by a program that died)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            s.connect(path)
        except socket.error as e:
            return e.args[0] in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        s.close()
    return False


def peer_credentials(sock):
    """Return `(pid, uid, gid)` of the process at the other end of the
    connected UNIX socket `sock`.

    :raises mitogen.core.Error: when this platform offers no way to ask."""
    if _SO_PEERCRED is None:
        raise mitogen.core.Error('peer credentials are not available on %s'
                                 % (sys.platform,))
    data = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _ucred.size)
    if len(data) != _ucred.size:
        raise mitogen.core.Error('unexpected SO_PEERCRED reply of %d bytes'
                                 % (len(data),))
    return _ucred.unpack(data)


def _unlink_stale(path):
    # Replace a socket file nobody listens on any more, and nothing else:
    # a regular file or a live socket at `path` makes bind fail below.
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISSOCK(st.st_mode) and is_path_dead(path):
        LOG.debug('mitogen.unix: removing stale socket %r', path)
        try:
            os.unlink(path)
        except OSError:
            pass


def _bind_private(path, backlog):
    """Return a listening socket at `path` whose file has mode 0600 from the
    moment it appears there.

    bind() creates the file with the mode the umask allows, and the umask is
    shared by every thread of the process, so the socket is bound inside a
    fresh directory only we can enter, restricted there, and only then
    hard-linked to `path`; link() never replaces an existing file."""
    path = os.path.abspath(path)
    _unlink_stale(path)
    private = tempfile.mkdtemp(prefix='.mu', dir=os.path.dirname(path))
    tmp_path = os.path.join(private, 's')
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(tmp_path)
            os.chmod(tmp_path, stat.S_IRUSR | stat.S_IWUSR)
            os.link(tmp_path, path)
            sock.listen(backlog)
        except Exception:
            sock.close()
            raise
    finally:
        try:
            os.unlink(tmp_path)
        except OSError:
            pass
        os.rmdir(private)
    return sock


class ListenerStream(mitogen.core.Stream):
    """The stream of a :class:`Listener`: its receive side is the listening
    socket, and readiness means a connection is waiting to be accepted."""

    def on_receive(self, broker):
        try:
            sock, _ = self.protocol.sock.accept()
        except socket.error as e:
            if e.args[0] in (errno.EAGAIN, errno.EWOULDBLOCK,
                             errno.ECONNABORTED, errno.EINTR):
                return
            raise
        self.protocol.on_accept_client(sock)


class ClientProtocol(mitogen.core.MitogenProtocol):
    """The listener's side of an accepted client: a
    :class:`~mitogen.core.MitogenProtocol` that stamps the listener's own
    context ID as the ``auth_id`` of everything the client sends.

    A client is not a child the broker can ask to shut down: when the
    listener's broker shuts down, the connection simply ends, and the
    client's broker shuts down in turn as its parent is gone."""

    def on_shutdown(self, broker):
        self.stream.on_disconnect(broker)


class Listener(mitogen.core.Protocol):
    """Accepts programs of the same user on a UNIX socket and attaches each
    as a new context of the tree, child of the context owning `router`.

    Constructing it creates the socket (mode 0600) and starts accepting on
    the router's broker at once. The broker's shutdown, or the stream's
    disconnection, closes the socket and removes the file.

    :param router: router of this context; in a child, a router that can
        allocate context IDs (the one ``mitogen.parent.upgrade_router()``
        returns).
    :param str path: where to create the socket; :func:`make_socket_path`
        when None. A socket file nobody listens on any more is replaced.
    :param int backlog: connections the kernel queues before accepting.
    """

    def __init__(self, router, path=None, backlog=100):
        if not callable(getattr(router, 'allocate_id', None)):
            raise mitogen.core.Error(
                '%r cannot allocate context IDs; in a child context, pass '
                'the router returned by mitogen.parent.upgrade_router()'
                % (router,))
        self._router = router
        #: Path of the socket file.
        self.path = os.path.abspath(path or make_socket_path())
        #: The listening socket.
        self.sock = _bind_private(self.path, backlog)
        st = os.lstat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self._closed = False
        stream = ListenerStream(self, name=u'unix_listener.%d' % (
            os.getpid(),))
        # The stream polls a duplicate it owns; the socket object accepts
        # through, and closes, its own descriptor.
        fd = os.dup(self.sock.fileno())
        stream.accept(fd, fd)
        stream.receive_side.keep_alive = False
        router.broker.start_receive(stream)
        LOG.debug('%r: listening', self)

    @classmethod
    def build_stream(cls, router, path=None, backlog=100):
        """Create a listener (see :class:`Listener`) and return its stream;
        ``stream.protocol`` is the listener."""
        return cls(router, path, backlog).stream

    def __repr__(self):
        return 'mitogen.unix.Listener(%r)' % (self.path,)

    def on_shutdown(self, broker):
        self.stream.on_disconnect(broker)

    def on_disconnect(self, broker):
        self._close()

    def _close(self):
        if self._closed:
            return
        self._closed = True
        self.sock.close()
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        # Remove the file only if it is still ours: someone may have
        # replaced it with their own socket in the meantime.
        if (st.st_dev, st.st_ino) == self._identity:
            os.unlink(self.path)
        LOG.debug('%r: closed', self)

    def on_accept_client(self, sock):
        """Check the credentials of the accepted socket `sock` and attach
        the client, or close it at once."""
        try:
            pid, uid, _ = peer_credentials(sock)
        except Exception as e:
            LOG.warning('%r: refused a client whose credentials cannot be '
                        'read: %s', self, e)
            sock.close()
            return
        if uid != os.getuid():
            LOG.warning('%r: refused pid %d: it runs as uid %d, this '
                        'listener accepts only uid %d', self, pid, uid,
                        os.getuid())
            sock.close()
            return
        if mitogen.is_master:
            self._attach(sock, pid, self._router.allocate_id())
            return
        # A child asks the master for IDs, which blocks: not on the broker.
        t = threading.Thread(target=self._allocate_and_attach,
                             args=(sock, pid), name='mitogen.unix.accept')
        t.daemon = True
        t.start()

    def _allocate_and_attach(self, sock, pid):
        try:
            context_id = self._router.allocate_id()
        except Exception as e:
            LOG.error('%r: cannot allocate an ID for pid %d: %s', self, pid,
                      e)
            sock.close()
            return
        try:
            self._router.broker.defer(self._attach, sock, pid, context_id)
        except mitogen.core.Error:
            sock.close()

    def _attach(self, sock, pid, context_id):
        router = self._router
        if self._closed:
            sock.close()
            return
        name = u'unix_client.%d' % (pid,)
        fd = os.dup(sock.fileno())
        sock.close()
        stream = mitogen.core.Stream(
            ClientProtocol(router, context_id, auth_id=router.context_id),
            name=name)
        stream.accept(fd, fd)
        parent_ids = [router.context_id] + list(router.parent_ids)
        stream.protocol.send(mitogen.core.Message.pickled(
            {
                'context_id': context_id,
                'parent_ids': parent_ids,
                'parent_name': router.myself().name,
            },
            dst_id=context_id, handle=0,
        ))
        context = router.context_by_id(context_id, name=name)
        mitogen.core.listen(stream, 'disconnect',
                            lambda: router.propagate_del_route(context_id))
        router.register(context, stream)
        router.propagate_route(context_id, name)
        LOG.debug('%r: attached %r (pid %d)', self, context, pid)


def _recv_exact(sock, n, path):
    chunks = []
    while n:
        try:
            chunk = sock.recv(n)
        except socket.timeout:
            raise mitogen.core.TimeoutError(
                'no handshake from the listener at %s within %.1f seconds'
                % (path, HANDSHAKE_TIMEOUT))
        if not chunk:
            raise ConnectError(
                'the listener at %s closed the connection before its '
                'handshake: it accepts only programs running as its own '
                'user' % (path,))
        chunks.append(chunk)
        n -= len(chunk)
    return b''.join(chunks)


def _read_handshake(sock, path):
    header = _recv_exact(sock, mitogen.core.HEADER_LEN, path)
    length = struct.unpack(mitogen.core.HEADER_FMT, header)[-1]
    decoder = mitogen.core.FrameDecoder(_MAX_HANDSHAKE_SIZE)
    try:
        decoder.feed(header)
        msg = decoder.next_message()
        if msg is None:
            decoder.feed(_recv_exact(sock, length, path))
            msg = decoder.next_message()
        # A listener on Python 2 sends its keys as byte strings.
        info = dict((mitogen.core.to_text(k), v)
                    for k, v in msg.unpickle().items())
        context_id = int(info['context_id'])
        parent_ids = [int(i) for i in info['parent_ids']]
        parent_name = info['parent_name']
        if parent_name is not None:
            parent_name = mitogen.core.to_text(parent_name)
    except (mitogen.core.StreamError, AttributeError, KeyError, TypeError,
            ValueError):
        raise mitogen.core.StreamError(
            'unintelligible handshake from the listener at %s: %s'
            % (path, sys.exc_info()[1]))
    if not parent_ids or msg.dst_id != context_id:
        raise mitogen.core.StreamError(
            'unintelligible handshake from the listener at %s' % (path,))
    return context_id, parent_ids, parent_name


def connect(path, broker=None):
    """Attach this program to the tree of the listener at `path`, and
    return `(router, parent)`: a new :class:`mitogen.master.Router` and
    the :class:`mitogen.parent.Context` of the listener's context.

    This process becomes a context of that tree: :data:`mitogen.context_id`
    is the ID the listener allocated, :data:`mitogen.parent_ids` its chain
    of ancestors, and :data:`mitogen.is_master` is False, so contexts this
    program starts itself get IDs from the tree's master. Connect once per
    process, before starting any child of its own.

    Calls go to `parent`, or to any context of the tree whose ID is known,
    for instance from a :class:`~mitogen.core.Context` a function returned::

        router, parent = mitogen.unix.connect(path)
        child = parent.call(get_worker)
        print(child.call(os.getpid))

    :param str path: the listener's socket.
    :param mitogen.core.Broker broker: broker for the new router; a new
        :class:`mitogen.master.Broker` when None.
    :raises ConnectError: when nothing listens at `path`, or the listener
        refuses this program (another user).
    :raises mitogen.core.StreamError: when the peer does not answer as a
        listener does.
    :raises mitogen.core.TimeoutError: when no handshake arrives within
        :data:`HANDSHAKE_TIMEOUT` seconds.
    """
    import mitogen.master
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        try:
            sock.connect(path)
        except (socket.error, OSError) as e:
            raise ConnectError('could not connect to the listener at %s: %s'
                               % (path, e))
        context_id, parent_ids, parent_name = _read_handshake(sock, path)
        fd = os.dup(sock.fileno())
    finally:
        sock.close()
    mitogen.context_id = context_id
    mitogen.parent_id = parent_ids[0]
    mitogen.parent_ids = parent_ids
    mitogen.is_master = False
    try:
        router = mitogen.master.Router(broker)
    except Exception:
        os.close(fd)
        raise
    parent = router.context_by_id(parent_ids[0], name=parent_name)
    stream = mitogen.core.Stream(
        mitogen.core.MitogenProtocol(router, parent_ids[0]),
        name=u'unix_listener.%s' % (path,))
    stream.protocol.is_privileged = True
    stream.accept(fd, fd)
    router.parent_stream = stream
    router.register(parent, stream)
    LOG.debug('mitogen.unix: connected to %r as context %d', parent,
              context_id)
    return router, parent
