"""
Conformance suite: every connection method passes the same tests,
unchanged -- local, fork, ssh (OpenSSH client), paramiko, sudo, su, doas,
podman and setns (into a real container whose only Python is Debian's
``python3-minimal``, see :mod:`containers`) and the third-party example
plugin of ``tests/example_transport``.

For each method a :class:`Transport` says how to start a child with it;
the tests only use the public API on the context they get: a call returns,
a remote exception keeps its type name, a package that exists only on the
master is imported there, 32 MiB pass each way, log records arrive on the
master's ``mitogen.ctx.<name>`` logger, ``shutdown(wait=True)`` ends the
child and every program between it and the master (ssh client, sshd
session, sudo, su, doas), and so does a disconnect. How each method fails
to log in is the subject of the login-failure suite
(``tests/test_login_failures.py``).

Contexts that a test only calls are shared per method (module scope);
tests that end a context start their own. ssh and paramiko use the private
sshd of :mod:`sshd`; sudo, su and doas the accounts and rules of
:mod:`users` (doas is skipped, with the reason, where it is not
installed); children of non-root accounts run ``/usr/bin/python3``.
"""
import hashlib
import importlib
import logging
import os
import signal
import sys
import time

import pytest

import mitogen.core
import mitogen.master
import mitogen.parent
import containers
import sites
from logcapture import Collect
from support import conformance_funcs as funcs
from support import tree_helpers

#: The interpreter every account has (root's ``python3`` over ssh is a
#: pyenv shim; other accounts cannot run root's interpreters).
SYSTEM_PYTHON = '/usr/bin/python3'

#: Seconds within which a process must be gone or a record arrive.
PROMPTLY = 10.0

MIB32 = 32 * 1024 * 1024

#: A package written for this module into a directory only the master has
#: on its ``sys.path``; the master never imports it itself.
MASTER_ONLY_PACKAGE = 'conformance_master_only'
MASTER_ONLY_ANSWER = u'served by the master'

METHODS = ['local', 'fork', 'ssh', 'paramiko', 'sudo', 'su', 'doas',
           'podman', 'setns', 'example']


class Transport(object):
    """How to start a child with one connection method.

    .. attribute:: stop_pids

       Where :func:`conformance_funcs.lineage` stops walking up from the
       child: this process, and the sshd listener for ssh logins.

    .. attribute:: kill

       ``kill(conn)`` ends the process (or, for paramiko, the connection)
       that carries the child's stream, or None where the child is the
       only process the method starts.
    """
    kill = None

    #: None, or ``host_pids(context)``: the PIDs on this machine of the
    #: child and the programs between, for children whose own PIDs are
    #: those of another PID namespace (containers).
    host_pids = None

    def __init__(self, name, connect, stop_pids=()):
        self.name = name
        self._connect = connect
        self.stop_pids = [os.getpid()] + list(stop_pids)

    def __repr__(self):
        return 'Transport(%r)' % (self.name,)

    def connect(self, router):
        return self._connect(router)


def sigkill_process(conn):
    os.kill(conn.pid, signal.SIGKILL)


def kill_paramiko_connection(conn):
    # No process of its own: its proc object closes the channel and the
    # SSH connection.
    conn.proc.kill()


def make_transport(name, request):
    if name == 'local':
        return Transport(name, lambda router: router.local(
            python_path=sys.executable))
    if name == 'fork':
        return Transport(name, lambda router: router.fork())
    if name == 'example':
        request.getfixturevalue('example_plugin')
        return Transport(name, lambda router: router.connect(
            'example', python_path=sys.executable))
    if name == 'ssh':
        sshd = request.getfixturevalue('sshd')
        transport = Transport(name, lambda router: router.ssh(
            **sshd.ssh_kwargs(python_path=SYSTEM_PYTHON)),
            stop_pids=[sshd.proc.pid])
        transport.kill = sigkill_process
        return transport
    if name == 'paramiko':
        try:
            import paramiko  # noqa: F401
            import mitogen.paramiko  # noqa: F401
        except ImportError:
            pytest.skip('paramiko transport not installed')
        sshd = request.getfixturevalue('sshd')
        transport = Transport(name, lambda router: router.paramiko(
            hostname=sshd.host, port=sshd.port, username='root',
            identity_file=sshd.client_key, known_hosts_file=sshd.known_hosts,
            python_path=SYSTEM_PYTHON, connect_timeout=30),
            stop_pids=[sshd.proc.pid])
        transport.kill = kill_paramiko_connection
        return transport
    if name in ('podman', 'setns'):
        container = request.getfixturevalue('podman_container')
        if name == 'podman':
            transport = Transport(name, lambda router: router.podman(
                container=container.name))
        else:
            # podman answers docker's "inspect --format={{.State.Pid}}".
            transport = Transport(name, lambda router: router.setns(
                container=container.name, kind='docker',
                docker_path='podman'))
        transport.kill = sigkill_process
        transport.host_pids = lambda context: containers.host_lineage(
            container, context.call(os.getpid))
        return transport
    users = request.getfixturevalue('test_users')
    if name == 'sudo':
        transport = Transport(name, lambda router: router.sudo(
            username=users.nopass, python_path=users.python))
        transport.kill = sigkill_process
        return transport
    if name == 'su':
        transport = Transport(name, lambda router: router.su(
            username=users.user, python_path=users.python))
        transport.kill = sigkill_process
        return transport
    if name == 'doas':
        # root may become anyone without a password (users.DOAS_RULES).
        users = request.getfixturevalue('doas_rules')
        transport = Transport(name, lambda router: router.doas(
            username=users.nopass, python_path=users.python))
        transport.kill = sigkill_process
        return transport
    raise ValueError(name)


# --- fixtures ----------------------------------------------------------------

@pytest.fixture(scope='module')
def example_plugin(tmp_path_factory):
    """The example distribution installed
    (:func:`sites.install_example_transport`) into a directory of its own,
    put on this process's ``sys.path`` for the module so its entry point is
    found."""
    target = str(sites.install_example_transport(tmp_path_factory,
                                                 'example'))
    sys.path.append(target)
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(target)
        importlib.invalidate_caches()
        mitogen.parent._transport_cache.pop('example', None)
        sys.modules.pop('mitogen_example_transport', None)


@pytest.fixture(scope='module')
def master_only_site(tmp_path_factory):
    """A directory holding :data:`MASTER_ONLY_PACKAGE`, on the master's
    ``sys.path`` only. Children start with their own default path, and
    those of other accounts cannot even read it (mode 700)."""
    yield from sites.master_only_package(
        tmp_path_factory, 'master-only-site', MASTER_ONLY_PACKAGE, 'deep',
        MASTER_ONLY_ANSWER)


@pytest.fixture(scope='module')
def router(master_only_site):
    with mitogen.master.Router() as router:
        yield router


@pytest.fixture(scope='module', params=METHODS)
def transport(request):
    return make_transport(request.param, request)


@pytest.fixture(scope='module')
def transport_context(router, transport):
    """A context of `transport`'s method, shared by the tests of this
    module that only call it."""
    context = transport.connect(router)
    try:
        yield context
    finally:
        context.shutdown(wait=True)


@pytest.fixture
def fresh_context(router, transport):
    """A context of `transport`'s method for one test, which ends it."""
    context = transport.connect(router)
    try:
        yield context
    finally:
        if router.stream_by_id(context.context_id) is not None:
            context.shutdown(wait=True)


# --- helpers -----------------------------------------------------------------

def process_alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(')') + 2:].split()[0] != 'Z'


def alive_after(pids, timeout=PROMPTLY):
    """PIDs of `pids` still running after up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        alive = sorted(p for p in pids if process_alive(p))
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def processes_of(router, transport, context):
    """The child's PID, those of the programs between it and the master,
    and that of the local process the method started (ssh client, sudo,
    su, doas, podman)."""
    if transport.host_pids is not None:
        pids = set(transport.host_pids(context))
    else:
        pids = set(context.call(funcs.lineage, transport.stop_pids))
    conn = router.stream_by_id(context.context_id).conn
    if conn.pid is not None:
        pids.add(conn.pid)
    return pids


# --- the suite ---------------------------------------------------------------

def test_call_returns_the_result_computed_in_the_child(transport_context):
    pid, result = transport_context.call(funcs.pid_and_sum, 40, 2)
    assert result == 42
    assert pid != os.getpid()


def test_remote_exception_raises_call_error_with_its_type_name(
        transport_context):
    with pytest.raises(mitogen.core.CallError) as info:
        transport_context.call(funcs.fail, u'expected failure')
    assert info.value.type_name == \
        'support.conformance_funcs.ConformanceError'
    assert info.value.remote_message == 'expected failure'
    assert 'in fail' in info.value.remote_traceback


def test_package_only_the_master_has_is_imported_in_the_child(
        transport_context):
    assert transport_context.call(
        tree_helpers.call_in, MASTER_ONLY_PACKAGE + '.deep', 'answer') == \
        MASTER_ONLY_ANSWER


def test_32_mib_reach_the_child_intact(transport_context):
    data = os.urandom(MIB32)
    assert transport_context.call(funcs.sha256, data) == \
        hashlib.sha256(data).hexdigest()


def test_32_mib_come_back_from_the_child_intact(transport_context):
    digest, data = transport_context.call(funcs.random_blob, MIB32)
    assert len(data) == MIB32
    assert hashlib.sha256(data).hexdigest() == digest


def test_child_log_record_reaches_the_context_logger(transport_context):
    logger = logging.getLogger('mitogen.ctx.%s' % (transport_context.name,))
    handler = Collect()
    logger.addHandler(handler)
    token = u'conformance record %s' % (os.urandom(4).hex(),)
    try:
        transport_context.call(funcs.log_warning, u'conformance.child', token)
        deadline = time.monotonic() + PROMPTLY
        while time.monotonic() < deadline and not any(
                r.getMessage() == token for r in handler.records):
            time.sleep(0.01)
    finally:
        logger.removeHandler(handler)
    [record] = [r for r in handler.records if r.getMessage() == token]
    assert record.levelno == logging.WARNING
    assert record.mitogen_name == 'conformance.child'


def test_shutdown_with_wait_ends_the_child_and_every_process_between(
        router, transport, fresh_context):
    pids = processes_of(router, transport, fresh_context)
    fresh_context.shutdown(wait=True)
    assert alive_after(pids) == []


def test_disconnect_ends_the_child_and_every_process_between(
        router, transport, fresh_context):
    pids = processes_of(router, transport, fresh_context)
    router.disconnect(fresh_context)
    assert alive_after(pids) == []


def test_death_of_the_transport_ends_the_child(router, transport,
                                               fresh_context):
    if transport.kill is None:
        pytest.skip('%s starts no process or connection between the master '
                    'and the child' % (transport.name,))
    pids = processes_of(router, transport, fresh_context)
    transport.kill(router.stream_by_id(fresh_context.context_id).conn)
    assert alive_after(pids) == []
