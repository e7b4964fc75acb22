"""
Specification of the ``ssh`` connection method (``mitogen.ssh``), against
the private sshd of :mod:`sshd` on 127.0.0.1: logins with keys and
passwords, host key policies, failures that must be reported promptly with
ssh's own words, jump hosts, remote interpreters, bulk data, and clean
shutdown.
"""
import os
import socket
import time

import pytest

import interpreters
import mitogen.core
import mitogen.parent
import mitogen.ssh
import sshd as sshd_plugin
from sshd import free_port, keygen
from support import ssh_funcs

#: Seconds within which a failure must be reported or a process must end.
PROMPTLY = 10.0


def wait_gone(pid, timeout=PROMPTLY):
    """True once process `pid` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open('/proc/%d/stat' % pid) as f:
                state = f.read().rpartition(')')[2].split()[0]
        except OSError:
            return True
        if state == 'Z':
            return True
        time.sleep(0.02)
    return False


def ssh_children():
    """``{pid: argv}`` of this process's ``ssh`` client children."""
    return {pid: argv for pid, argv in ssh_funcs.child_processes().items()
            if argv and os.path.basename(argv[0]) == 'ssh'}


def password_kwargs(sshd, users, **kwargs):
    """Arguments for a password-only login as the account of `users`
    that has a password."""
    return sshd.ssh_kwargs(username=users.passwd, identity_file=None,
                           python_path=users.python,
                           ssh_args=['-o', 'PubkeyAuthentication=no'],
                           **kwargs)


# --- logging in --------------------------------------------------------------

def test_root_key_login_runs_calls_in_an_ssh_session(router, sshd):
    context = router.ssh(**sshd.ssh_kwargs())
    assert context.call(os.getpid) != os.getpid()
    assert context.call(ssh_funcs.ssh_connection)


def test_context_is_named_ssh_host_colon_port(router, sshd):
    context = router.ssh(**sshd.ssh_kwargs())
    assert context.name == 'ssh.127.0.0.1:%d' % sshd.port


def test_context_name_without_port_is_ssh_dot_host():
    options = mitogen.ssh.Options(hostname='web1', max_message_size=1024)
    assert options.name == 'ssh.web1'


def test_non_root_user_logs_in_with_key(router, sshd, test_users):
    context = router.ssh(**sshd.ssh_kwargs(username=test_users.user,
                                           python_path=test_users.python))
    assert context.call(ssh_funcs.login_user) == test_users.user


def test_password_login(router, sshd, test_users):
    context = router.ssh(**password_kwargs(sshd, test_users,
                                           password=test_users.password))
    assert context.call(ssh_funcs.login_user) == test_users.passwd


def test_unauthorized_identity_file_is_refused(router, sshd, tmp_path):
    key = str(tmp_path / 'stranger_key')
    keygen(key)
    with pytest.raises(mitogen.ssh.PasswordError) as info:
        router.ssh(**sshd.ssh_kwargs(identity_file=key))
    assert 'Permission denied (publickey' in str(info.value)


# --- host keys ---------------------------------------------------------------

def test_accept_records_unknown_host_key(router, sshd, empty_known_hosts):
    router.ssh(**sshd.ssh_kwargs(known_hosts=empty_known_hosts,
                                 check_host_keys='accept'))
    with open(sshd.host_key + '.pub') as f:
        server_key = f.read().split()[1]
    with open(empty_known_hosts) as f:
        assert server_key in f.read()


def test_accept_refuses_changed_host_key(router, sshd, wrong_known_hosts):
    with pytest.raises(mitogen.ssh.HostKeyError):
        router.ssh(**sshd.ssh_kwargs(known_hosts=wrong_known_hosts,
                                     check_host_keys='accept'))


def test_ignore_connects_despite_changed_key_and_records_nothing(
        router, sshd, wrong_known_hosts):
    with open(wrong_known_hosts) as f:
        before = f.read()
    context = router.ssh(**sshd.ssh_kwargs(known_hosts=wrong_known_hosts,
                                           check_host_keys='ignore'))
    assert context.call(os.getpid)
    with open(wrong_known_hosts) as f:
        assert f.read() == before


def test_unknown_check_host_keys_value_is_refused():
    with pytest.raises(ValueError):
        mitogen.ssh.Options(hostname='h', max_message_size=1024,
                            check_host_keys='sometimes')


# --- failures ----------------------------------------------------------------

def test_refused_connection_raises_ssh_message_within_connect_timeout(
        router, sshd):
    start = time.monotonic()
    with pytest.raises(mitogen.parent.EofError) as info:
        router.ssh(**sshd.ssh_kwargs(port=free_port(), connect_timeout=5))
    assert time.monotonic() - start < 5
    assert 'Connection refused' in str(info.value)


def test_refused_connection_with_password_raises_ssh_message(router, sshd):
    # With a password ssh writes its messages to the pty, not a pipe.
    with pytest.raises(mitogen.parent.EofError) as info:
        router.ssh(**sshd.ssh_kwargs(port=free_port(), connect_timeout=5,
                                     password='unused'))
    assert 'Connection refused' in str(info.value)


def test_silent_server_fails_within_connect_timeout(router, sshd):
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(1)
    try:
        start = time.monotonic()
        with pytest.raises((mitogen.core.StreamError,
                            mitogen.core.TimeoutError)) as info:
            router.ssh(**sshd.ssh_kwargs(port=listener.getsockname()[1],
                                         connect_timeout=3))
        assert time.monotonic() - start < 3 + 1
        assert 'timed out' in str(info.value)
    finally:
        listener.close()


def test_missing_remote_interpreter_reports_the_remote_shell_error(router,
                                                                    sshd):
    with pytest.raises(mitogen.parent.EofError) as info:
        router.ssh(**sshd.ssh_kwargs(python_path='/nonexistent/python'))
    assert 'No such file or directory' in str(info.value)


def test_ssh_args_as_string_is_refused():
    with pytest.raises(TypeError):
        mitogen.ssh.Options(hostname='h', max_message_size=1024,
                            ssh_args='-v')


# --- options that shape the ssh command --------------------------------------

def ssh_argv(**kwargs):
    options = mitogen.ssh.Options(hostname='web1', max_message_size=1024,
                                  **kwargs)
    return mitogen.ssh.Connection(options, None).get_ssh_argv()


def has_run(argv, run):
    n = len(run)
    return any(argv[i:i + n] == run for i in range(len(argv) - n + 1))


@pytest.mark.parametrize('kwargs, present, absent', [
    ({}, ['-o', 'BatchMode=yes'], None),
    ({'password': 'pw'}, ['-o', 'IdentitiesOnly=yes'], ['-o', 'BatchMode=yes']),
    ({}, ['-C'], None),
    ({'compression': False}, None, ['-C']),
    ({}, ['-o', 'StrictHostKeyChecking=yes'], None),
    ({'check_host_keys': 'accept'}, ['-o', 'StrictHostKeyChecking=accept-new'],
     None),
    ({'check_host_keys': 'ignore'}, ['-o', 'UserKnownHostsFile=/dev/null'],
     None),
    ({}, ['-o', 'ServerAliveInterval=30', '-o', 'ServerAliveCountMax=10'],
     None),
    ({'keepalive_interval': 5, 'keepalive_count': 2},
     ['-o', 'ServerAliveInterval=5', '-o', 'ServerAliveCountMax=2'], None),
    ({'keepalive_enabled': False}, None, ['-o', 'ServerAliveInterval=30']),
    ({'ssh_debug_level': 2}, ['-vv'], None),
    ({'identity_file': '/k'}, ['-i', '/k', '-o', 'IdentitiesOnly=yes'], None),
    ({'identity_file': '/k', 'identities_only': False}, ['-i', '/k'],
     ['-o', 'IdentitiesOnly=yes']),
    ({'username': 'bob', 'port': 2222}, ['-p', '2222', '-l', 'bob'], None),
    ({'connect_timeout': 10}, ['-o', 'ConnectTimeout=9'], None),
    ({'ssh_path': '/opt/ssh', 'ssh_args': ['-F', 'cfg']},
     ['/opt/ssh', '-F', 'cfg'], None),
    ({}, ['--', 'web1'], None),
], ids=lambda v: repr(v) if isinstance(v, dict) else '')
def test_options_become_ssh_arguments(kwargs, present, absent):
    argv = ssh_argv(**kwargs)
    if present:
        assert has_run(argv, present), argv
    if absent:
        assert not has_run(argv, absent), argv


def test_remote_command_survives_the_remote_shell(router, sshd):
    # The first stage is quoted for the login shell: a python_path argument
    # with spaces and quotes reaches the interpreter unchanged.
    context = router.ssh(**sshd.ssh_kwargs(
        python_path=['python3', '-W', "ignore:it's fine"]))
    assert context.call(ssh_funcs.python_version)


def test_ssh_args_reach_ssh(router, sshd):
    kwargs = sshd.ssh_kwargs(port=None)
    kwargs['ssh_args'] += ['-o', 'Port=%d' % sshd.port]
    context = router.ssh(**kwargs)
    assert context.call(os.getpid)


# --- jump hosts --------------------------------------------------------------

def test_proxyjump_in_ssh_args_connects_through_the_jump_host(router, sshd):
    jump_config = sshd.client_config(with_key=True)
    context = router.ssh(**sshd.ssh_kwargs(ssh_args=[
        '-F', jump_config, '-J', 'root@localhost:%d' % sshd.port]))
    assert context.call(os.getpid)
    (client,) = ssh_children()
    hops = ssh_funcs.child_processes(client).values()
    assert any('-W' in argv for argv in hops), hops


def test_via_ssh_context_starts_ssh_in_the_intermediate(router, sshd):
    first = router.ssh(**sshd.ssh_kwargs())
    second = router.ssh(via=first, **sshd.ssh_kwargs())
    assert second.name == '%s.ssh.127.0.0.1:%d' % (first.name, sshd.port)
    assert second.call(os.getpid) != first.call(os.getpid)
    started = first.call(ssh_funcs.child_processes).values()
    assert any(os.path.basename(argv[0]) == 'ssh' for argv in started)


def test_via_local_context(router, sshd):
    local = router.local()
    context = router.ssh(via=local, **sshd.ssh_kwargs())
    assert context.name == '%s.ssh.127.0.0.1:%d' % (local.name, sshd.port)
    assert context.call(ssh_funcs.ssh_connection)


def test_python27_intermediate_runs_ssh(router, sshd):
    interpreters.require('2.7')
    middle = router.ssh(**sshd.ssh_kwargs(python_path='python2.7'))
    leaf = router.ssh(via=middle, **sshd.ssh_kwargs())
    assert leaf.call(ssh_funcs.ssh_connection)


def test_host_key_error_through_intermediate_keeps_its_type(
        router, sshd, empty_known_hosts):
    with pytest.raises(mitogen.ssh.HostKeyError):
        router.ssh(via=router.local(),
                   **sshd.ssh_kwargs(known_hosts=empty_known_hosts))


def test_password_error_through_intermediate_keeps_its_type(router, sshd,
                                                           test_users):
    with pytest.raises(mitogen.ssh.PasswordError):
        router.ssh(via=router.local(),
                   **password_kwargs(sshd, test_users, password='wrong'))


# --- remote interpreters -----------------------------------------------------

@pytest.mark.parametrize('version', ['2.7', '3.6'])
def test_remote_interpreter_by_name_from_login_environment(router, sshd,
                                                           version):
    if not any(v.startswith(version + '.')
               for v in sshd_plugin.pyenv_versions()):
        pytest.skip('pyenv has no Python %s to select by name' % version)
    context = router.ssh(**sshd.ssh_kwargs(python_path='python' + version))
    assert context.call(ssh_funcs.python_version) == version


@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.6',
                                                             '3.13']),
                         indirect=True)
def test_remote_interpreter_by_absolute_path(router, sshd, interpreter):
    context = router.ssh(**sshd.ssh_kwargs(python_path=interpreter.path))
    assert context.call(ssh_funcs.python_version) == interpreter.version


# --- data and lifetime -------------------------------------------------------

def test_shutdown_of_intermediate_ends_the_ssh_it_started(router, sshd):
    middle = router.ssh(**sshd.ssh_kwargs())
    leaf = router.ssh(via=middle, **sshd.ssh_kwargs())
    leaf_pid = leaf.call(os.getpid)
    (inner_client,) = [pid for pid, argv in
                       middle.call(ssh_funcs.child_processes).items()
                       if os.path.basename(argv[0]) == 'ssh']
    middle.shutdown(wait=True)
    assert wait_gone(inner_client)
    assert wait_gone(leaf_pid)
