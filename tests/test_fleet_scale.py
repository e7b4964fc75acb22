"""
:mod:`mitogen.fleet` on a hundred real ssh targets: the private sshd
listening on 127.0.0.2 to 127.0.0.101 (``loopback_hosts``), one login per
address, plus targets broken in each way a real fleet has them: a refused
port, a host whose key does not match, a client key the host refuses, a
wrong password, a host that accepts the TCP connection and then says nothing, a host where the
function crashes and one where it never returns.

The whole hundred runs in CI. The same hundred as chains (every target
reached through one ``ssh`` hop, then ``sudo`` on it) is heavier and runs
only with ``MITOGEN_TEST_HEAVY=1``.
"""
import os
import socket
import time

import pytest

import mitogen.core
import mitogen.fleet
import mitogen.ssh

from sshd import keygen
from support.fleet_funcs import CRASH_ADDRESS, HANG_ADDRESS, probe

#: Seconds each host is given: a good host needs well under 10 even with
#: a hundred logins at once on a busy two-core machine.
TIMEOUT = 15.0

heavy = pytest.mark.skipif(
    not os.environ.get('MITOGEN_TEST_HEAVY'),
    reason='heavy variant: set MITOGEN_TEST_HEAVY=1 to run it')


@pytest.fixture
def silent_listener():
    """A TCP port on 127.0.0.1 that completes the handshake (the kernel
    does, from the backlog) but never sends a byte: an ssh client waits
    for the server's banner until its time runs out."""
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def refused_port():
    """A port on 127.0.0.102 nothing listens on."""
    sock = socket.socket()
    sock.bind(('127.0.0.102', 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def ssh_target(hosts, address, **kwargs):
    target = {'method': 'ssh'}
    target.update(hosts.ssh_kwargs(address, python_path='python3', **kwargs))
    return target


def broken_targets(hosts, tmp_path, wrong_known_hosts, silent_port,
                   refused_port, passwd_user):
    """(target, expected exception type, text in its message) for each way
    of being broken at connect time."""
    stranger = str(tmp_path / 'stranger_key')
    keygen(stranger)
    return [
        (ssh_target(hosts, '127.0.0.102', port=refused_port),
         mitogen.core.StreamError, 'Connection refused'),
        (ssh_target(hosts, '127.0.0.1', port=hosts.server.port,
                    known_hosts=wrong_known_hosts),
         mitogen.ssh.HostKeyError, 'Host key verification failed'),
        (ssh_target(hosts, hosts.addresses[0], identity_file=stranger),
         mitogen.ssh.PasswordError, 'Permission denied (publickey'),
        (ssh_target(hosts, hosts.addresses[1], username=passwd_user,
                    identity_file=None, password='not the password',
                    ssh_args=['-o', 'PubkeyAuthentication=no']),
         mitogen.ssh.PasswordError, 'password is incorrect'),
        # Its own, shorter, connect_timeout: ssh gives up first.
        (ssh_target(hosts, '127.0.0.1', port=silent_port, connect_timeout=3),
         mitogen.core.StreamError, 'timed out during banner exchange'),
    ]


def test_hundred_hosts_succeed_and_each_broken_one_reports_its_error(
        loopback_hosts, test_users, tmp_path, wrong_known_hosts,
        silent_listener, refused_port):
    good = [ssh_target(loopback_hosts, a) for a in loopback_hosts.addresses]
    broken = broken_targets(loopback_hosts, tmp_path, wrong_known_hosts,
                            silent_listener, refused_port, test_users.passwd)
    events = []
    started = time.monotonic()

    results = mitogen.fleet.run(good + [t for t, _, _ in broken], probe,
                                concurrency=100, timeout=TIMEOUT,
                                on_event=events.append, progress=False)

    elapsed = time.monotonic() - started
    assert sum(r.ok for r in results) == len(good) - 2, [
        r for r in results if not r.ok]
    by_address = {}
    for result in results[:len(good)]:
        by_address[result.target['hostname']] = result
    for address, result in by_address.items():
        if address == CRASH_ADDRESS:
            assert isinstance(result.error, mitogen.core.CallError)
            assert 'crashed on purpose' in str(result.error)
        elif address == HANG_ADDRESS:
            assert isinstance(result.error, mitogen.core.TimeoutError)
            assert result.phase == 'call'
        else:
            assert result.ok, result
            assert result.value == address
            assert result.name == 'ssh.%s:%d' % (address,
                                                 loopback_hosts.port)
    for result, (_, error_type, text) in zip(results[len(good):], broken):
        assert not result.ok and result.phase == 'connect', result
        assert isinstance(result.error, error_type), result
        assert text in str(result.error), result
    # Each host's events, in order.
    kinds = {}
    for event in events:
        kinds.setdefault(event.result.index, []).append(event.kind)
    assert kinds[0] == ['start', 'connected', 'done']
    assert kinds[len(good)] == ['start', 'failed']
    # The slowest good host plus one timeout, with room for a loaded box.
    slowest_good = max(r.elapsed for r in results if r.ok)
    assert elapsed < slowest_good + TIMEOUT + 10, (elapsed, slowest_good)
    # Nothing left running: no login session on any of the servers.
    deadline = time.monotonic() + 10
    while loopback_hosts.sessions() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loopback_hosts.sessions() == []


@heavy
def test_hundred_chains_through_one_hop_then_sudo(loopback_hosts, sshd):
    hop = {'method': 'ssh'}
    hop.update(sshd.ssh_kwargs(python_path='python3'))
    targets = [[hop,
                ssh_target(loopback_hosts, a, username='mitonp'),
                {'method': 'sudo', 'python_path': 'python3'}]
               for a in loopback_hosts.addresses
               if a not in (CRASH_ADDRESS, HANG_ADDRESS)]

    results = mitogen.fleet.run(targets, os.getuid, concurrency=50,
                                timeout=60, progress=False)

    assert [r for r in results if not r.ok] == []
    assert set(r.value for r in results) == {0}
    hops = set(r.name.split('.ssh.')[0] for r in results)
    assert len(hops) == 1, hops
