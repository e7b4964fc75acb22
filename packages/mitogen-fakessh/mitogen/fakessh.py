"""
A fake ``ssh`` command, so that programs which shell out to ssh (rsync, scp,
git) reach a context over the existing tree: no new network connection, no
credentials, and it works wherever the tree goes (through sudo, through a
bastion).

:func:`run` starts a local command with a private directory first on its
``PATH``. That directory holds an executable ``ssh``: a small script that
ignores ssh's options and the host name, connects to a UNIX socket of the
process that called :func:`run`, hands it the script's standard input,
output and error file descriptors (``SCM_RIGHTS``) with the remote command
line, and waits for an exit status. That process asks the destination
context to run the command line with the account's login shell (``$SHELL -c
"command"``, in the home directory, as sshd does) and carries the bytes
between the descriptors and the remote process as mitogen messages.

The stream contract, as ssh's:

* stdin, stdout and stderr are carried byte for byte; end of file on the
  local stdin closes the remote stdin, and the remote stdout and stderr
  reaching end of file close the local ones;
* the exit status of the fake ``ssh`` is the remote command's; 255 when
  the remote command was killed by a signal (silently, as OpenSSH does),
  when the destination context disconnects, or when the command cannot be
  started (with a message on stderr).

Flow control: each direction has a window of :data:`WINDOW` bytes sent but
not yet written by the far side. The writer acknowledges every chunk after
writing it, so a slow reader stalls its writer instead of filling memory,
and a full window is never waited for in a round trip per chunk.
Acknowledgements are handled on the broker thread, never behind data that
waits for a blocked write.
"""

__all__ = [
    'CHUNK', 'LOST_STATUS', 'SOCKET_VAR', 'WINDOW', 'parse_ssh_args', 'run',
]

import errno
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading

import mitogen.core

try:
    import pwd
except ImportError:
    pwd = None

#: Environment variable through which the fake ``ssh`` finds the socket of
#: the process that called :func:`run`.
SOCKET_VAR = 'MITOGEN_FAKESSH_SOCKET'

#: Largest piece of a stream read and sent as one message.
CHUNK = 256 * 1024

#: Bytes of one direction that may be in flight, sent but not yet written
#: by the other side.
WINDOW = 4 * 1024 * 1024

#: Pipe capacity requested for the remote command's pipes (Linux), so a
#: read returns up to :data:`CHUNK` bytes instead of 64 KiB.
PIPE_SIZE = 1024 * 1024

#: Exit status of the fake ``ssh`` when the remote side is lost, as ssh
#: reports a lost connection.
LOST_STATUS = 255

# Options of OpenSSH's ssh (9.x) that take an argument.
_ARG_OPTIONS = b'BbcDEeFIiJLlmOoPpQRSWw'

# Where OpenSSH installs its SFTP server, for ``ssh -s host sftp`` (what
# scp uses by default since OpenSSH 9).
_SFTP_SERVERS = (
    '/usr/lib/openssh/sftp-server',
    '/usr/libexec/openssh/sftp-server',
    '/usr/lib/ssh/sftp-server',
    '/usr/libexec/sftp-server',
)

_F_SETPIPE_SZ = 1031

# Message tags: the first byte of every message of a session.
_DATA_IN = b'I'       # master -> remote: stdin bytes; empty: end of file
_DATA_OUT = b'O'      # remote -> master: stdout bytes; empty: end of file
_DATA_ERR = b'E'      # remote -> master: stderr bytes; empty: end of file
_ACK = b'A'           # either way: decimal count of bytes written
_EXIT = b'X'          # remote -> master: decimal exit status
_KILL = b'K'          # master -> remote: kill the command


class _Window(object):
    """Bytes a sender may still put in flight; see the module docstring."""

    def __init__(self, size=WINDOW):
        self._cond = threading.Condition()
        self._free = size
        self.aborted = False

    def take(self, n):
        """Wait until the window is open, then account `n` bytes; False if
        the session was aborted meanwhile."""
        self._cond.acquire()
        try:
            while self._free <= 0 and not self.aborted:
                self._cond.wait()
            self._free -= n
            return not self.aborted
        finally:
            self._cond.release()

    def give(self, n):
        self._cond.acquire()
        try:
            self._free += n
            self._cond.notify_all()
        finally:
            self._cond.release()

    def abort(self):
        self._cond.acquire()
        try:
            self.aborted = True
            self._cond.notify_all()
        finally:
            self._cond.release()


def _retry(func, *args):
    while True:
        try:
            return func(*args)
        except (OSError, IOError, select.error) as e:
            if e.args[0] != errno.EINTR:
                raise


def _write_all(fd, data):
    """Write all of `data` to `fd`, waiting when it is non-blocking."""
    view = memoryview(data)
    while len(view):
        try:
            n = os.write(fd, view)
        except (OSError, IOError) as e:
            if e.args[0] == errno.EINTR:
                continue
            if e.args[0] != errno.EAGAIN:
                raise
            _retry(select.select, [], [fd], [])
            continue
        view = view[n:]


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def _shut_writing(fd):
    """Signal end of file on `fd` and close it; a socket is shut down for
    writing first, since its reader may share it with our other end."""
    try:
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            sock = socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.shutdown(socket.SHUT_WR)
            finally:
                sock.close()
    except (OSError, socket.error):
        pass
    _close(fd)


def _grow_pipe(fd):
    try:
        import fcntl
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, IOError, OSError):
        pass


# ---------------------------------------------------------------------------
# Remote side: runs in the destination context (Python 2.7 and 3.6+).
# ---------------------------------------------------------------------------

def _account():
    """(login shell, home directory) of the account this process runs as."""
    shell = home = None
    if pwd is not None:
        try:
            entry = pwd.getpwuid(os.getuid())
            shell, home = entry.pw_shell, entry.pw_dir
        except KeyError:
            pass
    if not shell:
        shell = '/bin/sh'
    if not home or not os.path.isdir(home):
        home = '/'
    return shell, home


def _prepare_command():
    # In the command's process, before exec: its own session, so that the
    # whole process group can be killed; and death with this context
    # (Linux), since nobody would be left to read its output.
    os.setsid()
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:
        pass
    for name in ('SIGPIPE', 'SIGXFSZ'):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


class _RemoteCommand(object):
    """The command of one fake ``ssh`` session, in the destination
    context."""

    def __init__(self, router, sender, argv):
        self.router = router
        self.sender = sender
        self._lock = threading.Lock()
        self._reaped = False
        self._window = _Window()
        self._stdin = mitogen.core.Latch()
        home = _account()[1]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=home, close_fds=True,
            preexec_fn=_prepare_command,
        )
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            _grow_pipe(f.fileno())
        self.handle = router.add_handler(self._on_message,
                                         policy=self._from_master)
        mitogen.core.listen(router.broker, 'shutdown', self.kill)
        self._threads = [
            threading.Thread(target=self._pump_in,
                             name='mitogen.fakessh.stdin'),
            threading.Thread(target=self._pump_out, args=(
                self.proc.stderr, _DATA_ERR), name='mitogen.fakessh.stderr'),
        ]
        self._threads.append(threading.Thread(
            target=self._pump_out_and_exit, name='mitogen.fakessh.stdout'))
        for t in self._threads:
            t.daemon = True
            t.start()

    def _from_master(self, msg, stream):
        return msg.src_id == self.sender.context.context_id

    def _send(self, data):
        self.sender.context.send(mitogen.core.Message(
            data=data, handle=self.sender.dst_handle))

    def _on_message(self, msg):
        # Broker thread: never blocks.
        if msg.is_dead:
            self.kill()
            return
        data = msg.data
        tag = bytes(data[:1])
        if tag == _ACK:
            self._window.give(int(bytes(data[1:])))
        elif tag == _DATA_IN:
            self._stdin.put(data)
        elif tag == _KILL:
            self.kill()

    def kill(self):
        """Kill the command's process group (if it was not reaped yet) and
        stop the pumps."""
        self._window.abort()
        self._stdin.put(None)
        self._lock.acquire()
        try:
            if not self._reaped:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
        finally:
            self._lock.release()

    def _pump_in(self):
        fd = self.proc.stdin.fileno()
        broken = False
        while True:
            try:
                data = self._stdin.get()
            except mitogen.core.LatchError:
                data = None
            if data is None or len(data) == 1:
                break
            if not broken:
                try:
                    _write_all(fd, memoryview(data)[1:])
                except (OSError, IOError):
                    # The command closed its stdin: discard the rest, as
                    # sshd does, but keep acknowledging.
                    broken = True
            self._send(_ACK + str(len(data) - 1).encode('ascii'))
        self.proc.stdin.close()

    def _pump_out(self, f, tag):
        fd = f.fileno()
        while True:
            data = _retry(os.read, fd, CHUNK)
            if not data:
                break
            if not self._window.take(len(data)):
                break
            self._send(tag + data)
        self._send(tag)
        f.close()

    def _pump_out_and_exit(self):
        self._pump_out(self.proc.stdout, _DATA_OUT)
        self._threads[1].join()
        status = self.proc.wait()
        self._lock.acquire()
        try:
            self._reaped = True
        finally:
            self._lock.release()
        mitogen.core.unlisten(self.router.broker, 'shutdown', self.kill)
        self._stdin.put(None)
        self._threads[0].join()
        # Killed by a signal: ssh exits 255, saying nothing.
        self._send(_EXIT + str(status if status >= 0 else LOST_STATUS)
                   .encode('ascii'))
        self.router.del_handler(self.handle)


def _sftp_server():
    for path in _SFTP_SERVERS:
        if os.access(path, os.X_OK):
            return path
    return None


@mitogen.core.takes_router
def _start(command, subsystem, sender, router):
    """Start `command` (bytes) in this context for the session whose
    master-side handle `sender` addresses; return the handle that receives
    its stdin. With `subsystem`, `command` names an ssh subsystem (only
    ``sftp`` is known)."""
    if subsystem:
        if command.strip() != b'sftp' or _sftp_server() is None:
            raise OSError(errno.ENOENT, 'subsystem request failed on '
                          'channel 0: no such subsystem: %s'
                          % (mitogen.core.to_text(command),))
        argv = [_sftp_server()]
    else:
        argv = [_account()[0], '-c', command]
    return _RemoteCommand(router, sender, argv).handle


# ---------------------------------------------------------------------------
# Local side: the process that called run().
# ---------------------------------------------------------------------------

# The fake ssh. Standalone and quick to start: it imports nothing of
# mitogen. Request: 4-byte length, then the arguments joined by NUL, with
# the stdio fds attached; reply: 4-byte exit status.
_FAKE_SSH = r'''#!%(python)s -S
import os, socket, struct, sys
def main():
    path = os.environ.get(%(var)r)
    if not path:
        sys.stderr.write('ssh (mitogen.fakessh): %(var)s is not set\n')
        return 255
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except socket.error as e:
        sys.stderr.write('ssh (mitogen.fakessh): cannot reach %%s: %%s\n'
                         %% (path, e))
        return 255
    args = b'\0'.join(os.fsencode(a) for a in sys.argv[1:])
    sock.sendmsg([struct.pack('>I', len(args))],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                   struct.pack('3i', 0, 1, 2))])
    sock.sendall(args)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    reply = b''
    while len(reply) < 4:
        data = sock.recv(4 - len(reply))
        if not data:
            sys.stderr.write('ssh (mitogen.fakessh): lost the process '
                             'that ran it\n')
            return 255
        reply += data
    return struct.unpack('>i', reply)[0]
sys.exit(main())
'''


def parse_ssh_args(args):
    """Split the arguments of an ``ssh`` command line (bytes) into
    ``(command, subsystem, stdin_null)``: the remote command line as ssh
    would send it (the words after the host joined by spaces), whether
    ``-s`` asked for a subsystem, and whether ``-n`` asked for stdin from
    ``/dev/null``. Every other option, and the host, is ignored.

    :raises ValueError: when no host or no command is given."""
    subsystem = stdin_null = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == b'--':
            i += 1
            break
        if not arg.startswith(b'-') or arg == b'-':
            break
        j = 1
        while j < len(arg):
            opt = arg[j:j + 1]
            if opt in _ARG_OPTIONS:
                if j + 1 == len(arg):
                    i += 1      # the argument is the next word
                break
            if opt == b's':
                subsystem = True
            elif opt == b'n':
                stdin_null = True
            j += 1
        i += 1
    if i >= len(args):
        raise ValueError('no host given')
    words = args[i + 1:]
    if not words:
        raise ValueError('no remote command given; an interactive login '
                         'is not supported')
    return b' '.join(words), subsystem, stdin_null


class _Session(object):
    """One invocation of the fake ``ssh``, served in the calling
    process."""

    def __init__(self, server, conn):
        self.server = server
        self.dest = server.dest
        self.router = server.router
        self.conn = conn
        self._events = mitogen.core.Latch()
        self._window = _Window()
        self._wake_r, self._wake_w = os.pipe()
        self._fds = []
        self._remote_handle = None
        self._threads = []
        self.thread = threading.Thread(target=self._main,
                                       name='mitogen.fakessh.session')
        self.thread.daemon = True

    # --- request --------------------------------------------------------

    def _recv_exact(self, n):
        data = b''
        while len(data) < n:
            chunk = self.conn.recv(n - len(data))
            if not chunk:
                raise EOFError('the fake ssh went away')
            data += chunk
        return data

    def _read_request(self):
        fd_size = struct.calcsize('3i')
        header, ancdata, _, _ = self.conn.recvmsg(4, socket.CMSG_SPACE(
            fd_size))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(data) - len(data) % struct.calcsize('i')
                self._fds.extend(struct.unpack('%di' % (usable // 4),
                                               data[:usable]))
        if len(header) < 4:
            header += self._recv_exact(4 - len(header))
        if len(self._fds) != 3:
            raise EOFError('the fake ssh sent no stdio')
        size, = struct.unpack('>I', header)
        data = self._recv_exact(size)
        return data.split(b'\0') if data else []

    # --- event loop -----------------------------------------------------

    def _main(self):
        try:
            args = self._read_request()
        except (EOFError, OSError):
            self._finish(None)
            return
        self.stdin_fd, self.stdout_fd, self.stderr_fd = self._fds
        self._fds = []
        try:
            command, subsystem, stdin_null = parse_ssh_args(args)
        except ValueError as e:
            self._finish(self._fail('%s' % (e,)))
            return
        handle = self.router.add_handler(
            self._on_message, respondent=self.dest, policy=self._from_dest)
        try:
            self._remote_handle = self.dest.call(
                _start, command, subsystem,
                mitogen.core.Sender(self.router.myself(), handle))
        except mitogen.core.CallError as e:
            self.router.del_handler(handle)
            self._finish(self._fail('%s: %s' % (e.type_name,
                                                e.remote_message)))
            return
        except mitogen.core.ChannelError as e:
            # Lost before the reply to _start arrived: the command may
            # already run there, as when it is lost later.
            self.router.del_handler(handle)
            self._finish(self._fail(self._lost_text(e)))
            return
        if stdin_null:
            self._send(_DATA_IN)
            self._close_fd('stdin_fd')
        else:
            self._start_thread(self._pump_in, 'mitogen.fakessh.stdin')
        self._start_thread(self._watch_client, 'mitogen.fakessh.client')
        status = self._relay_output()
        self.router.del_handler(handle)
        self._finish(status)

    def _start_thread(self, target, name):
        t = threading.Thread(target=target, name=name)
        t.daemon = True
        t.start()
        self._threads.append(t)

    def _from_dest(self, msg, stream):
        return msg.src_id == self.dest.context_id

    def _on_message(self, msg):
        # Broker thread: acknowledgements are taken at once, everything
        # else is written in order by the session thread.
        if not msg.is_dead and bytes(msg.data[:1]) == _ACK:
            self._window.give(int(bytes(msg.data[1:])))
        else:
            self._events.put(msg)

    def _send(self, data):
        self.dest.send(mitogen.core.Message(data=data,
                                            handle=self._remote_handle))

    def _relay_output(self):
        """Write what the remote command prints until it exits; return
        its exit status."""
        while True:
            msg = self._events.get()
            if msg is None:
                # The fake ssh died or run() is ending: stop the command.
                self._send(_KILL)
                return None
            if msg.is_dead:
                self._fail(self._lost_text(mitogen.core.to_text(msg.data)))
                return LOST_STATUS
            data = msg.data
            tag = bytes(data[:1])
            if tag == _EXIT:
                return int(bytes(data[1:]))
            attr = 'stdout_fd' if tag == _DATA_OUT else 'stderr_fd'
            if len(data) == 1:
                fd = getattr(self, attr)
                setattr(self, attr, None)
                if fd is not None:
                    _shut_writing(fd)
                continue
            fd = getattr(self, attr)
            if fd is not None:
                try:
                    _write_all(fd, memoryview(data)[1:])
                except OSError:
                    # Nobody reads any more; like ssh, keep consuming.
                    setattr(self, attr, None)
                    _close(fd)
            self._send(_ACK + str(len(data) - 1).encode('ascii'))

    def _pump_in(self):
        fd = self.stdin_fd
        while True:
            try:
                ready, _, _ = _retry(select.select,
                                     [fd, self._wake_r], [], [])
                if self._wake_r in ready:
                    return
                data = _retry(os.read, fd, CHUNK)
            except OSError as e:
                if e.args[0] == errno.EAGAIN:
                    continue
                data = b''
            if not data:
                self._send(_DATA_IN)
                return
            if not self._window.take(len(data)):
                return
            self._send(_DATA_IN + data)

    def _watch_client(self):
        # The fake ssh sends nothing more: end of file means it died.
        try:
            ready, _, _ = _retry(select.select,
                                 [self.conn, self._wake_r], [], [])
            if self.conn in ready and not self.conn.recv(1):
                self._events.put(None)
        except (OSError, socket.error):
            self._events.put(None)

    def _lost_text(self, reason):
        return 'the connection to context %s was lost: %s' % (
            self.dest.name or self.dest.context_id, reason)

    def _fail(self, text):
        fd = getattr(self, 'stderr_fd', None)
        if fd is not None:
            try:
                _write_all(fd, ('ssh (mitogen.fakessh): %s\n' % (text,))
                           .encode('utf-8', 'replace'))
            except OSError:
                pass
        return LOST_STATUS

    def _close_fd(self, attr):
        fd = getattr(self, attr, None)
        setattr(self, attr, None)
        if fd is not None:
            _close(fd)

    def _finish(self, status):
        self._window.abort()
        os.write(self._wake_w, b'x')
        for t in self._threads:
            t.join()
        for attr in ('stdin_fd', 'stdout_fd', 'stderr_fd'):
            self._close_fd(attr)
        for fd in self._fds:
            _close(fd)
        if status is not None:
            try:
                self.conn.sendall(struct.pack('>i', status))
            except (OSError, socket.error):
                pass
        self.conn.close()
        _close(self._wake_r)
        _close(self._wake_w)

    def abort(self):
        """Stop the session: the fake ssh exits 255 once it ends."""
        self._events.put(None)


class _Server(object):
    """The private directory with the fake ``ssh``, and the socket it
    connects to."""

    def __init__(self, dest, router):
        import tempfile
        self.dest = dest
        self.router = router
        self.sessions = []
        self.dir = tempfile.mkdtemp(prefix='mitogen-fakessh-')
        self.path = os.path.join(self.dir, 'sock')
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        os.chmod(self.path, 0o600)
        self.listener.listen(64)
        script = os.path.join(self.dir, 'ssh')
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with os.fdopen(fd, 'w') as f:
            f.write(_FAKE_SSH % {'python': sys.executable,
                                 'var': SOCKET_VAR})
        self._wake_r, self._wake_w = os.pipe()
        self.thread = threading.Thread(target=self._accept,
                                       name='mitogen.fakessh.accept')
        self.thread.daemon = True
        self.thread.start()

    def environ(self, base):
        env = dict(base)
        env['PATH'] = self.dir + os.pathsep + env.get('PATH', os.defpath)
        env[SOCKET_VAR] = self.path
        return env

    def _accept(self):
        while True:
            ready, _, _ = _retry(select.select,
                                 [self.listener, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                conn, _ = self.listener.accept()
            except (OSError, socket.error):
                continue
            session = _Session(self, conn)
            self.sessions.append(session)
            session.thread.start()

    def close(self):
        import shutil
        os.write(self._wake_w, b'x')
        self.thread.join()
        for session in self.sessions:
            session.abort()
        for session in self.sessions:
            session.thread.join()
        self.listener.close()
        _close(self._wake_r)
        _close(self._wake_w)
        shutil.rmtree(self.dir, ignore_errors=True)


def run(dest, router, args, deadline=None, econtext=None):
    """Run the local command `args` with a fake ``ssh`` first on its
    ``PATH``: whatever the command runs through ``ssh [options] host
    command...`` runs in `dest` instead, over `router`'s existing
    connection, with stdin, stdout, stderr and exit status carried as ssh
    carries them.

    :param mitogen.core.Context dest: the context the remote commands run
        in (as the account it runs as, from its home directory).
    :param mitogen.core.Router router: the router of this process.
    :param list args: argument vector of the local command, such as
        ``['rsync', '-a', '-e', 'ssh', 'src/', 'x:dst/']`` (the host name is
        ignored).
    :param float deadline: a ``time.time()`` value: if the command still
        runs then, it is killed and :class:`mitogen.core.TimeoutError` is
        raised.
    :param econtext: accepted for compatibility with Mitogen; unused.
    :returns: the local command's exit status (negative: killed by that
        signal), as ``subprocess.Popen.returncode``.
    :raises TypeError: if `dest` is not a :class:`mitogen.core.Context`.
    """
    import time
    if not isinstance(dest, mitogen.core.Context):
        raise TypeError('mitogen.fakessh.run(): dest must be a '
                        'mitogen.core.Context, not %r' % (dest,))
    if router is None:
        router = dest.router
    if not hasattr(socket.socket, 'sendmsg'):
        raise mitogen.core.Error('mitogen.fakessh.run() needs Python 3 '
                                 'where it is called (fd passing)')
    server = _Server(dest, router)
    try:
        proc = subprocess.Popen(args, env=server.environ(os.environ),
                                close_fds=True)
        timeout = None
        if deadline is not None:
            timeout = max(0.0, deadline - time.time())
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise mitogen.core.TimeoutError(
                'mitogen.fakessh.run(): %r still ran at the deadline; '
                'killed' % (args,))
    finally:
        server.close()
    return proc.returncode
