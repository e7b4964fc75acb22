"""
Real Podman containers for the tests (``TESTENV.md`` section 7), as the
pytest plugin behind the ``podman_container`` fixture.

A container runs ``sleep`` in the root file system that ``scripts/setup``
builds under :data:`ROOTFS`: Debian's minbase with only ``python3-minimal``
(no ``decimal``, ``pstats``, ...). It has no network (``--network none``:
podman's default network would change the machine's firewall and
forwarding), runs with ``runc`` (``crun`` cannot set the rlimits of this
kind of machine) and is named after this process, as several test sessions
may share the machine. It is removed, with every process in it, when the
session ends.

``full_python_container`` is the same with this machine's pyenv Python
3.11 mounted read-only at its own path (:data:`FULL_PYTHON`), for clients
such as Ansible's modules that need the whole standard library.

Tests are skipped, with the reason, when the suite does not run as root,
podman is not installed or the root file system was not built.
"""
import os
import shutil
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The root file system of the containers, built by ``scripts/setup``.
ROOTFS = os.path.join(ROOT, 'tests', '.cache', 'rootfs-python3-minimal')
#: The interpreter of the root file system.
CONTAINER_PYTHON = 'python3'

#: A complete interpreter of this machine, mounted into
#: ``full_python_container`` at the same path (its shared library is found
#: through an absolute RPATH).
FULL_PYTHON_HOME = '/root/.pyenv/versions/3.11.7'
FULL_PYTHON = FULL_PYTHON_HOME + '/bin/python3.11'

#: Options of every ``podman run`` of the tests.
RUN_OPTIONS = ['--runtime', 'runc', '--network', 'none',
               '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096']


def unavailable():
    """Why no container can be started here, or None."""
    if os.geteuid() != 0:
        return 'podman containers need root'
    if shutil.which('podman') is None or shutil.which('runc') is None:
        return 'podman and runc are not installed (run scripts/setup)'
    if not os.path.isfile(ROOTFS + '.done'):
        return 'no container root file system at %s (run scripts/setup)' % (
            ROOTFS,)
    return None


def podman(*args, check=True, timeout=60):
    """Run ``podman ARGS``; return its completed process."""
    return subprocess.run(
        ['podman'] + list(args), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
        check=check)


class Container(object):
    """A running container: its `name` and the host PID of its first
    process (`pid`)."""

    def __init__(self, name, options=()):
        self.name = name
        self.options = list(options)
        self.pid = None

    def start(self):
        podman('run', '-d', '--name', self.name, *RUN_OPTIONS,
               *self.options, '--rootfs', ROOTFS, 'sleep', '3600')
        out = podman('inspect', '--format={{.State.Pid}}', self.name)
        self.pid = int(out.stdout.strip())
        return self

    def stop(self):
        podman('stop', '--time', '0', self.name)

    def remove(self):
        podman('rm', '--force', '--time', '0', self.name, check=False)


def container_name(tag):
    return 'mitogen-test-%s-%d-%d' % (tag, os.getpid(), int(time.time()))


@pytest.fixture(scope='session')
def podman_container():
    """A running :class:`Container` shared by the session."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    container = Container(container_name('main'))
    try:
        yield container.start()
    finally:
        container.remove()


@pytest.fixture(scope='session')
def full_python_container():
    """A running :class:`Container` where :data:`FULL_PYTHON` exists."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    if not os.path.exists(FULL_PYTHON):
        pytest.skip('%s is not installed' % (FULL_PYTHON,))
    container = Container(container_name('full'), [
        '--volume', '%s:%s:ro' % (FULL_PYTHON_HOME, FULL_PYTHON_HOME)])
    try:
        yield container.start()
    finally:
        container.remove()


@pytest.fixture
def stopped_container():
    """A container that exists but is not running, for one test."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    container = Container(container_name('stopped'))
    try:
        container.start().stop()
        yield container
    finally:
        container.remove()


def _parent(pid):
    with open('/proc/%d/stat' % pid) as f:
        stat = f.read()
    return int(stat[stat.rfind(')') + 2:].split()[1])


def host_pid(container, ns_pid):
    """The PID on this machine of the process whose PID inside
    `container` is `ns_pid`."""
    ns = os.stat('/proc/%d/ns/pid' % (container.pid,)).st_ino
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            if os.stat('/proc/%s/ns/pid' % (entry,)).st_ino != ns:
                continue
            with open('/proc/%s/status' % (entry,)) as f:
                for line in f:
                    if line.startswith('NSpid:') and \
                            int(line.split()[-1]) == ns_pid:
                        return int(entry)
        except OSError:
            continue
    raise LookupError('no process %d in container %s' % (ns_pid,
                                                          container.name))


def host_lineage(container, ns_pid):
    """Host PIDs of the process `ns_pid` of `container` and of its
    ancestors up to, not including, PID 1 or this process (for ``podman
    exec``: the child and the conmon that watches its exec session; for
    setns: the child and the process that forked it into the
    namespace)."""
    pids = []
    pid = host_pid(container, ns_pid)
    while pid > 1 and pid != os.getpid():
        pids.append(pid)
        pid = _parent(pid)
    return pids
