# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``fork`` connection method: a child context made by forking the process
that starts it (the master, or with ``via=`` another context), Linux and
other UNIXes.

The fork inherits everything the forking process holds: imported modules,
data, open files, locks. What the fork cannot use is cleaned up before the
child context starts:

* Only the forking thread survives, so locks held by other threads at the
  moment of the fork stay held forever. The fork never touches a mitogen
  object of the forking process (broker, router, streams, latches); it
  builds a new :class:`mitogen.core.ExternalContext` of its own. The locks
  of the ``logging`` package are replaced, and every logging handler of
  the forking process is removed (their files are closed, see below):
  records of the fork reach the master through the new context.
* Every inherited file descriptor except stdio and the new context's socket
  is closed, so pipes and sockets of the forking process (its own children's
  streams among them) end when the forking process closes them.
* The pseudo-random generators are reseeded (``random``, and OpenSSL's
  through ``ssl.RAND_add()`` if ``ssl`` is loaded and older than 1.1.1,
  which reseeds itself after a fork), so no two forks share a random
  sequence with each other or with their parent.
* The importer is shared: modules imported before the fork need no request,
  and in a forking child the new importer starts with everything the old
  one had fetched.

SIGTERM gets its default action back, so that the parent can always end
the fork. Anything else (third-party connection pools, threads the program
relies on, other signal handlers) is the program's to fix up in
``on_fork``.

A program that forks by itself calls :func:`on_fork` in the child, which
does the part of this cleanup that suits any fork.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

__all__ = ['Connection', 'Options', 'Process', 'on_fork']

import errno
import gc
import logging
import os
import random
import signal
import socket
import sys
import threading
import traceback
import warnings

import mitogen
import mitogen.core
import mitogen.parent
from mitogen.core import LOG, now


class Options(mitogen.parent.Options):
    """Options of :meth:`mitogen.parent.Router.fork`; see also
    :class:`mitogen.parent.Options` (`python_path` does not apply: the fork
    runs the interpreter of the process it was forked from).

    :param on_fork: called as ``on_fork()`` in the fork, after the cleanup
        described in :mod:`mitogen.fork` and before the child context
        starts: the place to reset program state the fork must not share
        with its parent.
    :param on_start: called as ``on_start(econtext)`` in the fork with its
        :class:`mitogen.core.ExternalContext` once the context runs, before
        it serves the first call: a custom main function that can use data
        inherited from the parent that could never be serialized.
    """
    on_fork = None
    on_start = None

    def __init__(self, max_message_size, on_fork=None, on_start=None,
                 **kwargs):
        if kwargs.get('python_path'):
            raise TypeError('fork() takes no python_path: the fork runs the '
                            'interpreter of the process it is forked from')
        for name, value in (('on_fork', on_fork), ('on_start', on_start)):
            if value is not None and not callable(value):
                raise TypeError('%s must be callable, not %r'
                                % (name, value))
        super(Options, self).__init__(max_message_size, **kwargs)
        self.on_fork = on_fork
        self.on_start = on_start


class Process(object):
    """The forked child as its parent's :class:`mitogen.parent.Router` sees
    it: the part of ``subprocess.Popen`` it uses (:attr:`pid`,
    :attr:`returncode`, :meth:`poll`, :meth:`wait`, :meth:`kill`)."""

    def __init__(self, pid):
        #: Process ID of the fork.
        self.pid = pid
        #: None while running; the exit status, or minus the signal number
        #: that killed it, once reaped.
        self.returncode = None

    def __repr__(self):
        return 'fork.Process(pid=%d, returncode=%r)' % (self.pid,
                                                        self.returncode)

    def poll(self):
        """Reap the fork if it exited; return :attr:`returncode`."""
        return self._wait(os.WNOHANG)

    def wait(self):
        """Wait for the fork to exit; return :attr:`returncode`."""
        while self._wait(0) is None:
            pass
        return self.returncode

    def kill(self):
        """Send SIGKILL, unless the fork was already reaped."""
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError as e:
                if e.args[0] != errno.ESRCH:
                    raise

    def _wait(self, flags):
        if self.returncode is not None:
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, flags)
        except OSError as e:
            if e.args[0] == errno.EINTR:
                return None
            if e.args[0] != errno.ECHILD:
                raise
            # Reaped by someone else (SIGCHLD ignored by the program, ...):
            # gone, with an unknown status, reported as subprocess does.
            self.returncode = 0
            return 0
        if pid == self.pid:
            self.returncode = _convert_exit_status(status)
        return self.returncode


def _convert_exit_status(status):
    """Return the ``os.waitpid()`` `status` as ``subprocess`` reports a
    return code: minus the signal number when a signal killed the process,
    else its exit status."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class Connection(mitogen.parent.Connection):
    """Forks this process into a child context connected through a socket
    pair. No interpreter is started and no core is sent: the fork already
    runs this process's mitogen, and announces itself with the same ready
    line a bootstrapped child writes."""
    options_class = Options
    name_prefix = u'fork'

    def _describe(self):
        return '%s (forked from pid %d)' % (self.options.name or
                                           self.name_prefix, os.getpid())

    def connect(self, context_id, name_hint=None):
        """Fork, and return this side of the fork's socket once the fork's
        context is ready, with any bytes received after the ready line."""
        deadline = now() + self.options.connect_timeout
        self.stderr_fd = None
        # Everything the fork needs is gathered before forking: afterwards
        # the fork must not take locks other threads of this process may
        # have held at the moment of the fork.
        parent_ids = [mitogen.context_id] + list(mitogen.parent_ids)
        config = self.get_config(context_id, parent_ids, self.options.name)
        setup = _ForkSetup(config, mitogen.parent.get_core_compressed(),
                           self.options)
        parent_sock, child_sock = socket.socketpair()
        try:
            for sock in (parent_sock, child_sock):
                mitogen.parent._enlarge_buffers(sock)
            pid = _fork()
            if pid == 0:
                setup.run_child(parent_sock, child_sock)
            fd = os.dup(parent_sock.fileno())
        finally:
            child_sock.close()
            parent_sock.close()
        self.proc = Process(pid)
        self.pid = pid
        self.name = self.options.name or u'%s.%d' % (self.name_prefix, pid)
        LOG.debug('%r: forked %s', self, self.name)
        try:
            self._marker_line = None
            rest = self._read_until(fd, b'MITO001', deadline)
            self._check_version(self._marker_line)
            return fd, rest
        except BaseException:
            os.close(fd)
            self.proc.kill()
            self.proc.wait()
            raise


# Serialises forks: warnings.catch_warnings() is not thread-safe.
_fork_lock = threading.Lock()


def _fork():
    # Python 3.12+ warns that forking a process with threads may deadlock
    # the child; the fork reinitialises what it uses instead (see the module
    # docstring), so that warning is noise here.
    with _fork_lock:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)
            return os.fork()


def _find_importers():
    return [f for f in sys.meta_path
            if isinstance(f, mitogen.core.Importer)]


#: Objects the fork dropped from the state it inherited (logging handlers,
#: standard streams). Their files were closed by number; were they ever
#: freed, their destructors would close whatever reused those numbers, so
#: they are kept until the fork exits.
_inherited_leftovers = []


class _ForkSetup(object):
    """What the fork does between ``os.fork()`` and running its context.
    Holds only data gathered by the parent before forking."""

    def __init__(self, config, core_compressed, options):
        self.config = config
        # The core the fork's own children will receive, taken already
        # compressed so that no fork spends time compressing it again.
        self.core_compressed = core_compressed
        self.on_fork = options.on_fork
        self.on_start = options.on_start
        self.name = options.name
        self.was_master = mitogen.is_master

    def run_child(self, parent_sock, child_sock):
        """Run in the fork; never returns, whatever happens."""
        status = 1
        fd = None
        try:
            fd = os.dup(child_sock.fileno())
            child_sock.close()
            parent_sock.close()
            econtext = self._prepare(fd)
        except BaseException:
            # Before the ready line the socket carries text: the parent
            # puts it in the error it raises.
            self._report(fd, 'mitogen: the fork failed to start:\n%s'
                         % (traceback.format_exc(),))
            os._exit(1)
        try:
            econtext.main()
            status = 0
        except BaseException:
            self._report(2, 'mitogen: the fork failed:\n%s'
                         % (traceback.format_exc(),))
        finally:
            os._exit(status)

    @staticmethod
    def _report(fd, text):
        if fd is None:
            fd = 2
        try:
            os.write(fd, text.encode('utf-8', 'replace'))
        except Exception:
            pass

    def _prepare(self, fd):
        _reset_signals()
        on_fork()
        try:
            os.setsid()
        except OSError:
            pass
        _freeze_inherited_garbage()
        _close_inherited_fds(fd)
        _reset_logging()
        _inherited_leftovers.extend([sys.stdin, sys.stdout, sys.stderr])
        old_importers = _find_importers()
        for importer in old_importers:
            sys.meta_path.remove(importer)
        if self.on_fork is not None:
            self.on_fork()
        config = dict(self.config)
        config['in_fd'] = fd
        config['out_fd'] = fd
        config['name'] = self.name or u'fork.%d' % (os.getpid(),)
        econtext = _ForkedContext(config)
        econtext.core_compressed = self.core_compressed
        econtext.ready_line = mitogen.core.ready_line()
        econtext.inherited_importers = old_importers
        econtext.inherited_main = self._inherited_main()
        if self.on_start is not None:
            econtext.on_start = _reporting(self.on_start)
        return econtext

    def _inherited_main(self):
        main = sys.modules.get('__main__')
        if self.was_master:
            return main
        # A child has the parent's __main__ only if it loaded it for a call.
        if isinstance(getattr(main, '__loader__', None),
                      mitogen.core.Importer):
            return main
        return None


def _reporting(on_start):
    def call_on_start(econtext):
        try:
            on_start(econtext)
        except Exception:
            LOG.exception('on_start function %r failed', on_start)
            raise
    return call_on_start


def _reset_signals():
    # The forking program's SIGTERM handler would act on its own state; the
    # fork must end when its parent's reaper sends SIGTERM.
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError):
        pass


# The process the module-level locks belong to. on_fork() replaces them only
# in another one, a fork, where the threads that may have held them at the
# moment of the fork do not exist.
_locks_pid = os.getpid()


def on_fork():
    """Reset what a process using mitogen must not share with a child it
    forks: call it in the child after ``os.fork()`` when the program forks
    by itself (a fork made by :meth:`mitogen.parent.Router.fork` does it
    already).

    It reseeds the pseudo-random generators (``random``, and OpenSSL's if
    ``ssl`` is loaded and older than 1.1.1, whose generator reseeds itself
    in a forked child), discards the state latches share
    (:meth:`mitogen.core.Latch._on_fork`), and, in a process other than the
    one that last called it or imported this module, replaces module-level
    locks another thread may have held at the moment of the fork (those of
    ``logging`` among them). Safe to call at any time, in any process, as
    often as wanted: in the same process it touches no lock."""
    global _locks_pid
    if os.getpid() != _locks_pid:
        _locks_pid = os.getpid()
        _reset_locks()
    _reseed_prngs()
    mitogen.core.Latch._on_fork()


def _reset_locks():
    # Module-level locks another thread may have held when the fork
    # happened. (Python 3.7+ resets logging's own at fork; 2.7 and 3.6 do
    # not.)
    logging._lock = threading.RLock()
    mitogen.parent._core_lock = threading.Lock()
    # The service pool itself is per process (it is rebuilt in a process
    # of another pid); the lock guarding it is not.
    service = sys.modules.get('mitogen.service')
    if service is not None:
        service._pool_lock = threading.RLock()


#: OpenSSL reseeds its generator in a forked child by itself from 1.1.1 on.
_OPENSSL_FORK_SAFE = (1, 1, 1)


def _reseed_prngs():
    random.seed()
    ssl = sys.modules.get('ssl')
    # Adding entropy to an OpenSSL that reseeds itself after a fork only
    # costs time: 1 to 5 ms of CPU in a fresh fork with OpenSSL 3, paid by
    # every worker Mitogen for Ansible forks.
    if (ssl is not None and hasattr(ssl, 'RAND_add') and
            getattr(ssl, 'OPENSSL_VERSION_INFO', (0,)) < _OPENSSL_FORK_SAFE):
        ssl.RAND_add(os.urandom(32), 32.0)


def _freeze_inherited_garbage():
    # Unreachable cycles inherited from the parent may hold objects owning
    # file descriptors. Collected after those numbers were closed and
    # reused, they would close the fork's own descriptors: freeze them
    # (never collected) where Python can, else collect them now, while
    # their descriptors are still theirs.
    if hasattr(gc, 'freeze'):
        gc.freeze()
    else:
        gc.collect()


def _close_inherited_fds(keep):
    try:
        highest = max(int(n) for n in os.listdir('/proc/self/fd'))
    except (OSError, ValueError):
        try:
            highest = os.sysconf('SC_OPEN_MAX')
        except (ValueError, OSError):
            highest = 65536
    os.closerange(3, keep)
    os.closerange(keep + 1, max(highest + 1, keep + 1))


def _reset_logging():
    # The handlers write to files just closed; records of the fork go to
    # the master through the handler its context installs.
    manager = logging.Logger.manager
    loggers = [logging.getLogger()] + [
        lg for lg in list(manager.loggerDict.values())
        if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            _inherited_leftovers.append(handler)


class _ForkedContext(mitogen.core.ExternalContext):
    """The child context of a fork: shares the importer state and the
    ``__main__`` module it inherited."""
    inherited_importers = ()
    inherited_main = None

    def _setup_importer(self):
        super(_ForkedContext, self)._setup_importer()
        new = self.importer
        for old in self.inherited_importers:
            # Modules the forking child fetched need no new round trip.
            new.inherit(old)
        if self.inherited_importers:
            self._adopt_modules(new)

    def _adopt_modules(self, new):
        # Modules loaded by the old importer still name it as their loader,
        # and importlib.resources, get_source() and reload() would go
        # through it, to a router that does not exist in the fork.
        old = self.inherited_importers
        for module in list(sys.modules.values()):
            if any(getattr(module, '__loader__', None) is o for o in old):
                module.__loader__ = new
            spec = getattr(module, '__spec__', None)
            if any(getattr(spec, 'loader', None) is o for o in old):
                spec.loader = new

    def importer_main(self):
        if self._main_module is None and self.inherited_main is not None:
            self._main_module = self.inherited_main
        return super(_ForkedContext, self).importer_main()
