# Copyright the mitogen contributors. BSD-3-Clause.
"""
What every parent needs, in the master and in children that start children
of their own: the bootstrap that turns a bare Python interpreter into a
context, the :class:`Connection` base that connection methods build on,
:class:`Context` with function calls, :class:`CallChain`, and a
:class:`Router` that can start children.

Its sections, in order, each using only those before it:

1. Constants and the exceptions of starting a child.
2. The bootstrap: the core a child receives, the first stage
   (:data:`STAGE1`), the package listing sent in the config.
3. Processes: :func:`spawn`, :func:`popen`, waiting for an exit.
4. Function calls: naming a function for another process,
   :class:`CallSpec`, :class:`CallChain`, :class:`Context`.
5. Connections: :class:`Options`, :class:`Connection` and its handshake,
   the core version checks.
6. The registry of connection methods (``mitogen.transports`` entry
   points) and the ``router.<method>()`` functions made from it.
7. Module forwarding from a context that started children
   (:class:`ModuleForwarder`).
8. Reaping child processes (:class:`Reaper`).
9. The :class:`Router`: starting children directly or through another
   context, ID allocation (:class:`IdAllocator`), upgrading a child's
   router, the functions an intermediate context runs for proxying and
   the errors rebuilt after it (:func:`register_proxy_error`).

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

# Python 2 would take "import select" for mitogen.select, a sibling module.
from __future__ import absolute_import

__all__ = [
    'CORE_ZLIB_LEVEL', 'CallChain', 'CallSpec', 'Connection', 'Context',
    'CoreVersionError', 'EofError', 'ID_BLOCK_SIZE', 'IdAllocator', 'ModuleForwarder',
    'Options', 'POLLER_LIGHTWEIGHT', 'PasswordError',
    'PasswordRefusedError', 'PasswordRequiredError', 'Reaper', 'Router',
    'STAGE1', 'SUPPORTED_CORE_PROTOCOLS', 'TRANSPORT_DISTRIBUTIONS',
    'TransportUnavailable', 'get_core_code',
    'get_core_compressed', 'get_core_source', 'interpreter_tag',
    'popen', 'register_proxy_error', 'resolve_transport',
    'returncode_to_str', 'shell_quote', 'spawn', 'stage1_command',
    'transport_names', 'upgrade_router',
]

import binascii
import errno
import fcntl
import itertools
import logging
import marshal
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import types
import zlib

import mitogen
import mitogen.core
from mitogen.core import LOG, now, to_text

# Type comments (PEP 484) describe the public API for type checkers and
# IDEs: annotations are syntax a 2.7 child cannot compile.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, TypeVar  # noqa: F401 (type comments)
    _RouterT = TypeVar('_RouterT', bound='Router')


# ---------------------------------------------------------------------------
# 1. Constants and exceptions
# ---------------------------------------------------------------------------

#: Seconds by which a child's shutdown deadline precedes its parent's.
SHUTDOWN_MARGIN = 1.5

#: Core protocol versions this parent can drive, inclusive.
SUPPORTED_CORE_PROTOCOLS = (1, 1)

#: Seconds a connection may take by default, from start to ready.
DEFAULT_CONNECT_TIMEOUT = 30.0

#: A poller class cheaper to set up than epoll, for brokers that watch few
#: descriptors: :class:`mitogen.core.Poller` (``poll()``) where the platform
#: has ``poll()``, else :class:`mitogen.core.EpollPoller`. Use it as the
#: ``poller_class`` of a :class:`mitogen.core.Broker` subclass, or pass it
#: to the broker.
POLLER_LIGHTWEIGHT = (mitogen.core.Poller if mitogen.core.Poller.SUPPORTED
                      else mitogen.core.EpollPoller)


class EofError(mitogen.core.StreamError):
    """The child closed its output before the connection was ready. The
    message carries the last output received."""


class PasswordError(mitogen.core.StreamError):
    """A login program (ssh, sudo, su, ...) asked for a password and none
    was given, or it refused the one given. What is raised is one of its
    two subclasses, :class:`PasswordRequiredError` or
    :class:`PasswordRefusedError`; catch this class for either."""


class PasswordRequiredError(PasswordError):
    """No password was given and the login needs one: the program asked
    for it, or (ssh, paramiko) the server refused every other way of
    logging in."""


class PasswordRefusedError(PasswordError):
    """The password given was refused."""


class CoreVersionError(mitogen.core.StreamError):
    """The core a child runs speaks a protocol this parent does not
    support."""


# ---------------------------------------------------------------------------
# 2. The bootstrap: the core, the first stage, the config
# ---------------------------------------------------------------------------

def get_core_source():
    """Return the source of the installed core (bytes), as the master
    ships it to children."""
    return _installed_core()[0]


def get_core_compressed():
    """Return the zlib-compressed core a new child receives at boot. In a
    child this is the core it was started with
    (:attr:`mitogen.core.Importer.core_compressed`), so every generation runs
    the master's core; in the master, the installed core, compressed once."""
    if not mitogen.is_master:
        importer = _find_importer()
        if importer is not None and importer.core_compressed is not None:
            return importer.core_compressed
    return _installed_core()[1]


_core_lock = threading.Lock()
_core_data = []


def _installed_core():
    # [source, compressed source], read and compressed on first use.
    with _core_lock:
        if not _core_data:
            path = mitogen.core.__file__
            if path.endswith(('.pyc', '.pyo')):
                path = path[:-1]
            with open(path, 'rb') as fp:
                src = fp.read()
            _core_data.append(src)
            _core_data.append(zlib.compress(src, CORE_ZLIB_LEVEL))
        return _core_data


#: zlib level of the core a child receives (source and compiled): level 9
#: takes three times as long as level 5 for 1 % fewer bytes.
CORE_ZLIB_LEVEL = 5


def interpreter_tag():
    """Return what names this interpreter for compiled code, as the first
    stage announces it after ``MITO000``: the implementation's cache tag,
    the exact version and the optimisation level (``cpython-311 30b04f0
    0``), as bytes; empty on Python 2, which ships no such tag. Code
    marshalled by one interpreter is only loaded by another with the same
    tag."""
    impl = getattr(sys, 'implementation', None)
    if impl is None:
        return b''
    return ('%s %x %d' % (impl.cache_tag, sys.hexversion,
                          sys.flags.optimize)).encode('ascii')


def get_core_code(tag):
    """Return the compiled core for a child whose interpreter announced
    `tag`, as the first stage expects it (the tag, a newline, the
    zlib-compressed marshalled code), or ``b''`` if this context has none
    for that interpreter, in which case the child compiles the source.

    A child forwards the compiled core it was started with, never compiling
    one itself; the master (and a forked child) ships its core compiled for
    its own interpreter: read from the core's ``.pyc`` when that is current,
    else compiled once by a short-lived process of the same interpreter."""
    if not tag:
        return b''
    importer = None if mitogen.is_master else _find_importer()
    received = importer.core_code if importer is not None else b''
    if received:
        return received if received.startswith(tag + b'\n') else b''
    if tag != interpreter_tag():
        return b''
    return _own_core_code()


_core_code_data = []


def _core_from_file():
    # Whether this process imported its core from a file (the master, a
    # forked child), as opposed to receiving it through its stdin.
    spec = getattr(mitogen.core, '__spec__', None)
    return spec is not None and bool(getattr(spec, 'has_location', False))


def _own_core_code():
    if not _core_from_file():
        # A child whose core came through its stdin: nothing to read.
        return b''
    source = _installed_core()[0]
    with _core_lock:
        if not _core_code_data:
            _core_code_data.append(_load_own_core_code(source))
        return _core_code_data[0]


def _load_own_core_code(source):
    # The core of this process, loaded from a file (the master, a forked
    # child), compiled for this interpreter: from its .pyc when that is
    # current, else by a short-lived interpreter of our own version, so that
    # the compiler's peak memory never stays in this process. Empty where
    # neither works or code objects cannot be renamed (Python before 3.8).
    if not hasattr(types.CodeType, 'replace'):
        return b''
    code = _code_from_pyc(mitogen.core.__spec__.origin)
    if code is not None:
        data = marshal.dumps(_renamed(code, _CORE_FILENAME))
    else:
        data = _compile_elsewhere(source)
    if not data:
        return b''
    return interpreter_tag() + b'\n' + zlib.compress(data, CORE_ZLIB_LEVEL)


# The name of the core's file in a child, which tracebacks show.
_CORE_FILENAME = 'master:mitogen/core.py'


def _code_from_pyc(path):
    # The code in the timestamp-checked .pyc of `path`, or None when there
    # is none or it is out of date (what the import system checks).
    import importlib.util
    try:
        with open(importlib.util.cache_from_source(path), 'rb') as fp:
            data = fp.read()
        st = os.stat(path)
    except (OSError, NotImplementedError, ValueError):
        return None
    stamp = struct.pack('<4sIII', importlib.util.MAGIC_NUMBER, 0,
                        int(st.st_mtime) & 0xFFFFFFFF,
                        st.st_size & 0xFFFFFFFF)
    if data[:16] != stamp:
        return None
    return marshal.loads(data[16:])


#: Run by :func:`_compile_elsewhere`: compile the source on stdin as the
#: first stage would and write this interpreter's tag and the marshalled code.
_COMPILE_PROGRAM = (
    "import marshal,sys;v=sys.implementation;"
    "t=('%%s %%x %%d'%%(v.cache_tag,sys.hexversion,sys.flags.optimize));"
    "o=compile(sys.stdin.buffer.read(),%r,'exec');"
    "sys.stdout.buffer.write(t.encode('ascii')+b'\\n'+marshal.dumps(o))"
    % (_CORE_FILENAME,))


def _compile_elsewhere(source):
    # Marshalled code of `source` compiled by a new process of this
    # interpreter, or b'' if it failed or turned out to be another
    # interpreter (sys.executable of an embedding program).
    argv = [sys.executable, '-I', '-S'] + (
        ['-' + 'O' * sys.flags.optimize] if sys.flags.optimize else []) + [
        '-c', _COMPILE_PROGRAM]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        try:
            out, _ = proc.communicate(source, timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return b''
    except OSError:
        return b''
    tag, _, data = out.partition(b'\n')
    if proc.returncode != 0 or tag != interpreter_tag():
        return b''
    return data


def _renamed(code, filename):
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType)
                   else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _find_importer():
    for finder in sys.meta_path:
        if isinstance(finder, mitogen.core.Importer):
            return finder
    return None


#: First stage of the bootstrap, run by ``python -c``: announce readiness
#: with the tag of this interpreter (:func:`interpreter_tag`), read the
#: compressed core, the compiled core (or nothing) and the config from
#: stdin, load the core as ``mitogen.core`` and hand over to it. The
#: compiled core runs only if its tag is this interpreter's; otherwise the
#: source is compiled. It is kept tiny and valid on every supported Python.
STAGE1 = r"""import os,sys,types,zlib
def R(n):
 b=b''
 while len(b)<n:
  c=os.read(0,n-len(b))
  if not c:raise SystemExit('mitogen: end of file while reading the core')
  b+=c
 return b
v=getattr(sys,'implementation',None)
t=v and('%s %x %d'%(v.cache_tag,sys.hexversion,sys.flags.optimize)).encode('ascii')or b''
os.write(1,b'MITO000 '+t+b'\n')
z=R(int(R(10)))
k=R(int(R(10)))
c=R(int(R(10)))
p=types.ModuleType('mitogen');p.__path__=[];p.__package__='mitogen'
sys.modules['mitogen']=p
m=types.ModuleType('mitogen.core');m.__file__='master:mitogen/core.py'
m.__package__='mitogen';sys.modules['mitogen.core']=m;p.core=m
if t and k.startswith(t+b'\n'):o=__import__('marshal').loads(zlib.decompress(k[len(t)+1:]))
else:o=compile(zlib.decompress(z),m.__file__,'exec');k=b''
exec(o,m.__dict__)
m._bootstrap_main(c,z,k)
"""


def stage1_command():
    """Return the ``-c`` argument that runs :data:`STAGE1`, encoded so that
    it survives any shell quoting."""
    encoded = binascii.b2a_base64(zlib.compress(STAGE1.encode('ascii'), 9))
    return ("import binascii,zlib;"
            "exec(zlib.decompress(binascii.a2b_base64('%s')))"
            % (encoded.decode('ascii').strip(),))


def _mitogen_pkg_present():
    """Names of every module of the ``mitogen`` package on this side,
    computed from the package directories."""
    names = set()
    for path in getattr(mitogen, '__path__', ()):
        try:
            entries = os.listdir(path)
        except OSError:
            continue
        for entry in entries:
            if entry.endswith('.py') and entry != '__init__.py':
                names.add('mitogen.' + entry[:-3])
            elif os.path.isfile(os.path.join(path, entry, '__init__.py')):
                names.add('mitogen.' + entry)
    if not names:
        importer = _find_importer()
        if importer is not None:
            names.update(importer.package_contents('mitogen') or ())
    return sorted(names)


# ---------------------------------------------------------------------------
# 3. Processes
# ---------------------------------------------------------------------------

#: Socket buffer size asked for on local connections. Larger buffers let
#: bulk transfers move in fewer wake-ups of the two brokers; the kernel caps
#: the value at its configured maximum (net.core.wmem_max/rmem_max).
SOCKET_BUFFER_SIZE = 1048576


def _enlarge_buffers(sock):
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_SIZE)
        except (OSError, socket.error):
            pass


def shell_quote(s):
    """Quote `s` as one word for a POSIX shell."""
    if s and all(c.isalnum() or c in '@%+=:,./-_' for c in s):
        return s
    return "'" + s.replace("'", "'\\''") + "'"


#: None, or a function every child process the library starts (see
#: :func:`spawn` and :func:`popen`) calls in the child, between fork and
#: exec, after the library's own preparation: for instance to undo a CPU
#: affinity the parent set for itself alone. Read at each start.
_preexec_hook = None


def popen(**kwargs):
    """Start a process with ``subprocess.Popen(**kwargs)``; the child runs
    :data:`_preexec_hook`, when set, after any `preexec_fn` given. Every
    process the library starts goes through here."""
    preexec_fn = kwargs.pop('preexec_fn', None)
    hook = _preexec_hook
    if hook is not None and preexec_fn is not None:
        def run_both():
            preexec_fn()
            hook()
        kwargs['preexec_fn'] = run_both
    elif hook is not None or preexec_fn is not None:
        kwargs['preexec_fn'] = hook or preexec_fn
    return subprocess.Popen(**kwargs)


def _wait_for_exit(proc, timeout):
    # Polled rather than wait()ed: `proc` may be a Paramiko channel's
    # stand-in, and a timed wait() is missing on Python 2. True once it
    # exited.
    deadline = now() + timeout
    while proc.poll() is None and now() < deadline:
        select.select([], [], [], 0.01)
    return proc.poll() is not None


def returncode_to_str(n):
    """Describe the return code `n` of a process, as ``subprocess`` reports
    it (minus the signal number when a signal killed it): ``'exited with
    return code 1'``, ``'exited due to signal 9 (SIGKILL)'``."""
    if n < 0:
        return 'exited due to signal %d (%s)' % (-n, _signal_name(-n))
    return 'exited with return code %d' % (n,)


def _signal_name(signum):
    # Sorted, the usual name of a signal comes before its aliases (SIGABRT
    # before SIGIOT, SIGCHLD before SIGCLD, SIGIO before SIGPOLL).
    names = sorted(name for name, value in vars(signal).items()
                   if name.startswith('SIG') and not name.startswith('SIG_')
                   and value == signum)
    return names[0] if names else 'unknown signal'


def _terminal_taker():
    # termios is imported only where a terminal is wanted: minimal
    # interpreters (Debian's python3-minimal, in containers) lack it and
    # still start children of their own. The import happens here, before
    # fork, never in the child.
    import termios
    request = termios.TIOCSCTTY

    def take_terminal():
        # In the child between fork and exec: a new session whose
        # controlling terminal is the pty on fd 2, so the program's
        # /dev/tty is ours.
        os.setsid()
        fcntl.ioctl(2, request, 0)
    return take_terminal


def _setsid_then(preexec_fn):
    if preexec_fn is None:
        return os.setsid

    def both():
        os.setsid()
        preexec_fn()
    return both


def spawn(argv, pty=None, tty_setup=None, preexec_fn=None, env=None):
    """Start `argv` in a session of its own; return
    `(proc, fd, stderr_fd, tty_fd)`.

    :param pty: None: stdin/stdout on a socket pair (`fd` is our end),
        stderr on a pipe (`stderr_fd`). ``'stderr'``: the same stdin/stdout,
        but stderr is a pseudo-terminal that becomes the controlling
        terminal, where login programs prompt (`tty_fd` is its master).
        ``'stdio'``: stdin, stdout and stderr all on the pseudo-terminal
        (for programs that read passwords from stdin); `fd` is then the
        pty master as well.
    :param tty_setup: called with the pty slave before the program starts
        (e.g. to turn echo off or set raw mode).
    :param preexec_fn: called in the child between fork and exec, after it
        became a session leader (e.g. to enter namespaces); only without
        `pty`.
    :param dict env: the program's environment; default: this process's.
    """
    master = slave = parent_sock = child_sock = err_r = err_w = None
    kwargs = dict(close_fds=True, env=env)
    try:
        if pty is not None:
            master, slave = os.openpty()
            mitogen.core.set_cloexec(master)
            if tty_setup is not None:
                tty_setup(slave)
            kwargs['stderr'] = slave
            kwargs['preexec_fn'] = _terminal_taker()
        elif mitogen.core.PY3:
            kwargs['start_new_session'] = True
            kwargs['preexec_fn'] = preexec_fn
        else:
            kwargs['preexec_fn'] = _setsid_then(preexec_fn)
        if pty == 'stdio':
            kwargs['stdin'] = kwargs['stdout'] = slave
        else:
            parent_sock, child_sock = socket.socketpair()
            for sock in (parent_sock, child_sock):
                _enlarge_buffers(sock)
            kwargs['stdin'] = kwargs['stdout'] = child_sock.fileno()
        if pty is None:
            err_r, err_w = os.pipe()
            kwargs['stderr'] = err_w
        try:
            proc = popen(args=argv, **kwargs)
        except (OSError, IOError) as e:
            for fd in (master, err_r):
                if fd is not None:
                    os.close(fd)
            if parent_sock is not None:
                parent_sock.close()
            raise mitogen.core.StreamError(
                'could not start %s: %s' % (argv[0], e))
    finally:
        for fd in (slave, err_w):
            if fd is not None:
                os.close(fd)
        if child_sock is not None:
            child_sock.close()
    if parent_sock is None:
        return proc, master, None, master
    fd = os.dup(parent_sock.fileno())
    parent_sock.close()
    return proc, fd, err_r, master


# ---------------------------------------------------------------------------
# 4. Function calls: CallSpec, CallChain, Context
# ---------------------------------------------------------------------------

_described = {}


def _describe_function(fn):
    """Return `(module, class_name, function_name)` naming `fn` so another
    process can find it, or raise :class:`TypeError` explaining why it
    cannot."""
    try:
        return _described[fn]
    except (KeyError, TypeError):
        pass
    desc = _describe_uncached(fn)
    if isinstance(fn, types.FunctionType) and len(_described) < 10000:
        _described[fn] = desc
    return desc


def _describe_uncached(fn):
    if isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        owner = getattr(fn, '__self__', None)
        if owner is None or isinstance(owner, types.ModuleType):
            return fn.__module__ or getattr(owner, '__name__', None), None, \
                fn.__name__
        if isinstance(owner, type):
            return owner.__module__, owner.__name__, fn.__name__
        raise TypeError('cannot call %r remotely: it is a method bound to an '
                        'instance; call a module-level function or a '
                        'classmethod instead' % (fn,))
    if isinstance(fn, types.MethodType):
        owner = fn.__self__
        if isinstance(owner, type) or (
                not mitogen.core.PY3 and isinstance(owner, types.ClassType)):
            _check_reachable(owner, owner.__module__, owner.__name__)
            return owner.__module__, owner.__name__, fn.__name__
        if owner is None:
            cls = fn.im_class
            return cls.__module__, cls.__name__, fn.__name__
        raise TypeError('cannot call %r remotely: bound methods of instances '
                        'cannot be sent; use a module-level function or a '
                        'classmethod' % (fn,))
    if isinstance(fn, types.FunctionType):
        if fn.__name__ == '<lambda>':
            raise TypeError('cannot call %r remotely: lambdas have no name '
                            'another process can import; define a '
                            'module-level function' % (fn,))
        qualname = getattr(fn, '__qualname__', fn.__name__)
        if '<locals>' in qualname or fn.__closure__:
            raise TypeError('cannot call %r remotely: closures and nested '
                            'functions cannot be imported by another '
                            'process; define it at module level' % (fn,))
        parts = qualname.split('.')
        klass = parts[0] if len(parts) == 2 else None
        if len(parts) > 2:
            raise TypeError('cannot call %r remotely: only module-level '
                            'functions and methods of module-level classes '
                            'can be called' % (fn,))
        _check_reachable(fn, fn.__module__, qualname)
        return fn.__module__, klass, fn.__name__
    if isinstance(fn, type):
        _check_reachable(fn, fn.__module__, fn.__name__)
        return fn.__module__, None, fn.__name__
    raise TypeError('cannot call %r remotely: only module-level functions, '
                    'classmethods and classes can be called' % (fn,))


def _check_reachable(obj, modname, qualname):
    module = sys.modules.get(modname)
    main_file = getattr(module, '__file__', None)
    if modname == '__main__' and mitogen.is_master and not (
            isinstance(main_file, str) and os.path.isfile(main_file)):
        raise TypeError(
            'cannot call %r remotely: it was defined in a program with no '
            'source file (python -c, python - < file, or an interactive '
            'session), so a child cannot import it from the master; define '
            'it in a .py file and run that file, or import it from a module'
            % (obj,))
    target = module
    for part in qualname.split('.'):
        target = getattr(target, part, None)
    if module is None or target is None:
        raise TypeError('cannot call %r remotely: it is not reachable as '
                        '%s.%s' % (obj, modname, qualname))


class CallSpec(object):
    """A function call, described for people: ``str()`` and ``repr()`` give
    ``module.function(arg, kw=value)``, each argument by its ``repr()`` (so
    a :class:`mitogen.core.Secret` stays hidden).

    :param func: the function, method or class called.
    :param tuple args: its positional arguments.
    :param dict kwargs: its keyword arguments.
    """

    def __init__(self, func, args, kwargs):
        self.func = func
        self.args = args
        self.kwargs = kwargs

    def _func_name(self):
        func = self.func
        name = getattr(func, '__qualname__', None)
        if name is None:
            name = getattr(func, '__name__', None)
            if name is None:
                return repr(func)
            # Python 2 has no __qualname__: name the class of a method.
            owner = (getattr(func, '__self__', None) or
                     getattr(func, 'im_class', None))
            if isinstance(owner, (type, getattr(types, 'ClassType', type))):
                name = '%s.%s' % (owner.__name__, name)
            elif owner is not None and not isinstance(owner,
                                                      types.ModuleType):
                name = '%s.%s' % (type(owner).__name__, name)
        module = getattr(func, '__module__', None)
        if module:
            return '%s.%s' % (module, name)
        return name

    def __repr__(self):
        parts = [repr(arg) for arg in self.args or ()]
        parts += ['%s=%r' % item for item in (self.kwargs or {}).items()]
        return '%s(%s)' % (self._func_name(), ', '.join(parts))

    __str__ = __repr__


class CallChain(object):
    """Calls into one context, optionally pipelined.

    Without pipelining each :meth:`call` waits for its result. With
    ``pipelined=True``, :meth:`call_no_reply` and :meth:`call_async` calls
    share a chain ID: if one of them fails, every later call in the chain
    fails with the same :class:`mitogen.core.CallError` without running,
    and the error is reported by the next :meth:`call` or :meth:`call_async`
    result. :meth:`reset` starts a new chain.

    :param Context context: the context to call into.
    :param bool pipelined: share one chain ID between calls.
    """
    _chain_ids = itertools.count(1)

    def __init__(self, context, pipelined=False):
        self.context = context
        self.chain_id = self.make_chain_id() if pipelined else None

    @classmethod
    def make_chain_id(cls):
        """Return a chain ID unique across processes and threads."""
        return '%s-%s-%x-%x' % (
            socket.gethostname(), os.getpid(),
            threading.current_thread().ident or 0, next(cls._chain_ids),
        )

    def __repr__(self):
        return '%s(%r)' % (type(self).__name__, self.context)

    def __enter__(self):
        return self

    def __exit__(self, _1, _2, _3):
        self.reset()

    def reset(self):
        """Forget the error state of the chain in the remote context and
        start a new chain."""
        if not self.chain_id:
            return
        saved, self.chain_id = self.chain_id, None
        try:
            self.call_no_reply(mitogen.core.Dispatcher.forget_chain, saved)
        finally:
            self.chain_id = self.make_chain_id()

    def make_msg(self, fn, *args, **kwargs):
        """Return the :data:`mitogen.core.CALL_FUNCTION` message for
        `fn(*args, **kwargs)`."""
        modname, klass, name = _describe_function(fn)
        return mitogen.core.Message.pickled(
            (self.chain_id, modname, klass, name, args,
             mitogen.core.Kwargs(kwargs)),
            handle=mitogen.core.CALL_FUNCTION,
        )

    def call_no_reply(self, fn, *args, **kwargs):
        # type: (Callable[..., Any], *Any, **Any) -> None
        """Call `fn` without waiting for, or receiving, a result."""
        msg = self.make_msg(fn, *args, **kwargs)
        self.context.send(msg)

    def call_async(self, fn, *args, **kwargs):
        # type: (Callable[..., Any], *Any, **Any) -> mitogen.core.Receiver
        """Start a call; return a :class:`mitogen.core.Receiver` whose
        :meth:`~mitogen.core.Receiver.get` returns a message whose
        :meth:`~mitogen.core.Message.unpickle` gives the result or raises
        :class:`mitogen.core.CallError`."""
        msg = self.make_msg(fn, *args, **kwargs)
        return self.context.send_async(msg)

    def call(self, fn, *args, **kwargs):
        # type: (Callable[..., Any], *Any, **Any) -> Any
        """Call `fn(*args, **kwargs)` in the context and return its result.

        :raises mitogen.core.CallError: the function raised.
        :raises mitogen.core.ChannelError: the context disconnected."""
        recv = self.call_async(fn, *args, **kwargs)
        return recv.get().unpickle()


class Context(mitogen.core.Context):
    """A context this process can call functions in."""

    #: The context this one was started through, or None.
    via = None

    def __init__(self, *args, **kwargs):
        super(Context, self).__init__(*args, **kwargs)
        self.default_call_chain = CallChain(self)

    def call_async(self, fn, *args, **kwargs):
        # type: (Callable[..., Any], *Any, **Any) -> mitogen.core.Receiver
        """See :meth:`CallChain.call_async`."""
        return self.default_call_chain.call_async(fn, *args, **kwargs)

    def call(self, fn, *args, **kwargs):
        # type: (Callable[..., Any], *Any, **Any) -> Any
        """See :meth:`CallChain.call`."""
        return self.default_call_chain.call(fn, *args, **kwargs)

    def call_no_reply(self, fn, *args, **kwargs):
        # type: (Callable[..., Any], *Any, **Any) -> None
        """See :meth:`CallChain.call_no_reply`."""
        self.default_call_chain.call_no_reply(fn, *args, **kwargs)

    def shutdown(self, wait=False):
        # type: (bool) -> Optional[mitogen.core.Latch]
        """Ask the context to shut down gracefully.

        :param bool wait: when true, return after the context disconnected
            and, for a child of this process, its process has exited.
        :returns: None when `wait` is true, else a
            :class:`mitogen.core.Latch` that receives None on disconnect.
        """
        LOG.debug('%r.shutdown() sending SHUTDOWN', self)
        latch = mitogen.core.Latch()
        mitogen.core.listen(self, 'disconnect', lambda: latch.put(None))
        if self.router._respondent_gone(self):
            latch.put(None)
        else:
            self.send(mitogen.core.Message(handle=mitogen.core.SHUTDOWN))
        if not wait:
            return latch
        latch.get()
        self.router._wait_reaped(self)


# ---------------------------------------------------------------------------
# 5. Connections: Options, Connection, the handshake
# ---------------------------------------------------------------------------

class Options(object):
    """Options common to every connection method.

    :param str name: context name; made from the method otherwise.
    :param python_path: interpreter command, a string or an argv list.
    :param float connect_timeout: seconds to wait for the child to become
        ready.
    :param str remote_name: name the child uses for itself in its logs.
    :param bool debug: verbose logging in the child.
    """
    name = None
    python_path = None
    connect_timeout = DEFAULT_CONNECT_TIMEOUT

    def __init__(self, max_message_size, name=None, remote_name=None,
                 python_path=None, debug=False, connect_timeout=None,
                 profiling=False, unidirectional=False, old_router=None):
        self.name = name
        self.max_message_size = max_message_size
        if python_path:
            if isinstance(python_path, (list, tuple)):
                python_path = list(python_path)
            else:
                python_path = [python_path]
            self.python_path = python_path
        self.remote_name = remote_name
        self.debug = debug
        if connect_timeout is not None:
            self.connect_timeout = float(connect_timeout)
        self.profiling = profiling
        self.unidirectional = unidirectional
        self.old_router = old_router


class Connection(object):
    """Base of every connection method: starts a process that runs a Python
    interpreter, bootstraps the core into it and returns the stream.

    **The plugin contract.** A connection method is a subclass published
    in the ``mitogen.transports`` entry-point group of its distribution::

        [project.entry-points."mitogen.transports"]
        example = "mitogen_example_transport:Connection"

    after which ``router.connect('example', **kwargs)`` and
    ``router.example(**kwargs)`` start children with it, directly or through
    ``via=`` (the intermediate then imports the module through the
    importer, so it must run on every Python a child may use). A subclass
    sets :attr:`options_class` (a subclass of :class:`Options` whose
    constructor takes the method's keyword arguments) and
    :attr:`name_prefix`, and overrides:

    - :meth:`get_boot_command`: the argv that ends by running the Python
      interpreter with ``-c`` and :func:`stage1_command`, e.g. wrapped in
      ``ssh host`` or ``sudo -u user``;
    - optionally :meth:`start_child`, to spawn differently (a
      pseudo-terminal for login programs: set :attr:`tty_fd`);
    - optionally :meth:`on_output`, to answer or reject prompts.

    Everything else — the handshake, the deadline, errors carrying the
    child's last output, routing, reaping — is shared.

    Contract of the handshake: the child writes ``MITO000 <interpreter
    tag>\\n`` when its first stage runs, reads the compressed core, the
    compiled core for that tag (see :func:`get_core_code`) and its config
    from stdin,
    and writes ``MITO001 <protocol> <core version> <python version>\\n``
    when the core is running; from then on stdin/stdout carry messages.

    .. attribute:: tty_fd

        The master side of a pseudo-terminal given to the child, for methods
        whose login program asks for a password on its terminal, or None.

    .. attribute:: stderr_fd

       Descriptor reading the child's stderr while it starts, or None; set
       by :meth:`start_child`.
    """
    options_class = Options
    #: Prefix of generated context names, e.g. ``local``.
    name_prefix = u'local'
    #: Set by :meth:`connect`: the child's process ID.
    pid = None
    #: Set when the child detached (:meth:`mitogen.core.ExternalContext.detach`):
    #: its process is reaped but never killed.
    detached = False
    #: Reported by the child: its Python version.
    remote_python_version = None

    def __init__(self, options, router):
        self.options = options
        self._router = router
        self.proc = None
        self.stderr_fd = None
        self.tty_fd = None
        self._output = []

    def __repr__(self):
        return '%s(pid=%s)' % (type(self).__name__, self.pid)

    def get_python_argv(self):
        """Interpreter argv, without the ``-c`` program."""
        return list(self.options.python_path or [sys.executable])

    def get_boot_command(self):
        """Return the argv list that starts the child's first stage."""
        return self.get_python_argv() + ['-c', stage1_command()]

    def start_child(self, argv):
        """Spawn `argv`; return `(proc, fd)` where `fd` is this side of a
        bidirectional socket connected to the child's stdin and stdout, and
        set :attr:`stderr_fd` to a pipe reading its stderr. Methods that
        need a terminal call :func:`spawn` with ``pty=`` instead."""
        proc, fd, self.stderr_fd, self.tty_fd = spawn(argv)
        return proc, fd

    def on_output(self, data, fd):
        """Inspect output received before the child is ready: `data` was
        read from `fd` (the stream, :attr:`stderr_fd` or :attr:`tty_fd`).
        Methods that log in (sudo, su, ssh) answer password prompts here, or
        raise to fail the connection. The default does nothing."""

    def _fail_text(self):
        data = b''.join(self._output)[-2000:]
        text = to_text(data).strip()
        lines = text.splitlines()[-10:]
        if not lines:
            return 'the child wrote nothing'
        return 'last output of the child:\n    ' + '\n    '.join(lines)

    def _describe(self):
        return '%s (%s)' % (self.options.name or self.name_prefix,
                            ' '.join(self.get_python_argv()))

    def _read_until(self, fd, marker, deadline, data=b''):
        """Read `fd` and the stderr pipe until `marker` appears on `fd`;
        return the bytes after the marker line."""
        fds = [fd]
        for extra in (self.stderr_fd, self.tty_fd):
            if extra is not None and extra != fd:
                fds.append(extra)
        while True:
            idx = data.find(marker)
            if idx >= 0:
                end = data.find(b'\n', idx)
                if end >= 0:
                    self._marker_line = data[idx:end]
                    return data[end + 1:]
            remaining = deadline - now()
            if remaining <= 0:
                raise mitogen.core.TimeoutError(
                    'timed out after %.1f s waiting for %s to start; %s'
                    % (self.options.connect_timeout, self._describe(),
                       self._fail_text()))
            try:
                rfds, _, _ = select.select(fds, [], [], remaining)
            except (select.error, OSError) as e:
                if e.args[0] == errno.EINTR:
                    continue
                raise
            for rfd in rfds:
                try:
                    chunk = os.read(rfd, 65536)
                except OSError as e:
                    if e.args[0] in (errno.EAGAIN, errno.EINTR):
                        continue
                    chunk = b''
                if rfd == fd:
                    if not chunk:
                        self._reap_failed()
                        # The child's last line ends the text: programs
                        # show it as the reason (ssh's own error, say).
                        raise EofError(
                            'EOF on stream of %s before it was ready%s: %s'
                            % (self._describe(), self._exit_text(),
                               self._fail_text()))
                    data += chunk
                    if marker not in data:
                        self._output.append(chunk)
                    self.on_output(chunk, rfd)
                else:
                    if not chunk:
                        fds.remove(rfd)
                        continue
                    self._output.append(chunk)
                    self.on_output(chunk, rfd)

    def _exit_text(self):
        if self.proc is None or self.proc.returncode is None:
            return ''
        code = self.proc.returncode
        if code < 0:
            return ' (killed by signal %d)' % (-code,)
        return ' (exit status %d)' % (code,)

    def _reap_failed(self):
        proc = self.proc
        if proc is None:
            return
        if not _wait_for_exit(proc, 1.0):
            try:
                proc.kill()
            except OSError:
                pass
            proc.wait()
        self._drain_stderr()

    def _drain_stderr(self, timeout=0.5):
        # The end of the stream may be seen before the last words the child
        # wrote to stderr, which usually explain why it failed: collect
        # them for the error message. A method whose child writes its
        # stderr to the pty has no stderr pipe: drain the pty then.
        fd = self.stderr_fd if self.stderr_fd is not None else self.tty_fd
        deadline = now() + timeout
        while fd is not None and now() < deadline:
            try:
                rfds, _, _ = select.select([fd], [], [],
                                           max(0, deadline - now()))
                chunk = os.read(fd, 65536) if rfds else b''
            except (select.error, OSError):
                return
            if not chunk:
                return
            self._output.append(chunk)

    def _write_all(self, fd, data, deadline):
        view = memoryview(data)
        while view:
            remaining = deadline - now()
            if remaining <= 0:
                raise mitogen.core.TimeoutError(
                    'timed out after %.1f s sending the core to %s; %s' % (
                        self.options.connect_timeout, self._describe(),
                        self._fail_text()))
            _, wfds, _ = select.select([], [fd], [], remaining)
            if not wfds:
                continue
            try:
                n = os.write(fd, view)
            except OSError as e:
                if e.args[0] in (errno.EAGAIN, errno.EINTR):
                    continue
                if e.args[0] in (errno.EPIPE, errno.ECONNRESET):
                    self._reap_failed()
                    raise EofError('%s exited while receiving the core%s: %s'
                                   % (self._describe(), self._exit_text(),
                                      self._fail_text()))
                raise
            view = view[n:]

    def get_config(self, context_id, parent_ids, name):
        """Return the config dict sent to the child."""
        router = self._router
        return {
            'context_id': context_id,
            'parent_ids': parent_ids,
            'name': name,
            'max_message_size': self.options.max_message_size,
            'log_level': logging.getLogger('').getEffectiveLevel(),
            'debug': self.options.debug,
            'profiling': self.options.profiling,
            'pkg_present': _mitogen_pkg_present(),
            'registered_types': [list(k) for k in router.registered_types()],
            'remote_name': self.options.remote_name,
            'unidirectional': self.options.unidirectional,
            'shutdown_timeout': max(
                1.0, router.broker.shutdown_timeout - SHUTDOWN_MARGIN),
        }

    def connect(self, context_id, name_hint=None):
        """Start the child, bootstrap it, and return the ready
        :class:`mitogen.core.Stream` (not yet registered with the broker)
        plus bytes already received after the handshake."""
        deadline = now() + self.options.connect_timeout
        self.stderr_fd = None
        self.tty_fd = None
        argv = self.get_boot_command()
        LOG.debug('%r: starting %r', self, argv[:len(argv) - 1])
        self.proc, fd = self.start_child(argv)
        self.pid = self.proc.pid
        try:
            return self._handshake(fd, context_id, deadline)
        except BaseException:
            os.close(fd)
            for attr in ('stderr_fd', 'tty_fd'):
                extra = getattr(self, attr)
                if extra is not None and extra != fd:
                    os.close(extra)
                setattr(self, attr, None)
            if self.proc.poll() is None:
                try:
                    self.proc.kill()
                except OSError:
                    pass
            self.proc.wait()
            raise

    def _handshake(self, fd, context_id, deadline):
        self._marker_line = None
        rest = self._read_until(fd, b'MITO000\n'[:7], deadline)
        code = get_core_code(self._marker_line[8:].strip())
        name = self.options.name or u'%s.%d' % (self.name_prefix, self.pid)
        self.name = name
        parent_ids = [mitogen.context_id] + list(mitogen.parent_ids)
        config = self.get_config(context_id, parent_ids, name)
        flags, body = mitogen.core.serialize(config)
        compressed = get_core_compressed()
        payload = b''.join([
            ('%010d' % len(compressed)).encode('ascii'), compressed,
            ('%010d' % len(code)).encode('ascii'), code,
            ('%010d' % (len(body) + 1)).encode('ascii'),
            bytearray([flags]) if mitogen.core.PY3 else chr(flags), body,
        ])
        self._write_all(fd, payload, deadline)
        rest = self._read_until(fd, b'MITO001', deadline, rest)
        self._check_version(self._marker_line)
        return fd, rest

    def _check_version(self, line):
        parts = to_text(line).split()
        try:
            proto = int(parts[1])
            core_version = parts[2]
            self.remote_python_version = parts[3]
        except (IndexError, ValueError):
            raise mitogen.core.StreamError('unintelligible handshake from '
                                           '%s: %r' % (self._describe(), line))
        lo, hi = SUPPORTED_CORE_PROTOCOLS
        if not (lo <= proto <= hi):
            raise CoreVersionError(
                'the child runs mitogen-core %s, which speaks core protocol '
                '%d; this parent (mitogen %s) supports core protocol versions '
                '%d to %d' % (core_version, proto, _master_version(), lo, hi))


def _master_version():
    v = getattr(mitogen, '__version__', None)
    if isinstance(v, tuple):
        return '.'.join(str(x) for x in v)
    return str(v)


def check_local_core():
    """Raise :class:`CoreVersionError` if the installed mitogen-core speaks a
    protocol this parent does not support."""
    lo, hi = SUPPORTED_CORE_PROTOCOLS
    proto = mitogen.core.PROTOCOL_VERSION
    if not (lo <= proto <= hi):
        raise CoreVersionError(
            'the installed mitogen-core %s speaks core protocol %d; this '
            'parent (mitogen %s) supports core protocol versions %d to %d' % (
                mitogen.core.__version__, proto, _master_version(), lo, hi))


# ---------------------------------------------------------------------------
# 6. The registry of connection methods (entry points)
# ---------------------------------------------------------------------------

# Connection methods that are part of mitogen itself, used where package
# metadata is unavailable (in children, which have no installed metadata).
BUILTIN_TRANSPORTS = {
    'local': 'mitogen.local:Connection',
    'fork': 'mitogen.fork:Connection',
    'sudo': 'mitogen.sudo:Connection',
    'su': 'mitogen.su:Connection',
    'doas': 'mitogen.doas:Connection',
    'ssh': 'mitogen.ssh:Connection',
    'paramiko': 'mitogen.paramiko:Connection',
}

#: What to ``pip install`` for connection methods published by this
#: project's other distributions, for the error raised when one is asked
#: for but not installed. Methods of third parties are found only once
#: installed, so nothing can be suggested for them.
TRANSPORT_DISTRIBUTIONS = dict(
    [('ssh', 'mitogen-ssh'), ('paramiko', 'mitogen-ssh[paramiko]')] +
    [(name, 'mitogen-containers') for name in (
        'podman', 'docker', 'buildah', 'kubectl', 'lxc', 'lxd', 'incus',
        'setns', 'jail')]
)

_IDENTIFIER = re.compile(r'[A-Za-z_][A-Za-z0-9_]*$')

#: Options every connection method accepts that the router supplies itself.
_ROUTER_SUPPLIED_OPTIONS = ('max_message_size', 'old_router')


class TransportUnavailable(mitogen.core.Error):
    """No connection method of the name asked for is installed, or the one
    installed cannot be imported (a missing optional dependency, say). The
    message names the ``pip install`` that adds it where it is known."""


class Transport(object):
    """One entry of the ``mitogen.transports`` entry-point group.

    :param str name: the method's name, as in ``router.<name>()``.
    :param str target: ``module:Class`` of its :class:`Connection`.
    :param str distribution: the distribution declaring it, or None for the
        built-in table used where there is no package metadata.
    :param list requires: that distribution's requirement strings.
    """

    def __init__(self, name, target, distribution=None, requires=()):
        self.name = name
        self.target = target
        self.distribution = distribution
        self.requires = list(requires)

    def _extra_providing(self, module):
        # "paramiko>=3; extra == 'paramiko'" -> "paramiko".
        wanted = module.split('.')[0].lower().replace('_', '-')
        for requirement in self.requires:
            spec, _, marker = requirement.partition(';')
            project = spec.strip()
            for stop in '<>=!~[ (':
                project = project.split(stop)[0]
            if project.lower().replace('_', '-') != wanted:
                continue
            extra = marker.replace('"', "'").partition("extra == '")[2]
            if extra:
                return extra.partition("'")[0]
        return None

    def load(self):
        """Import and return the :class:`Connection` subclass, or raise
        :class:`TransportUnavailable` saying what to install."""
        modname, _, attr = self.target.partition(':')
        try:
            __import__(modname)
        except ImportError as e:
            missing = getattr(e, 'name', None) or ''
            raise TransportUnavailable(self._missing_text(modname, missing, e))
        try:
            return getattr(sys.modules[modname], attr)
        except AttributeError:
            raise TransportUnavailable(
                'connection method %r: module %s has no attribute %r (%s)'
                % (self.name, modname, attr, self._origin()))

    def _origin(self):
        if self.distribution:
            return 'registered by distribution %s' % (self.distribution,)
        return 'a built-in method'

    def _missing_text(self, modname, missing, error):
        hint = TRANSPORT_DISTRIBUTIONS.get(self.name)
        own_module = missing == modname or modname.startswith(missing + '.')
        if own_module and hint and self.distribution is None:
            return ('connection method %r needs the %s distribution, which '
                    'is not installed: pip install %s'
                    % (self.name, hint.split('[')[0], _quoted(hint)))
        if missing and not own_module:
            extra = self.distribution and self._extra_providing(missing)
            if extra:
                hint = '%s[%s]' % (self.distribution, extra)
            if hint and '[' in hint:
                return ('connection method %r needs %s, which is not '
                        'installed: pip install %s'
                        % (self.name, missing, _quoted(hint)))
        return 'connection method %r (%s, %s) cannot be imported: %s' % (
            self.name, self.target, self._origin(), error)


def _quoted(spec):
    # Shells expand [...]: quote extras so the command can be pasted.
    return "'%s'" % (spec,) if '[' in spec else spec


_transport_cache = {}
_registry = []
_warned_duplicates = set()


def _installed_transports():
    """{name: [Transport, ...]} from the package metadata of every
    installed distribution, in ``sys.path`` order; empty where there is no
    metadata (children, or Python without ``importlib.metadata``)."""
    if _registry:
        return _registry[0]
    found = {}
    try:
        from importlib import metadata
    except ImportError:
        metadata = None
    if metadata is not None and mitogen.is_master:
        seen = set()
        try:
            for dist in metadata.distributions():
                # Only entry_points.txt is read for every distribution:
                # parsing each one's METADATA (for its name) made this scan
                # the slowest part of a master's first connection.
                listed = dist.read_text('entry_points.txt')
                if not listed or 'mitogen.transports' not in listed:
                    continue
                dist_name = dist.metadata['Name']
                if not dist_name or dist_name.lower() in seen:
                    # A later copy of a distribution on sys.path is shadowed
                    # by the first, as for imports.
                    continue
                seen.add(dist_name.lower())
                for ep in dist.entry_points:
                    if ep.group == 'mitogen.transports':
                        found.setdefault(ep.name, []).append(Transport(
                            ep.name, ep.value, dist_name, dist.requires or ()))
        except Exception:
            LOG.debug('entry point lookup failed', exc_info=True)
    _registry.append(found)
    return found


def _transport_named(name):
    candidates = _installed_transports().get(name)
    if not candidates and _registry:
        # Distributions may have been added to sys.path since the last
        # scan: look again before saying the method is not installed.
        del _registry[:]
        candidates = _installed_transports().get(name)
    if not candidates:
        target = BUILTIN_TRANSPORTS.get(name)
        if target is None:
            return None
        return Transport(name, target)
    if len(candidates) > 1 and name not in _warned_duplicates:
        _warned_duplicates.add(name)
        import warnings
        warnings.warn(
            'connection method %r is registered by several distributions: '
            '%s; using the one from %s. Uninstall the others to silence '
            'this warning.' % (name, ', '.join(
                '%s (%s)' % (t.distribution, t.target) for t in candidates),
                candidates[0].distribution), RuntimeWarning, stacklevel=4)
    return candidates[0]


def transport_names():
    """Sorted names of every connection method this process can find:
    those of the installed distributions' ``mitogen.transports`` entry
    points, and the built-in ones."""
    names = set(_installed_transports())
    if not names:
        names = set(BUILTIN_TRANSPORTS)
    return sorted(names)


def resolve_transport(name):
    """Return the :class:`Connection` subclass registered under `name` in
    the ``mitogen.transports`` entry-point group, or raise
    :class:`TransportUnavailable` naming what to install."""
    cls = _transport_cache.get(name)
    if cls is not None:
        return cls
    transport = _transport_named(name)
    if transport is None:
        hint = TRANSPORT_DISTRIBUTIONS.get(name)
        if hint:
            raise TransportUnavailable(
                'no connection method named %r is installed; it comes with '
                'the %s distribution: pip install %s'
                % (name, hint.split('[')[0], _quoted(hint)))
        raise TransportUnavailable(
            'no connection method named %r is installed (installed: %s)'
            % (name, ', '.join(transport_names())))
    cls = transport.load()
    _transport_cache[name] = cls
    return cls


def _connect_signature(klass):
    # The keyword arguments router.<name>() accepts: those of the options
    # class's constructors up its bases, for as long as each passes **kwargs
    # on, plus via= and name=.
    import inspect
    params = [inspect.Parameter('via', inspect.Parameter.KEYWORD_ONLY,
                                default=None),
              inspect.Parameter('name', inspect.Parameter.KEYWORD_ONLY,
                                default=None)]
    seen = set(['self', 'via', 'name'] + list(_ROUTER_SUPPLIED_OPTIONS))
    for cls in klass.options_class.__mro__:
        init = cls.__dict__.get('__init__')
        if init is None:
            continue
        passes_on = False
        for p in inspect.signature(init).parameters.values():
            if p.kind == p.VAR_KEYWORD:
                passes_on = True
            elif p.kind != p.VAR_POSITIONAL and p.name not in seen:
                seen.add(p.name)
                params.append(p.replace(kind=p.KEYWORD_ONLY))
        if not passes_on:
            break
    return_annotation = 'mitogen.parent.Context'
    return inspect.Signature(params, return_annotation=return_annotation)


def _connect_method(router, name, klass):
    """``router.<name>``: a function with the signature and documentation of
    connection method `name`."""
    def method(**kwargs):
        return router.connect(name, **kwargs)
    method.__name__ = str(name)
    method.__qualname__ = '%s.%s' % (type(router).__name__, name)
    method.__doc__ = (
        'Start a child context with the %r connection method (%s.%s) and '
        'return its :class:`Context`; `via` starts it from another '
        'context, `name` names it.\n\n%s' % (
            name, klass.__module__, klass.__name__,
            _dedent_doc(klass.options_class.__doc__)))
    if mitogen.is_master:
        signature = _signatures.get(klass)
        if signature is None:
            try:
                signature = _signatures[klass] = _connect_signature(klass)
            except (TypeError, ValueError):
                LOG.debug('no signature for %r', klass, exc_info=True)
        method.__signature__ = signature
    return method


_signatures = {}


def _dedent_doc(doc):
    if not doc:
        return ''
    lines = doc.expandtabs().splitlines()
    indents = [len(line) - len(line.lstrip()) for line in lines[1:]
               if line.strip()]
    cut = min(indents) if indents else 0
    return '\n'.join([lines[0].strip()] + [line[cut:] for line in lines[1:]])


# ---------------------------------------------------------------------------
# 7. Module forwarding
# ---------------------------------------------------------------------------

class ModuleForwarder(object):
    """Serves :data:`mitogen.core.GET_MODULE` in a context that started
    children: from its own importer's cache when it has the module, else by
    asking its parent once, however many descendants ask. Like the master,
    it first sends the requested module's related modules that it holds and
    the requester has not been sent, so preloading works at every hop.

    :data:`mitogen.core.FORWARD_MODULE` ``(context_id, fullname)`` from an
    ancestor asks it to send a module it holds to a descendant ahead of
    time.

    :data:`mitogen.core.GET_RESOURCE` requests (package data) are relayed to
    the parent, and its answers back, so ``importlib.resources`` works at
    any depth."""

    def __init__(self, router, parent, importer):
        self.router = router
        self.parent = parent
        self.importer = importer
        self._sent = {}
        router.add_handler(self._on_get_module, mitogen.core.GET_MODULE)
        router.add_handler(self._on_forward_module,
                           mitogen.core.FORWARD_MODULE,
                           policy=mitogen.core.has_parent_authority)
        router.add_handler(self._on_get_resource, mitogen.core.GET_RESOURCE)

    def __repr__(self):
        return 'ModuleForwarder'

    def _on_get_resource(self, msg):
        if msg.is_dead:
            return

        def relay(reply):
            # A dead reply (the parent refused or went away) stays dead.
            msg.reply(mitogen.core.Message(data=reply.data, flags=reply.flags,
                                           reply_to=reply.reply_to),
                      router=self.router)
        handle = self.router.add_handler(relay, persist=False,
                                         respondent=self.parent)
        self.parent.send(mitogen.core.Message(
            data=msg.data, flags=msg.flags, handle=mitogen.core.GET_RESOURCE,
            reply_to=handle))

    def _on_get_module(self, msg):
        if msg.is_dead:
            return
        fullname = mitogen.core.to_native(msg.data.decode('utf-8',
                                                          'replace'))
        dst_id = msg.src_id
        if not mitogen.core.is_module_name(fullname):
            # Answered as absent at once, without asking our parent.
            self._send(dst_id, fullname, preload=False)
            return
        self.importer.request_module(
            fullname, lambda: self._send(dst_id, fullname, preload=True))

    def _on_forward_module(self, msg):
        if msg.is_dead:
            return
        context_id, fullname = mitogen.core.control_body(
            msg, 'FORWARD_MODULE', 2)
        mitogen.core._check_id('FORWARD_MODULE context ID', context_id)
        if not mitogen.core.is_module_name(fullname):
            raise mitogen.core.StreamError(
                'refusing FORWARD_MODULE: not a module name')
        fullname = mitogen.core.to_native(fullname)
        self.importer.request_module(
            fullname, lambda: self._send(context_id, fullname, preload=True))

    def _send(self, dst_id, fullname, preload):
        record = self.importer.get_record(fullname) or \
            mitogen.core.ModuleRecord.absent(fullname)
        sent = self._sent.setdefault(dst_id, set())
        if preload:
            for name in record.related:
                related = self.importer.get_record(name)
                if name in sent or related is None or not related.is_found:
                    continue
                self._send(dst_id, name, preload=False)
        sent.add(fullname)
        self.router.route(record.to_message(dst_id=dst_id))


# ---------------------------------------------------------------------------
# 8. Reaping child processes
# ---------------------------------------------------------------------------

# Exit signals a child's broker sends itself, and a disconnected child's
# process gets, in that order.
_REAP_SIGNALS = (signal.SIGTERM, signal.SIGKILL)


def _reap_in_background(proc):
    # A detached child may run for longer than this context: collect its
    # exit status whenever it comes, without holding up shutdown.
    def wait():
        while proc.poll() is None:
            time.sleep(0.2)
    t = threading.Thread(target=wait, name='mitogen.reap.%s' % (proc.pid,))
    t.daemon = True
    t.start()


class Reaper(object):
    """Waits for a disconnected child process to exit, on the broker thread,
    escalating to SIGTERM then SIGKILL if it lingers, so no process is left
    behind."""
    #: Seconds to wait before each signal.
    grace = (1.0, 1.0)

    def __init__(self, broker, proc, latch):
        self.broker = broker
        self.proc = proc
        self.latch = latch
        self._signals = list(_REAP_SIGNALS)
        self._deadline = None

    def start(self):
        self._deadline = now() + self.grace[0]
        self.broker.add_reaper(self)
        mitogen.core.listen(self.broker, 'exit', self._on_broker_exit)
        self._poll()

    #: Called once the process is gone.
    on_done = None

    def _done(self):
        if self.latch is not None:
            self.latch.put(None)
            self.latch = None
            if self.on_done is not None:
                self.on_done()
        self.broker.remove_reaper(self)
        mitogen.core.unlisten(self.broker, 'exit', self._on_broker_exit)

    def _poll(self):
        if self.proc.poll() is not None:
            self._done()
            return
        # After SIGKILL, wait for the exit however long a loaded machine
        # takes to deliver it: giving up would leave an unreaped process.
        if self._signals and now() >= self._deadline:
            sig = self._signals.pop(0)
            LOG.debug('%r: sending signal %d to pid %s', self, sig,
                      self.proc.pid)
            self._signal(sig)
            self._deadline = now() + self.grace[1]
        self.broker.timers.schedule(0.01, self._poll)

    def _signal(self, sig):
        # A child that is not a local process (a Paramiko channel) has no
        # pid; its proc object maps signals to what ends it.
        try:
            if hasattr(self.proc, 'send_signal'):
                self.proc.send_signal(sig)
            else:
                os.kill(self.proc.pid, sig)
        except OSError:
            pass

    def force(self):
        """Shutdown deadline passed: kill the process now and wait for it
        briefly, synchronously."""
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            _wait_for_exit(self.proc, self.grace[1])
        self._done()

    def _on_broker_exit(self):
        # The broker is gone: finish the job synchronously.
        exited = _wait_for_exit(self.proc, self.grace[0])
        for sig in self._signals:
            if exited:
                break
            self._signal(sig)
            exited = _wait_for_exit(self.proc, self.grace[1])
        self._done()


# ---------------------------------------------------------------------------
# 9. The Router: children, IDs, proxies
# ---------------------------------------------------------------------------

class Router(mitogen.core.Router):
    """A router that can start children: :meth:`connect` and one method per
    connection method (:meth:`local`, ...)."""
    context_class = Context
    #: In the master, the :class:`IdAllocator` handing out context IDs;
    #: None in a child, which asks its parent for blocks of IDs.
    id_allocator = None

    def __init__(self, broker):
        super(Router, self).__init__(broker)
        self._init_parent()

    def _init_parent(self):
        self._id_lock = threading.Lock()
        self._id_block = iter(())
        self._conns = {}
        self._reaped = {}
        self.add_handler(self._on_detaching, mitogen.core.DETACHING,
                         policy=self._from_immediate_child, overwrite=True)
        if mitogen.is_master:
            self.id_allocator = IdAllocator(self)
        else:
            # Blocks this context passed down to its children, so that it
            # can tell which child's subtree owns an ID announced with
            # ADD_ROUTE, as the master does.
            self._given_blocks = []
            self.add_handler(self._on_allocate_id, mitogen.core.ALLOCATE_ID,
                             overwrite=True)

    def allocate_id(self):
        """Return a new context ID: from the master's counter in the master,
        else from a block of IDs requested from the parent with
        :data:`mitogen.core.ALLOCATE_ID` (the parent in turn asks its own,
        up to the master)."""
        if mitogen.is_master:
            return self.id_allocator.allocate()
        with self._id_lock:
            for context_id in self._id_block:
                return context_id
            parent = mitogen.core.Context(self, mitogen.parent_id)
            start, end = parent.send_await(mitogen.core.Message(
                handle=mitogen.core.ALLOCATE_ID))
            LOG.debug('%r: allocated IDs %d..%d', self, start, end - 1)
            self._id_block = iter(range(start + 1, end))
            return start

    def route_owner(self, target_id):
        """The context this one gave `target_id` to, from the master's
        :class:`IdAllocator` or, in a child, from the blocks of IDs it
        passed down to its children; 0 when none was given it."""
        if self.id_allocator is not None:
            return self.id_allocator.owner_of(target_id) or 0
        for start, end, owner in self._given_blocks:
            if start <= target_id < end:
                return owner
        return 0

    def _on_allocate_id(self, msg):
        # A child asks for a block: ask our own parent for one (without
        # blocking the broker thread), note which child it went to, and
        # pass it down.
        if msg.is_dead:
            return
        requester = msg.src_id

        def on_reply(reply):
            try:
                start, end = reply.unpickle()
            except mitogen.core.ChannelError as e:
                self._maybe_send_dead(msg, str(e))
                return
            self._given_blocks.append((start, end, requester))
            msg.reply((start, end))
        parent = self.context_by_id(mitogen.parent_id)
        handle = self.add_handler(on_reply, persist=False, respondent=parent)
        self.route(mitogen.core.Message(
            dst_id=mitogen.parent_id, handle=mitogen.core.ALLOCATE_ID,
            reply_to=handle))

    def __enter__(self):
        # type: (_RouterT) -> _RouterT
        return self

    def __exit__(self, e_type, e_val, tb):
        # type: (Any, Any, Any) -> None
        self.broker.shutdown()
        self.broker.join()

    def connect(self, method_name, name=None, **kwargs):
        # type: (str, Optional[str], **Any) -> Context
        """Start a child with connection method `method_name` and return its
        :class:`Context`."""
        klass = resolve_transport(method_name)
        via = kwargs.pop('via', None)
        if via is not None:
            return self.proxy_connect(via, method_name, klass, name, kwargs)
        kwargs.setdefault('max_message_size', self.max_message_size)
        kwargs.setdefault('unidirectional', self.unidirectional)
        if name is not None:
            kwargs['name'] = name
        options = klass.options_class(**kwargs)
        conn = klass(options, self)
        return self._connect(conn)

    def proxy_connect(self, via_context, method_name, klass, name, kwargs):
        """Start a child of `via_context` with connection method
        `method_name` and return its :class:`Context`, named after
        `via_context` (``<via name>.<name>``).

        The intermediate needs nothing installed: it receives the module of
        the connection method through its importer."""
        target = '%s:%s' % (klass.__module__, klass.__name__)
        if name is not None:
            kwargs['name'] = name
        kwargs.setdefault('max_message_size', self.max_message_size)
        kwargs.setdefault('unidirectional', self.unidirectional)
        try:
            context_id, child_name = via_context.call(
                _proxy_connect, target, _encode_callables(kwargs))
        except mitogen.core.CallError as e:
            raise _proxy_error(e, via_context)
        child_name = u'%s.%s' % (via_context.name, child_name)
        context = self.context_by_id(context_id, name=child_name)
        context.name = child_name
        context.via = via_context
        if self.stream_by_id(context_id) is None:
            raise mitogen.core.StreamError(
                '%s started %s, but no route to it was announced'
                % (via_context.name, child_name))
        return context

    def _connect(self, conn):
        check_local_core()
        context_id = self.allocate_id()
        fd, rest = conn.connect(context_id)
        context = self.context_class(self, context_id, conn.name)
        stream = mitogen.core.Stream(
            mitogen.core.MitogenProtocol(self, context_id),
            name=u'stream.%s' % (conn.name,))
        stream.accept(fd, fd)
        stream.conn = conn
        self._conns[context_id] = conn
        self._reaped[context_id] = mitogen.core.Latch()
        mitogen.core.listen(stream, 'disconnect',
                            lambda: self._on_child_disconnect(context_id))
        # Messages read along with the ready line go before the broker first
        # polls the stream, which may already be at its end: queued ahead of
        # register()'s start_receive, with the route to the child in place.
        self._context_by_id[context_id] = context
        self.add_route(context_id, stream)
        if rest:
            self.broker.defer(stream.protocol.on_receive, self.broker, rest)
        self.register(context, stream)
        for attr in ('stderr_fd', 'tty_fd'):
            # Whatever the child or its login program writes there later
            # is logged; a pty master also must stay open for the child's
            # whole life, or its session gets SIGHUP.
            extra = getattr(conn, attr, None)
            if extra is None or extra == fd:
                continue
            err = mitogen.core.Stream(
                mitogen.core.IoLoggerProtocol(u'mitogen.ctx.%s' % conn.name,
                                              logging.INFO),
                name=u'%s.%s' % (attr[:-3], conn.name))
            err.accept(extra, extra)
            err.receive_side.keep_alive = False
            setattr(conn, attr, None)
            self.broker.start_receive(err)
        self.propagate_route(context_id, conn.name)
        if conn.proc is not None:
            self.broker.defer(self._watch_process, stream, conn.proc)
        LOG.debug('%r: connected %r (pid %s, Python %s)', self, context,
                  conn.pid, conn.remote_python_version)
        return context

    #: Seconds between checks that the process a connection started (the
    #: interpreter, or the ssh/sudo/su program in front of it) still runs.
    process_check_interval = 1.0

    def _watch_process(self, stream, proc):
        # The stream usually ends when the process does, but not always: su
        # leaves the child in a session of its own on a pty the master still
        # holds, so su dying would leave the child serving. Whatever the
        # method, once the process it started is gone the context is
        # disconnected, which ends the child.
        if stream.disconnected:
            return
        if proc.poll() is not None:
            LOG.debug('%r: process %s of %r exited; disconnecting', self,
                      proc.pid, stream)
            stream.on_disconnect(self.broker)
            return
        self.broker.timers.schedule(self.process_check_interval,
                                    lambda: self._watch_process(stream, proc))

    def __getattr__(self, name):
        # type: (str) -> Callable[..., Context]
        # router.<method>(**kwargs) for every installed connection method,
        # built-in (local, fork, sudo, ...) or third-party, each with the
        # signature and documentation of its options. Only AttributeError
        # may escape, so that hasattr() and getattr(router, name, default)
        # keep working.
        if name.startswith('_'):
            raise AttributeError(name)
        try:
            klass = resolve_transport(name)
        except TransportUnavailable as e:
            raise AttributeError('%r object has no attribute %r: %s'
                                 % (type(self).__name__, name, e))
        except Exception as e:
            raise AttributeError('%r object has no attribute %r: connection '
                                 'method %r failed to load: %s: %s'
                                 % (type(self).__name__, name, name,
                                    type(e).__name__, e))
        return _connect_method(self, name, klass)

    def __dir__(self):
        names = set(dir(type(self)))
        names.update(self.__dict__)
        for name in transport_names():
            if _IDENTIFIER.match(name):
                names.add(name)
        return sorted(names)

    def _on_stream_shutdown(self, stream):
        if stream.protocol.is_privileged:
            return
        LOG.debug('%r: asking %r to shut down', self, stream)
        stream.protocol.send(mitogen.core.Message(
            dst_id=stream.protocol.remote_id, handle=mitogen.core.SHUTDOWN,
            src_id=self.context_id, auth_id=self.context_id))

    def _on_detaching(self, msg):
        # A child detaches (ExternalContext.detach()): close the connection
        # but leave its process running; it is reaped, never killed.
        if msg.is_dead:
            return
        conn = self._conns.get(msg.src_id)
        stream = self._stream_by_id.get(msg.src_id)
        if conn is None or stream is None:
            return
        LOG.debug('%r: %s detached', self, conn.name)
        conn.detached = True
        stream.on_disconnect(self.broker)

    def _on_child_disconnect(self, context_id):
        # Ancestors learn the context is gone only once its process is, so
        # shutdown(wait=True) from any of them means "nothing left running".
        conn = self._conns.pop(context_id, None)
        proc = conn and conn.proc
        if proc is not None and conn.detached:
            _reap_in_background(proc)
        if proc is None or conn.detached:
            self._reaped[context_id].put(None)
            self.propagate_del_route(context_id)
            return
        reaper = Reaper(self.broker, proc, self._reaped[context_id])
        reaper.on_done = lambda: self.propagate_del_route(context_id)
        reaper.start()

    def _wait_reaped(self, context, timeout=10.0):
        latch = self._reaped.get(context.context_id)
        if latch is not None:
            try:
                latch.get(timeout=timeout)
            except mitogen.core.TimeoutError:
                LOG.warning('%r: %r still running after %.1f s', self,
                            context, timeout)
            else:
                latch.put(None)

    def disconnect(self, context):
        """Disconnect `context` at once, without a graceful shutdown. A
        context reached through another is disconnected by its own parent;
        the contexts on the way are left alone."""
        stream = self._stream_by_id.get(context.context_id)
        if stream is None:
            return
        if stream.protocol.remote_id != context.context_id:
            hop = self.context_by_id(stream.protocol.remote_id)
            hop.call_no_reply(_disconnect_descendant, context.context_id)
            return
        self.broker.defer(stream.on_disconnect, self.broker)

    def disconnect_all(self):
        """Disconnect every directly connected child."""
        for context_id in list(self._conns):
            self.disconnect(self.context_by_id(context_id))


#: Number of context IDs handed to a child in one ALLOCATE_ID reply.
ID_BLOCK_SIZE = 1000


class IdAllocator(object):
    """Hands out context IDs in the master: one at a time to the master's
    own router, in blocks to children that start children of their own
    (:data:`mitogen.core.ALLOCATE_ID`). It remembers which context received
    each block, so a route announced for an ID can be checked against the
    subtree that owns it."""

    def __init__(self, router):
        self.router = router
        self.lock = threading.Lock()
        self.next_id = 1
        self._blocks = []
        router.add_handler(self._on_allocate_id, mitogen.core.ALLOCATE_ID)

    def __repr__(self):
        return 'IdAllocator(next_id=%d)' % (self.next_id,)

    def allocate(self):
        """Return one new ID."""
        with self.lock:
            context_id = self.next_id
            self.next_id += 1
            return context_id

    def allocate_block(self, owner_id):
        """Return `(start, end)`: IDs start..end-1 now belong to
        `owner_id`.

        :raises mitogen.core.Error: when the IDs a header can carry are
            used up."""
        with self.lock:
            start = self.next_id
            if start + ID_BLOCK_SIZE > mitogen.core.MAX_ID:
                raise mitogen.core.Error('context IDs are used up')
            self.next_id += ID_BLOCK_SIZE
            self._blocks.append((start, self.next_id, owner_id))
            return start, self.next_id

    def owner_of(self, context_id):
        """The context that was given `context_id` in a block, 0 if the
        master allocated it itself, or None if it was never allocated."""
        with self.lock:
            if context_id >= self.next_id:
                return None
            for start, end, owner in self._blocks:
                if start <= context_id < end:
                    return owner
        return 0

    def _on_allocate_id(self, msg):
        if msg.is_dead:
            return
        try:
            start, end = self.allocate_block(msg.src_id)
        except mitogen.core.Error as e:
            self.router._maybe_send_dead(msg, str(e))
            return
        LOG.debug('%r: IDs %d..%d to context %d', self, start, end - 1,
                  msg.src_id)
        msg.reply((start, end))


def upgrade_router(econtext):
    """Give the router of a child context the abilities of a parent (start
    children, allocate IDs, forward modules) the first time it needs them.
    Returns the router.

    The router is upgraded in place, by making its class :class:`Router`:
    the core creates it at boot, before this module can even be imported
    (it arrives through that router's importer), and by the time a child
    starts children of its own, streams, handlers, contexts and user code
    all hold it. A new router object would mean moving every one of those
    registrations and references; changing the class of the one object
    keeps them all. That is why :class:`Router` adds only methods and
    class attributes to :class:`mitogen.core.Router`, and sets up the
    state they need in one place, ``_init_parent()``, which its constructor
    and this function both call."""
    router = econtext.router
    if not isinstance(router, Router):
        router.__class__ = Router
        router._init_parent()
        router.forwarder = ModuleForwarder(router, econtext.parent,
                                           econtext.importer)
    return router


def _encode_callables(kwargs):
    # Functions cannot travel through the restricted unpickler; they travel
    # by name and the intermediate imports them.
    out = {}
    for key, value in kwargs.items():
        if callable(value):
            value = ('__mitogen_callable__',) + _describe_function(value)
        out[key] = value
    return out


def _decode_callables(kwargs):
    out = {}
    for key, value in kwargs.items():
        key = mitogen.core.to_native(key)
        if isinstance(value, tuple) and len(value) == 4 and \
                value[0] == '__mitogen_callable__':
            _, modname, klass, fname = value
            modname = mitogen.core.to_native(modname)
            __import__(modname)
            obj = sys.modules[modname]
            if klass:
                obj = getattr(obj, mitogen.core.to_native(klass))
            value = getattr(obj, mitogen.core.to_native(fname))
        elif isinstance(value, list):
            value = [mitogen.core.to_text(v)
                     if isinstance(v, mitogen.core.BytesType) else v
                     for v in value]
        out[key] = value
    return out


@mitogen.core.takes_econtext
def _disconnect_descendant(context_id, econtext):
    """Run by :meth:`Router.disconnect` in the next context on the way to
    `context_id`."""
    router = upgrade_router(econtext)
    router.disconnect(router.context_by_id(context_id))


@mitogen.core.takes_econtext
def _proxy_connect(target, kwargs, econtext):
    """Run in an intermediate context by :meth:`Router.proxy_connect`: start
    a child with the connection class named by `target` ("module:Class")."""
    router = upgrade_router(econtext)
    modname, _, attr = mitogen.core.to_native(target).partition(':')
    __import__(modname)
    klass = getattr(sys.modules[modname], attr)
    options = klass.options_class(**_decode_callables(kwargs))
    context = router._connect(klass(options, router))
    return context.context_id, context.name


#: Connection errors rebuilt from a CallError by :func:`_proxy_error`,
#: keyed by the remote type's fully qualified name; filled by
#: :func:`register_proxy_error`.
_PROXY_ERRORS = {}


def register_proxy_error(cls):
    """Declare `cls`, an exception type a connection method raises when a
    connection fails, so that it reaches the caller with its own type when
    the connection is made through another context (``via=``).

    There the intermediate context makes the connection, and its error
    comes back as a :class:`mitogen.core.CallError` naming the remote type
    (``module.Name``); the caller's :class:`Router` turns a CallError whose
    type is registered back into that type, with the intermediate's name
    added to the message. Other errors stay CallErrors.

    Call it at import time of the module defining `cls`, or use it as a
    class decorator; it returns `cls`. The errors of this module and of
    :mod:`mitogen.core` that connections raise are registered here;
    :mod:`mitogen.ssh` registers :class:`mitogen.ssh.HostKeyError`.
    """
    _PROXY_ERRORS['%s.%s' % (cls.__module__, cls.__name__)] = cls
    return cls


for _cls in (EofError, PasswordError, PasswordRequiredError,
             PasswordRefusedError, CoreVersionError, mitogen.core.TimeoutError,
             mitogen.core.StreamError):
    register_proxy_error(_cls)
del _cls


def _proxy_error(e, via_context):
    cls = _PROXY_ERRORS.get(e.type_name)
    if cls is None:
        return e
    return cls('%s (via %s)' % (e.remote_message, via_context.name))
