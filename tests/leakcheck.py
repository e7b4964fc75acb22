"""
Detect file descriptors, threads and processes that a test leaves behind.

A :class:`Snapshot` is taken before a test and compared after it, once every
function-scoped fixture has been torn down.  Some resources go away
asynchronously (a broker thread closing its fds, a child process exiting
after its parent closed its stdin), so :func:`find_leaks` polls until the
difference is gone or a per-kind settle time has passed.

What counts as a leak:

fds
    an (fd number, target) pair in ``/proc/self/fd`` that was not there
    before: a new fd, or an old number now pointing somewhere else.
threads
    a :class:`threading.Thread` alive now that was not alive before.
processes
    a live process that was not there before and is either a child of this
    process, or carries this test's tag in its environment.  The tag
    (:data:`TAG_VARIABLE`) is set in ``os.environ`` for the duration of the
    test, so it reaches every descendant that inherits the environment --
    including orphans re-parented to PID 1, which a parent-PID scan alone
    would miss.
"""
import os
import threading
import time
import uuid

#: Environment variable holding the tag of the test currently running.
TAG_VARIABLE = 'MITOGEN_TEST_LEAK_TAG'

#: Seconds to wait for each kind of resource to go away by itself.
FD_SETTLE = 2.0
THREAD_SETTLE = 5.0
PROCESS_SETTLE = 5.0


def open_fds():
    """Return ``{fd: target}`` for every fd of this process."""
    fds = {}
    for name in os.listdir('/proc/self/fd'):
        try:
            fds[int(name)] = os.readlink('/proc/self/fd/' + name)
        except OSError:
            # The directory fd os.listdir() used is closed by now.
            pass
    return fds


def live_threads():
    return {t for t in threading.enumerate() if t.is_alive()}


def _read(path, mode='r'):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def process_status(pid):
    """Return ``(ppid, state, command)`` of `pid`, or None if it is gone."""
    stat = _read('/proc/%d/stat' % pid)
    if stat is None:
        return None
    # "pid (comm) state ppid ...": comm may itself hold spaces and parens.
    fields = stat[stat.rfind(')') + 2:].split()
    cmdline = _read('/proc/%d/cmdline' % pid, 'rb') or b''
    command = cmdline.replace(b'\0', b' ').decode('utf-8', 'replace').strip()
    if not command:
        command = stat[stat.find('(') + 1:stat.rfind(')')]
    return int(fields[1]), fields[0], command


def _pids():
    return [int(name) for name in os.listdir('/proc') if name.isdigit()]


def related_processes(tag=None):
    """
    Return ``{pid: (ppid, state, command)}`` of this process's children and
    of every process whose environment carries `tag`.
    """
    me = os.getpid()
    marker = None if tag is None else ('%s=%s' % (TAG_VARIABLE, tag)).encode()
    found = {}
    for pid in _pids():
        if pid == me:
            continue
        status = process_status(pid)
        if status is None:
            continue
        if status[0] == me:
            found[pid] = status
        elif marker is not None:
            environ = _read('/proc/%d/environ' % pid, 'rb')
            if environ and marker in environ.split(b'\0'):
                found[pid] = status
    return found


class Snapshot(object):
    """What this process holds at one moment; see the module docstring."""

    def __init__(self, tag=None):
        self.tag = tag
        self.fds = open_fds()
        self.threads = live_threads()
        self.processes = related_processes(tag)

    def new_fds(self):
        before = set(self.fds.items())
        return sorted(item for item in open_fds().items() if item not in before)

    def new_threads(self):
        return sorted(live_threads() - self.threads, key=lambda t: t.name)

    def new_processes(self):
        return sorted(
            (pid, status)
            for pid, status in related_processes(self.tag).items()
            if pid not in self.processes
        )


def find_leaks(snapshot, fd_settle=None, thread_settle=None,
               process_settle=None):
    """
    Compare the present with `snapshot`, waiting up to the settle times
    (default: this module's ``*_SETTLE``) for stragglers, and return a list
    of human-readable leak descriptions (empty if nothing leaked).
    """
    fd_settle = FD_SETTLE if fd_settle is None else fd_settle
    thread_settle = THREAD_SETTLE if thread_settle is None else thread_settle
    process_settle = PROCESS_SETTLE if process_settle is None else process_settle
    start = time.monotonic()
    checks = [
        ('fd', snapshot.new_fds, fd_settle,
         lambda item: 'fd %d -> %s' % item),
        ('thread', snapshot.new_threads, thread_settle,
         lambda t: 'thread %r (daemon=%s)' % (t.name, t.daemon)),
        ('process', snapshot.new_processes, process_settle,
         lambda item: 'process %d (ppid %d, state %s): %s' % (
             (item[0],) + item[1])),
    ]
    leaks = {}
    delay = 0.005
    while checks:
        now = time.monotonic() - start
        pending = []
        for check in checks:
            kind, find, settle, describe = check
            found = find()
            if found and now < settle:
                pending.append(check)
            elif found:
                leaks[kind] = [describe(item) for item in found]
        checks = pending
        if checks:
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    return [line for kind in ('fd', 'thread', 'process')
            for line in leaks.get(kind, ())]


def kill_new_processes(snapshot):
    """SIGKILL and reap the processes a leaking test left, so that they
    cannot disturb the tests after it."""
    for pid, _ in snapshot.new_processes():
        try:
            os.kill(pid, 9)
        except OSError:
            continue
    deadline = time.monotonic() + 2
    for pid, (ppid, _, _) in snapshot.new_processes():
        if ppid != os.getpid():
            continue
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.01)


class tagged(object):
    """Context manager: sets a fresh :data:`TAG_VARIABLE` in ``os.environ``
    and takes a :class:`Snapshot` carrying it."""

    def __enter__(self):
        self.previous = os.environ.get(TAG_VARIABLE)
        tag = uuid.uuid4().hex
        os.environ[TAG_VARIABLE] = tag
        self.snapshot = Snapshot(tag)
        return self.snapshot

    def __exit__(self, *exc):
        if self.previous is None:
            os.environ.pop(TAG_VARIABLE, None)
        else:
            os.environ[TAG_VARIABLE] = self.previous
