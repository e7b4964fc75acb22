"""
Specification of the ``paramiko`` connection method (``mitogen.paramiko``),
against the private sshd of :mod:`sshd` on 127.0.0.1: logins with keys and
passwords, host key policies, failures reported promptly, no need for an
``ssh`` program, jump hosts through a context or another Paramiko login,
bulk data, and nothing (thread, socket, process) left behind.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

paramiko = pytest.importorskip(
    'paramiko', reason='paramiko is not installed (scripts/setup installs it '
    'from scripts/requirements-test.txt)')

import interpreters  # noqa: E402
import mitogen.core  # noqa: E402
import mitogen.master  # noqa: E402
import mitogen.paramiko  # noqa: E402
import mitogen.parent  # noqa: E402
import mitogen.ssh  # noqa: E402
import procs  # noqa: E402
from sshd import free_port, keygen  # noqa: E402
from support import paramiko_funcs, ssh_funcs  # noqa: E402

#: Seconds within which a failure must be reported or a process must end.
PROMPTLY = 10.0

#: The interpreter every account has (root's ``python3`` is a pyenv shim).
PYTHON = '/usr/bin/python3'


def login_kwargs(sshd, username='root', **kwargs):
    """Arguments of ``router.paramiko()`` for a key login as `username`
    that trusts exactly this server (``check_host_keys='enforce'``)."""
    result = dict(hostname=sshd.host, port=sshd.port, username=username,
                  identity_file=sshd.client_key,
                  known_hosts_file=sshd.known_hosts, python_path=PYTHON,
                  connect_timeout=30)
    result.update(kwargs)
    return result


def password_kwargs(sshd, users, **kwargs):
    """Arguments for a password-only login as the account of `users` that
    has a password."""
    return login_kwargs(sshd, username=users.passwd, identity_file=None,
                        **kwargs)


def wait_for(predicate, timeout=PROMPTLY):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def connections_to(port):
    return [c for c in paramiko_funcs.tcp_connections() if c[1] == port]


def conn_of(router, context):
    """The :class:`mitogen.paramiko.Connection` that started `context`."""
    return router.stream_by_id(context.context_id).conn


# --- the method --------------------------------------------------------------

def test_paramiko_method_is_registered_as_an_entry_point():
    from importlib import metadata
    (ep,) = metadata.entry_points(group='mitogen.transports', name='paramiko')
    assert ep.value == 'mitogen.paramiko:Connection'
    assert mitogen.parent.resolve_transport('paramiko') is \
        mitogen.paramiko.Connection


def test_context_name_without_port_is_paramiko_dot_host():
    options = mitogen.paramiko.Options(hostname='web1', max_message_size=1024)
    assert options.name == 'paramiko.web1'


def test_unknown_check_host_keys_value_is_refused():
    with pytest.raises(ValueError):
        mitogen.paramiko.Options(hostname='h', max_message_size=1024,
                                 check_host_keys='sometimes')


def test_jump_host_must_be_a_dict_of_login_options():
    with pytest.raises(TypeError):
        mitogen.paramiko.Options(hostname='h', max_message_size=1024,
                                 jump_host='bastion')


# --- logging in --------------------------------------------------------------

def test_root_key_login_runs_calls_in_an_ssh_session(router, sshd):
    context = router.paramiko(**login_kwargs(sshd))
    assert context.call(os.getpid) != os.getpid()
    assert context.call(ssh_funcs.login_user) == 'root'
    assert context.call(ssh_funcs.ssh_connection)


def test_context_is_named_paramiko_host_colon_port(router, sshd):
    context = router.paramiko(**login_kwargs(sshd))
    assert context.name == 'paramiko.127.0.0.1:%d' % sshd.port


def test_non_root_user_logs_in_with_key(router, sshd, test_users):
    context = router.paramiko(**login_kwargs(sshd, username=test_users.user,
                                             python_path=test_users.python))
    assert context.call(ssh_funcs.login_user) == test_users.user


def test_password_login(router, sshd, test_users):
    context = router.paramiko(**password_kwargs(
        sshd, test_users, password=test_users.password))
    assert context.call(ssh_funcs.login_user) == test_users.passwd


def test_unauthorized_identity_file_is_refused(router, sshd, tmp_path):
    key = str(tmp_path / 'stranger_key')
    keygen(key)
    with pytest.raises(mitogen.paramiko.PasswordError):
        router.paramiko(**login_kwargs(sshd, identity_file=key))


# --- host keys ---------------------------------------------------------------

def test_host_key_error_is_mitogen_ssh_host_key_error():
    assert mitogen.paramiko.HostKeyError is mitogen.ssh.HostKeyError


def test_enforce_refuses_unknown_host(router, sshd, empty_known_hosts):
    with pytest.raises(mitogen.ssh.HostKeyError) as info:
        router.paramiko(**login_kwargs(sshd,
                                       known_hosts_file=empty_known_hosts,
                                       check_host_keys='enforce'))
    assert 'not in %s' % (empty_known_hosts,) in str(info.value)


def test_enforce_refuses_changed_host_key(router, sshd, wrong_known_hosts):
    with pytest.raises(mitogen.ssh.HostKeyError) as info:
        router.paramiko(**login_kwargs(sshd,
                                       known_hosts_file=wrong_known_hosts,
                                       check_host_keys='enforce'))
    assert 'changed' in str(info.value)


def test_enforce_refuses_host_when_known_hosts_file_is_missing(router, sshd,
                                                              tmp_path):
    with pytest.raises(mitogen.ssh.HostKeyError):
        router.paramiko(**login_kwargs(
            sshd, known_hosts_file=str(tmp_path / 'absent')))


def test_accept_records_unknown_host_key(router, sshd, empty_known_hosts):
    router.paramiko(**login_kwargs(sshd, known_hosts_file=empty_known_hosts,
                                   check_host_keys='accept'))
    with open(sshd.host_key + '.pub') as f:
        server_key = f.read().split()[1]
    with open(empty_known_hosts) as f:
        recorded = f.read()
    assert recorded.startswith('[127.0.0.1]:%d ' % sshd.port)
    assert server_key in recorded


def test_accept_creates_missing_known_hosts_file(router, sshd, tmp_path):
    path = tmp_path / 'ssh' / 'known_hosts'
    router.paramiko(**login_kwargs(sshd, known_hosts_file=str(path),
                                   check_host_keys='accept'))
    assert path.read_text().count('\n') == 1


def test_accepted_host_key_is_then_enforced(router, sshd, empty_known_hosts):
    router.paramiko(**login_kwargs(sshd, known_hosts_file=empty_known_hosts,
                                   check_host_keys='accept'))
    context = router.paramiko(**login_kwargs(
        sshd, known_hosts_file=empty_known_hosts, check_host_keys='enforce'))
    assert context.call(os.getpid)


def test_accept_refuses_changed_host_key(router, sshd, wrong_known_hosts):
    with pytest.raises(mitogen.ssh.HostKeyError):
        router.paramiko(**login_kwargs(sshd,
                                       known_hosts_file=wrong_known_hosts,
                                       check_host_keys='accept'))


def test_ignore_connects_despite_changed_key_and_records_nothing(
        router, sshd, wrong_known_hosts):
    with open(wrong_known_hosts) as f:
        before = f.read()
    context = router.paramiko(**login_kwargs(
        sshd, known_hosts_file=wrong_known_hosts, check_host_keys='ignore'))
    assert context.call(os.getpid)
    with open(wrong_known_hosts) as f:
        assert f.read() == before


# --- failures ----------------------------------------------------------------

def test_refused_connection_raises_stream_error_within_connect_timeout(
        router, sshd):
    start = time.monotonic()
    with pytest.raises(mitogen.core.StreamError) as info:
        router.paramiko(**login_kwargs(sshd, port=free_port(),
                                       connect_timeout=5))
    assert time.monotonic() - start < 5
    assert 'Unable to connect' in str(info.value)


def test_silent_server_fails_within_connect_timeout(router, sshd):
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(1)
    try:
        start = time.monotonic()
        with pytest.raises(mitogen.core.TimeoutError) as info:
            router.paramiko(**login_kwargs(
                sshd, port=listener.getsockname()[1], connect_timeout=2))
        assert time.monotonic() - start < 2 + 1
        assert 'timed out' in str(info.value)
    finally:
        listener.close()


def test_missing_remote_interpreter_reports_the_remote_shell_error(router,
                                                                    sshd):
    with pytest.raises(mitogen.parent.EofError) as info:
        router.paramiko(**login_kwargs(sshd,
                                       python_path='/nonexistent/python'))
    assert 'No such file or directory' in str(info.value)


def test_remote_command_survives_the_remote_shell(router, sshd):
    context = router.paramiko(**login_kwargs(
        sshd, python_path=[PYTHON, '-W', "ignore:it's fine"]))
    assert context.call(ssh_funcs.python_version)


def test_compression_option_is_negotiated(router, sshd):
    on = router.paramiko(**login_kwargs(sshd))
    off = router.paramiko(**login_kwargs(sshd, compression=False))
    transport_on = conn_of(router, on).proc.clients[-1].get_transport()
    transport_off = conn_of(router, off).proc.clients[-1].get_transport()
    assert transport_on.local_compression != 'none'
    assert transport_off.local_compression == 'none'


# --- no ssh program ----------------------------------------------------------

NO_SSH_SCRIPT = r'''
import json, os, shutil, sys
started = []
def hook(event, args):
    if event in ('subprocess.Popen', 'os.exec', 'os.posix_spawn',
                 'os.spawn', 'os.system'):
        started.append(repr(args[:2]))
sys.addaudithook(hook)
import mitogen.master
host, port, key, known_hosts, python = sys.argv[1:]
with mitogen.master.Router() as router:
    context = router.paramiko(hostname=host, port=int(port), username='root',
                              identity_file=key, known_hosts_file=known_hosts,
                              python_path=python)
    login = context.call(os.getenv, 'SSH_CONNECTION')
print(json.dumps({'which_ssh': shutil.which('ssh'), 'started': started,
                  'ssh_connection': login}))
'''


def test_works_with_no_ssh_program_and_starts_no_process(sshd, tmp_path):
    script = tmp_path / 'no_ssh.py'
    script.write_text(NO_SSH_SCRIPT)
    env = dict(os.environ, PATH='/nonexistent')
    out = subprocess.check_output(
        [sys.executable, str(script), sshd.host, str(sshd.port),
         sshd.client_key, sshd.known_hosts, PYTHON],
        env=env, timeout=60)
    result = json.loads(out.decode().splitlines()[-1])
    assert result['which_ssh'] is None
    assert result['started'] == []
    assert result['ssh_connection']


# --- jump hosts --------------------------------------------------------------

def test_via_local_context_makes_the_connection_in_the_intermediate(router,
                                                                     sshd):
    local = router.local()
    context = router.paramiko(via=local, **login_kwargs(sshd))
    assert context.name == '%s.paramiko.127.0.0.1:%d' % (local.name,
                                                         sshd.port)
    assert context.call(ssh_funcs.ssh_connection)
    assert local.call(paramiko_funcs.paramiko_threads)
    assert paramiko_funcs.paramiko_threads() == []


def test_host_key_error_through_intermediate_keeps_its_type(
        router, sshd, empty_known_hosts):
    with pytest.raises(mitogen.ssh.HostKeyError):
        router.paramiko(via=router.local(), **login_kwargs(
            sshd, known_hosts_file=empty_known_hosts))


def test_password_error_through_intermediate_keeps_its_type(router, sshd,
                                                           test_users):
    with pytest.raises(mitogen.paramiko.PasswordError):
        router.paramiko(via=router.local(), **password_kwargs(
            sshd, test_users, password='wrong'))


def jump_kwargs(sshd, **kwargs):
    jump = dict(hostname=sshd.host, port=sshd.port, username='root',
                identity_file=sshd.client_key,
                known_hosts_file=sshd.known_hosts)
    return login_kwargs(sshd, jump_host=jump, **kwargs)


def test_jump_host_reaches_the_target_through_a_forwarded_channel(router,
                                                                   sshd):
    context = router.paramiko(**jump_kwargs(sshd))
    # The target sees a connection sshd itself forwarded, not one of ours;
    # ours is the single connection to the jump host.
    client_port = int(context.call(ssh_funcs.ssh_connection).split()[1])
    ours = connections_to(sshd.port)
    assert len(ours) == 1
    assert client_port not in [local for local, _ in ours]
    assert len(conn_of(router, context).proc.clients) == 2


def test_failed_jump_host_login_raises_and_leaves_no_thread(
        router, sshd, empty_known_hosts):
    kwargs = jump_kwargs(sshd)
    kwargs['jump_host']['known_hosts_file'] = empty_known_hosts
    with pytest.raises(mitogen.ssh.HostKeyError):
        router.paramiko(**kwargs)
    assert paramiko_funcs.paramiko_threads() == []


def test_sock_from_another_paramiko_connection(router, sshd):
    outer = paramiko.SSHClient()
    outer.load_host_keys(sshd.known_hosts)
    try:
        outer.connect(sshd.host, port=sshd.port, username='root',
                      key_filename=sshd.client_key, look_for_keys=False,
                      allow_agent=False, timeout=10)
        channel = outer.get_transport().open_channel(
            'direct-tcpip', (sshd.host, sshd.port), ('127.0.0.1', 0))
        context = router.paramiko(sock=channel, **login_kwargs(sshd))
        assert context.call(ssh_funcs.login_user) == 'root'
        context.shutdown(wait=True)
        assert channel.closed
    finally:
        outer.close()


def test_sock_and_jump_host_together_are_refused():
    with pytest.raises(ValueError):
        mitogen.paramiko.Options(hostname='h', max_message_size=1024,
                                 sock=object(), jump_host={'hostname': 'j'})


# --- remote interpreters -----------------------------------------------------

@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.13']),
                         indirect=True)
def test_remote_interpreter_by_absolute_path(router, sshd, interpreter):
    context = router.paramiko(**login_kwargs(sshd,
                                             python_path=interpreter.path))
    assert context.call(ssh_funcs.python_version) == interpreter.version


# --- data and lifetime -------------------------------------------------------

def test_shutdown_leaves_no_thread_socket_or_remote_process(router, sshd):
    context = router.paramiko(**login_kwargs(sshd))
    remote_pid = context.call(os.getpid)
    assert paramiko_funcs.paramiko_threads()
    assert connections_to(sshd.port)
    proc = conn_of(router, context).proc
    context.shutdown(wait=True)
    # shutdown(wait=True) returns once the connection is entirely gone.
    assert paramiko_funcs.paramiko_threads() == []
    assert connections_to(sshd.port) == []
    assert proc.poll() == 0
    assert wait_for(lambda: procs.is_gone(remote_pid))


def test_router_exit_with_a_live_child_leaves_nothing(sshd):
    with mitogen.master.Router() as router:
        context = router.paramiko(**login_kwargs(sshd))
        remote_pid = context.call(os.getpid)
    assert paramiko_funcs.paramiko_threads() == []
    assert connections_to(sshd.port) == []
    assert wait_for(lambda: procs.is_gone(remote_pid))


def test_remote_interpreter_killed_disconnects_and_cleans_up(router, sshd):
    context = router.paramiko(**login_kwargs(sshd))
    remote_pid = context.call(os.getpid)
    proc = conn_of(router, context).proc
    latch = mitogen.core.Latch()
    mitogen.core.listen(context, 'disconnect', lambda: latch.put(None))
    os.kill(remote_pid, signal.SIGKILL)
    latch.get(timeout=PROMPTLY)
    with pytest.raises(mitogen.core.ChannelError):
        context.call(os.getpid)
    assert wait_for(lambda: proc.poll() is not None)
    assert proc.returncode != 0
    assert paramiko_funcs.paramiko_threads() == []


def test_disconnect_of_a_hung_child_ends_the_connection(router, sshd):
    context = router.paramiko(**login_kwargs(sshd))
    remote_pid = context.call(os.getpid)
    proc = conn_of(router, context).proc
    # A stopped interpreter reads nothing: only closing the channel ends it.
    os.kill(remote_pid, signal.SIGSTOP)
    try:
        router.disconnect(context)
        assert wait_for(lambda: proc.poll() is not None)
        assert paramiko_funcs.paramiko_threads() == []
    finally:
        os.kill(remote_pid, signal.SIGCONT)
    assert wait_for(lambda: procs.is_gone(remote_pid))
