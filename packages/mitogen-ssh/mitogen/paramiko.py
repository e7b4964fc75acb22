# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``paramiko`` connection method: a child Python interpreter on another
machine, reached with `Paramiko <https://www.paramiko.org/>`_ instead of the
OpenSSH client. No ``ssh`` program is needed; install the extra with
``pip install mitogen-ssh[paramiko]``.

The master logs in with a ``paramiko.SSHClient``, runs
``<python> -c <first stage>`` in a session channel (the remote login shell
starts the interpreter, as with ``ssh``), and bridges that channel to a local
socket pair with three small threads, so the broker polls an ordinary
descriptor::

    broker <-> socket pair <-> pump threads <-> Channel <-> sshd <-> python

* ``up``: socket -> channel stdin; the end of the socket becomes the end of
  the channel's input, which ends the remote interpreter;
* ``out``: channel stdout -> socket; the end of the channel becomes the end
  of the socket, which disconnects the stream;
* ``err``: channel stderr -> a pipe the router logs, like a local child's
  stderr.

The last pump thread to finish closes the channel and every SSH connection
it used, and waits for Paramiko's transport threads to end: once the
``proc`` object of the :class:`Connection` reports an exit status, nothing of the
connection is left in this process. That object stands in for a local
process (there is none): :meth:`Process.poll` gives the remote exit status,
and the signals the router sends a child that does not leave close the
channel (``SIGTERM``) or the whole SSH connection (``SIGKILL``).

Context names are ``paramiko.<hostname>``, with ``:<port>`` when a port is
given, so they never collide with the ``ssh`` method's ``ssh.<hostname>``.

Jump hosts: with ``via=``, an intermediate context makes the connection; it
receives this module through the importer but needs Paramiko installed
itself. With `jump_host`, the master logs in to the jump host with Paramiko
too and reaches the target through a ``direct-tcpip`` channel, like
``ssh -J``.

This module may run in an intermediate, so it is written for Python 2.7 and
3.6+ (Paramiko 3 itself needs Python 3.6).
"""

# Python 2 would take "import paramiko" for this very module.
from __future__ import absolute_import

__all__ = [
    'Connection', 'HOST_KEY_POLICIES', 'HostKeyError', 'LOST_STATUS',
    'Login', 'Options', 'PasswordError', 'PasswordRefusedError',
    'PasswordRequiredError', 'Process',
]

import errno
import os
import signal
import socket
import threading

import paramiko

import mitogen.core
import mitogen.parent
import mitogen.ssh
from mitogen.core import LOG, now
import mitogen.installation

# This module exists only in this project: refuse to run on upstream
# Mitogen's core, installed over ours.
mitogen.installation.require_this_project()

#: The same class as :class:`mitogen.ssh.HostKeyError`.
HostKeyError = mitogen.ssh.HostKeyError

#: The same class as :class:`mitogen.parent.PasswordError`, base of the two
#: below: catch it for either.
PasswordError = mitogen.parent.PasswordError

#: Raised when no password was given and the server refused every other
#: way of logging in tried; the same class as
#: :class:`mitogen.parent.PasswordRequiredError`.
PasswordRequiredError = mitogen.parent.PasswordRequiredError

#: Raised when the server refuses the password given; the same class as
#: :class:`mitogen.parent.PasswordRefusedError`.
PasswordRefusedError = mitogen.parent.PasswordRefusedError

#: Accepted values of `check_host_keys`.
HOST_KEY_POLICIES = ('enforce', 'accept', 'ignore')

#: Default SSH port.
DEFAULT_PORT = 22

#: Default seconds between keepalive packets.
DEFAULT_KEEPALIVE_INTERVAL = mitogen.ssh.DEFAULT_KEEPALIVE_INTERVAL

#: Bytes moved per read by the pump threads.
CHUNK_SIZE = 256 * 1024

#: Exit status reported when the channel ended without one (the connection
#: was lost), as the OpenSSH client does.
LOST_STATUS = 255


class Login(object):
    """Where and how to log in: one SSH server, the account, how it is
    authenticated and how its host key is checked. :class:`Options` holds
    one for the target and, with `jump_host`, one per jump host; the
    arguments are those of :class:`Options` of the same names."""

    def __init__(self, hostname, username=None, port=None, password=None,
                 identity_file=None, identities_only=True,
                 check_host_keys='enforce', known_hosts_file=None,
                 compression=True, keepalive_enabled=True,
                 keepalive_interval=None, jump_host=None):
        if not hostname:
            raise ValueError('paramiko needs a hostname')
        if check_host_keys not in HOST_KEY_POLICIES:
            raise ValueError('check_host_keys must be one of %s, not %r' % (
                ', '.join(HOST_KEY_POLICIES), check_host_keys))
        self.hostname = mitogen.core.to_native(hostname)
        self.username = username and mitogen.core.to_native(username)
        self.port = int(port) if port else None
        self.password = password
        if isinstance(identity_file, (list, tuple)):
            identity_file = [mitogen.core.to_native(f) for f in identity_file]
        elif identity_file:
            identity_file = mitogen.core.to_native(identity_file)
        self.identity_file = identity_file or None
        self.identities_only = identities_only
        self.check_host_keys = mitogen.core.to_native(check_host_keys)
        self.known_hosts_file = known_hosts_file and \
            mitogen.core.to_native(known_hosts_file)
        self.compression = compression
        self.keepalive_enabled = keepalive_enabled
        self.keepalive_interval = int(keepalive_interval or
                                      DEFAULT_KEEPALIVE_INTERVAL)
        self.jump = None
        if jump_host is not None:
            if not isinstance(jump_host, dict):
                raise TypeError('jump_host must be a dict of login options, '
                                'not %r' % (jump_host,))
            self.jump = Login(**dict((mitogen.core.to_native(k), v)
                                     for k, v in jump_host.items()))

    def __str__(self):
        return '%s%s%s' % (self.username + '@' if self.username else '',
                           self.hostname,
                           ':%d' % self.port if self.port else '')

    def chain(self):
        """The logins to make in order: the outermost jump host first, this
        one last."""
        hops = [self]
        while hops[0].jump is not None:
            hops.insert(0, hops[0].jump)
        return hops


class Options(mitogen.parent.Options):
    """Options of ``router.paramiko()`` (:meth:`mitogen.parent.Router.connect`
    with ``'paramiko'``); every option of :class:`mitogen.parent.Options`
    applies too. `python_path` is the interpreter on the target, default
    ``python``, looked up by the remote login shell. The options shared with
    :class:`mitogen.ssh.Options` mean the same.

    :param str hostname: host to connect to.
    :param str username: account to log in as; default: the local user.
    :param int port: port to connect to, default 22.
    :param str password: password to authenticate with.
    :param identity_file: private key file (or list of files) to
        authenticate with.
    :param bool identities_only: with `identity_file` or `password`, use
        only them: no agent keys, no key files found in ``~/.ssh``.
    :param str check_host_keys: ``'enforce'`` (default): the host's key must
        be in `known_hosts_file` and match (Paramiko's ``RejectPolicy``);
        ``'accept'``: an unknown host's key is appended to
        `known_hosts_file`, a changed key is refused; ``'ignore'``: no
        checking, nothing recorded.
    :param str known_hosts_file: the known hosts file consulted, and written
        by ``'accept'``; default ``~/.ssh/known_hosts`` of the user running
        the connecting process. Only this file is read.
    :param bool compression: compress the connection.
    :param bool keepalive_enabled: send a keepalive packet after
        `keepalive_interval` seconds without traffic.
    :param int keepalive_interval: default 30.
    :param dict jump_host: log in to this host first (a dict of the login
        options above: `hostname`, `username`, `port`, `password`,
        `identity_file`, `identities_only`, `check_host_keys`,
        `known_hosts_file`, `compression`, `keepalive_enabled`,
        `keepalive_interval`, and `jump_host` for one more hop before it),
        and reach `hostname` through it, like ``ssh -J``.
    :param sock: an open socket-like object (such as a Paramiko
        ``paramiko.Channel`` of ``direct-tcpip`` kind) to
        speak SSH over instead of connecting to `hostname`; the connection
        owns it from then on and closes it. Not with `jump_host` nor
        ``via=``.
    """
    #: Interpreter run on the target when `python_path` is not given.
    default_python_path = ['python']

    def __init__(self, hostname, username=None, port=None, password=None,
                 identity_file=None, identities_only=True,
                 check_host_keys='enforce', known_hosts_file=None,
                 compression=True, keepalive_enabled=True,
                 keepalive_interval=None, jump_host=None, sock=None,
                 **kwargs):
        super(Options, self).__init__(**kwargs)
        self.login = Login(
            hostname, username=username, port=port, password=password,
            identity_file=identity_file, identities_only=identities_only,
            check_host_keys=check_host_keys,
            known_hosts_file=known_hosts_file, compression=compression,
            keepalive_enabled=keepalive_enabled,
            keepalive_interval=keepalive_interval, jump_host=jump_host)
        if sock is not None and jump_host is not None:
            raise ValueError('give paramiko either sock or jump_host, not '
                             'both')
        self.sock = sock
        if self.name is None:
            self.name = u'paramiko.' + mitogen.core.to_text(
                self.login.hostname)
            if self.login.port:
                self.name += u':%d' % (self.login.port,)


class _AcceptNewPolicy(paramiko.AutoAddPolicy):
    """``check_host_keys='accept'``: trust an unknown host's key and append
    it to the known hosts file (the file is added to, never rewritten)."""

    def __init__(self, path):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        with open(self.path, 'a') as fp:
            fp.write('%s %s %s\n' % (hostname, key.get_name(),
                                     key.get_base64()))


class _EnforcePolicy(paramiko.RejectPolicy):
    """``check_host_keys='enforce'``: refuse an unknown host, with
    :class:`HostKeyError`."""

    def __init__(self, path):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        raise HostKeyError(
            'SSH host key verification failed for %s '
            "(check_host_keys='enforce'): the host is not in %s (its %s key "
            'is %s)' % (hostname, self.path, key.get_name(),
                        key.get_base64()))


def _host_key_policy(login):
    if login.check_host_keys == 'ignore':
        # Paramiko's base policy accepts silently.
        return paramiko.MissingHostKeyPolicy()
    path = _known_hosts_file(login)
    if login.check_host_keys == 'accept':
        return _AcceptNewPolicy(path)
    return _EnforcePolicy(path)


def _close_clients(clients):
    """Close SSH connections, the innermost first (it runs over a channel
    of the one before), and wait for their transport threads to end:
    ``SSHClient.close()`` does not always wait."""
    transports = [c.get_transport() for c in clients]
    for client in reversed(clients):
        client.close()
    for transport in transports:
        if transport is not None:
            transport.join()


def _known_hosts_file(login):
    return login.known_hosts_file or \
        os.path.expanduser(os.path.join('~', '.ssh', 'known_hosts'))


class Process(object):
    """The remote interpreter as the router sees it, in place of a
    ``subprocess.Popen``: the part it uses (:attr:`pid`,
    :attr:`returncode`, :meth:`poll`, :meth:`wait`, :meth:`send_signal`,
    :meth:`kill`), driving the pump threads and the SSH connections.

    :param list clients: the ``paramiko.SSHClient`` of every
        login, the outermost jump host first.
    :param channel: the session channel running the interpreter.
    :param sock: this side's end of the socket pair.
    :param int err_fd: the write end of the stderr pipe.
    :param str name: names the threads.
    """
    #: There is no local process.
    pid = None

    def __init__(self, clients, channel, sock, err_fd, name):
        #: None while the channel is open; then the remote exit status,
        #: :data:`LOST_STATUS` if there was none, or minus the signal the
        #: router sent to end it.
        self.returncode = None
        #: The ``paramiko.SSHClient`` of every login, the
        #: outermost jump host first: ``clients[-1]`` may open more channels
        #: (SFTP, ...) to the target while the context runs.
        self.clients = clients
        # SSHClient.close() forgets its transport; it is joined after.
        self._transports = [c.get_transport() for c in clients]
        self._channel = channel
        self._sock = sock
        self._err_fd = err_fd
        self._lock = threading.Lock()
        self._signalled = None
        self._closed = False
        self._threads = []
        for suffix, target in (('up', self._pump_up),
                               ('out', self._pump_out),
                               ('err', self._pump_err)):
            thread = threading.Thread(target=self._run, args=(target,),
                                      name='mitogen.paramiko.%s.%s'
                                      % (name, suffix))
            thread.daemon = True
            self._threads.append(thread)
        self._running = len(self._threads)

    def __repr__(self):
        return 'paramiko.Process(%s, returncode=%r)' % (
            self._threads[0].name.rpartition('.')[0], self.returncode)

    def start(self):
        for thread in self._threads:
            thread.start()

    # --- the router's side --------------------------------------------------

    def poll(self):
        """:attr:`returncode` once the channel, the SSH connections and
        every thread serving them are gone, else None."""
        if self.returncode is None:
            return None
        for thread in self._threads + self._transports:
            if thread.is_alive():
                return None
        return self.returncode

    def wait(self):
        """Wait until :meth:`poll` would return the exit status; return
        it."""
        for thread in self._threads + self._transports:
            thread.join()
        return self.returncode

    def send_signal(self, sig):
        """End the connection: ``SIGKILL`` closes the SSH connections at
        once, any other signal closes the channel (the server then closes
        the interpreter's stdin, stdout and stderr)."""
        with self._lock:
            if self._closed:
                return
            if self._signalled is None or sig == signal.SIGKILL:
                self._signalled = sig
            # Wakes the "up" thread, and the "out" thread if it waits for
            # the broker to read.
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except (OSError, socket.error):
                pass
        try:
            self._channel.close()
        except (EOFError, OSError, socket.error):
            # The last pump thread closed the connection meanwhile.
            pass
        if sig == signal.SIGKILL:
            # Not SSHClient.close(): the last pump thread may be running it.
            for transport in reversed(self._transports):
                transport.close()

    def terminate(self):
        """Same as ``send_signal(SIGTERM)``."""
        self.send_signal(signal.SIGTERM)

    def kill(self):
        """Same as ``send_signal(SIGKILL)``."""
        self.send_signal(signal.SIGKILL)

    # --- the pump threads ---------------------------------------------------

    def _run(self, target):
        try:
            target()
        except Exception:
            LOG.exception('%r: pump thread failed', self)
            self._channel.close()
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self._close()

    def _pump_up(self):
        while True:
            try:
                data = self._sock.recv(CHUNK_SIZE)
            except (OSError, socket.error):
                data = b''
            if not data:
                # The broker closed its side: the end of the interpreter's
                # stdin tells it to exit.
                try:
                    self._channel.shutdown_write()
                except (EOFError, OSError, socket.error):
                    pass
                return
            try:
                self._channel.sendall(data)
            except (EOFError, OSError, socket.error):
                return

    def _pump_out(self):
        try:
            while True:
                data = self._channel.recv(CHUNK_SIZE)
                if not data:
                    return
                self._sock.sendall(data)
        except (OSError, socket.error) as e:
            LOG.debug('%r: stdout pump ends: %s', self, e)
        finally:
            # The broker sees the end of the stream and disconnects it; the
            # "up" thread stops reading, as the interpreter has finished.
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except (OSError, socket.error):
                pass

    def _pump_err(self):
        fd = self._err_fd
        while True:
            data = self._channel.recv_stderr(CHUNK_SIZE)
            if not data:
                return
            if fd is None:
                continue
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError as e:
                if e.args[0] != errno.EPIPE:
                    raise
                # Nobody reads it any more: keep draining, discard.
                fd = None

    def _close(self):
        # Runs once, on the last pump thread to finish.
        channel = self._channel
        # The server sends the exit status after the interpreter's output;
        # recv_exit_status() returns as soon as it or the close arrives.
        status = channel.recv_exit_status()
        channel.close()
        _close_clients(self.clients)
        with self._lock:
            self._closed = True
            self._sock.close()
        os.close(self._err_fd)
        if self._signalled is not None and status < 0:
            self.returncode = -self._signalled
        elif status < 0:
            self.returncode = LOST_STATUS
        else:
            self.returncode = status


class Connection(mitogen.parent.Connection):
    """Logs in with Paramiko and runs the first stage in a session
    channel. Its ``proc`` is a :class:`Process`; its ``pid`` is None."""
    options_class = Options
    name_prefix = u'paramiko'

    def get_python_argv(self):
        return [mitogen.core.to_native(arg) for arg in
                self.options.python_path or self.options.default_python_path]

    def get_boot_command(self):
        """The command line the remote login shell runs (a string)."""
        argv = self.get_python_argv() + ['-c',
                                         mitogen.parent.stage1_command()]
        return ' '.join(mitogen.ssh.shell_quote(a) for a in argv)

    def _describe(self):
        return '%s (%s)' % (self.options.name, ' '.join(
            self.get_python_argv()))

    def _timeout_error(self, login, e):
        return mitogen.core.TimeoutError(
            'timed out after %.1f s logging in to %s with paramiko: %s'
            % (self.options.connect_timeout, login, e or 'no answer'))

    def _login(self, login, deadline, sock):
        """Return a connected, authenticated SSHClient for `login`."""
        client = paramiko.SSHClient()
        if login.check_host_keys != 'ignore':
            path = _known_hosts_file(login)
            if os.path.exists(path):
                client.get_host_keys().load(path)
        client.set_missing_host_key_policy(_host_key_policy(login))
        exclusive = login.identities_only and (
            login.identity_file or login.password is not None)
        remaining = max(0.001, deadline - now())
        LOG.debug('%r: logging in to %s', self, login)
        try:
            client.connect(
                login.hostname, port=login.port or DEFAULT_PORT,
                username=login.username, password=login.password,
                key_filename=login.identity_file,
                allow_agent=not exclusive, look_for_keys=not exclusive,
                compress=login.compression, sock=sock, timeout=remaining,
                banner_timeout=remaining, auth_timeout=remaining,
                channel_timeout=remaining)
        except BaseException as e:
            _close_clients([client])
            raise self._login_error(login, e, deadline)
        if login.keepalive_enabled:
            client.get_transport().set_keepalive(login.keepalive_interval)
        return client

    def _login_error(self, login, e, deadline):
        if isinstance(e, mitogen.core.StreamError):
            return e
        if isinstance(e, paramiko.BadHostKeyException):
            return HostKeyError(
                'SSH host key verification failed for %s '
                '(check_host_keys=%r): its key has changed; %s'
                % (login, login.check_host_keys, e))
        if isinstance(e, paramiko.AuthenticationException) or (
                # Raised when no key was found and no password given.
                isinstance(e, paramiko.SSHException) and
                str(e) == 'No authentication methods available'):
            if login.password is None:
                return PasswordRequiredError(
                    'SSH authentication to %s failed and no password was '
                    'specified; paramiko: %s' % (login, e))
            return PasswordRefusedError('SSH password is incorrect for %s; '
                                        'paramiko: %s' % (login, e))
        if isinstance(e, socket.timeout) or now() >= deadline:
            return self._timeout_error(login, e)
        if isinstance(e, (paramiko.SSHException, socket.error, OSError,
                          EOFError)):
            return mitogen.core.StreamError(
                'could not log in to %s with paramiko: %s' % (login, e))
        return e

    def _open(self, deadline):
        """Log in through every hop; return `(clients, channel)` with the
        first stage running in the channel."""
        clients = []
        try:
            sock = self.options.sock
            hops = self.options.login.chain()
            for i, login in enumerate(hops):
                if i:
                    remaining = max(0.001, deadline - now())
                    try:
                        sock = clients[-1].get_transport().open_channel(
                            'direct-tcpip',
                            (login.hostname, login.port or DEFAULT_PORT),
                            ('127.0.0.1', 0), timeout=remaining)
                    except (paramiko.SSHException, socket.error,
                            EOFError) as e:
                        raise mitogen.core.StreamError(
                            'jump host %s could not reach %s: %s'
                            % (hops[i - 1], login, e))
                clients.append(self._login(login, deadline, sock))
            remaining = max(0.001, deadline - now())
            login = hops[-1]
            try:
                channel = clients[-1].get_transport().open_session(
                    timeout=remaining)
                channel.exec_command(self.get_boot_command())
            except (paramiko.SSHException, socket.error, EOFError) as e:
                raise mitogen.core.StreamError(
                    'could not run python on %s with paramiko: %s'
                    % (login, e))
        except BaseException:
            _close_clients(clients)
            raise
        return clients, channel

    def connect(self, context_id, name_hint=None):
        deadline = now() + self.options.connect_timeout
        self.stderr_fd = None
        self.tty_fd = None
        clients, channel = self._open(deadline)
        ours, theirs = socket.socketpair()
        for sock in (ours, theirs):
            mitogen.parent._enlarge_buffers(sock)
        err_r, err_w = os.pipe()
        for fd in (err_r, err_w):
            mitogen.core.set_cloexec(fd)
        self.stderr_fd = err_r
        fd = os.dup(ours.fileno())
        ours.close()
        self.proc = Process(clients, channel, theirs, err_w,
                            self.options.name)
        self.proc.start()
        try:
            return self._handshake(fd, context_id, deadline)
        except BaseException:
            os.close(fd)
            if self.stderr_fd is not None:
                os.close(self.stderr_fd)
                self.stderr_fd = None
            self.proc.kill()
            self.proc.wait()
            raise
