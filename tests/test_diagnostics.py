"""
``python -m mitogen check``: reports the installation, then starts each hop
through the one before and prints per hop the time taken and the remote
interpreter, or, for the hop that failed, what its programs wrote and the
likely fix, showing progress while it works.
"""
import os
import pty
import re
import select
import subprocess
import sys

import pytest

import interpreters
import mitogen.diagnostics
from mitogen.diagnostics import parse_hop
from sshd import free_port

ENV = dict(os.environ, PYTHONPATH='')


def check(*hops, **kwargs):
    proc = subprocess.run(
        [sys.executable, '-m', 'mitogen', 'check'] + list(hops),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, timeout=120, env=ENV, **kwargs)
    return proc.returncode, proc.stdout.decode()


@pytest.mark.parametrize('text, expected', [
    ('local', ('local', {})),
    ('ssh:web1', ('ssh', {'hostname': 'web1'})),
    ('ssh:deploy@web1:2222', ('ssh', {'username': 'deploy',
                                      'hostname': 'web1', 'port': 2222})),
    ('paramiko:a@b,compression=false', (
        'paramiko', {'username': 'a', 'hostname': 'b',
                     'compression': False})),
    ('sudo:root', ('sudo', {'username': 'root'})),
    ('su:postgres,password=secret', ('su', {'username': 'postgres',
                                            'password': 'secret'})),
    ('local,python=/usr/bin/python3', ('local', {
        'python_path': '/usr/bin/python3'})),
    ('podman:container=web', ('podman', {'container': 'web'})),
])
def test_hop_syntax(text, expected):
    assert parse_hop(text) == expected


@pytest.mark.parametrize('text', ['', ':web1', 'ssh:web1:http',
                                  'podman:web', 'local,python'])
def test_hop_syntax_errors_are_refused(text):
    with pytest.raises(mitogen.diagnostics.UsageError):
        parse_hop(text)


def test_without_arguments_usage_is_printed_and_the_status_is_2():
    proc = subprocess.run([sys.executable, '-m', 'mitogen'],
                          stdout=subprocess.PIPE, env=ENV, timeout=60)

    assert proc.returncode == 2
    assert proc.stdout.decode().startswith('usage: python -m mitogen check')


def test_installation_report_names_every_distribution_and_method():
    rc, out = check()

    assert rc == 0, out
    for name in ('mitogen-core', 'mitogen-master', 'mitogen-ssh',
                 'mitogen-containers'):
        assert '\n%s 0.' % (name,) in out
    assert 'connection methods: buildah, doas, docker, fork, incus, jail, ' \
        'kubectl, local, lxc, lxd, paramiko, podman, setns, ssh, su, sudo' \
        in out


def test_each_hop_reports_time_and_remote_interpreter():
    py27 = interpreters.require('2.7')

    rc, out = check('local', 'local,python=%s' % (py27.path,))

    assert rc == 0, out
    lines = out.splitlines()
    first = lines.index('[1/2] local ...') + 1
    second = lines.index('[2/2] local,python=%s ...' % (py27.path,)) + 1
    assert lines[first].startswith('[1/2] local: ok in ')
    assert lines[first + 1].startswith('    CPython 3.')
    assert lines[second].startswith('[2/2] local,python=')
    assert ': ok in ' in lines[second]
    assert lines[second + 1].startswith('    CPython 2.7.')
    assert ' at %s on ' % (py27.path,) in lines[second + 1]
    assert ', context local.' in lines[second + 1]


def test_failed_hop_shows_its_transcript_and_the_likely_fix():
    port = free_port()

    rc, out = check('local', 'ssh:root@127.0.0.1:%d' % (port,), 'sudo:root')

    assert rc == 1
    assert '[2/3] ssh:root@127.0.0.1:%d: FAILED after ' % (port,) in out
    assert 'EofError:' in out
    assert 'port %d: Connection refused' % (port,) in out
    assert 'likely fix: nothing listens on that port' in out
    assert '[-/3] sudo:root: not tried' in out


def test_missing_python_names_the_option_to_set():
    rc, out = check('local,python=/nonexistent/python3')

    assert rc == 1
    assert 'likely fix: a program was not found: pass python=PATH' in out


def test_ssh_hop_to_a_real_server(sshd):
    rc, out = check('ssh:root@127.0.0.1:%d,identity_file=%s,'
                    'check_host_keys=ignore,python=python3'
                    % (sshd.port, sshd.client_key))

    assert rc == 0, out
    assert '[1/1] ssh:root@127.0.0.1' in out and ': ok in ' in out
    assert ', context ssh.127.0.0.1' in out


def test_progress_is_shown_while_a_hop_starts(tmp_path):
    # A Python that takes a second to start: the counter must tick.
    slow = tmp_path / 'slow-python'
    slow.write_text('#!/bin/sh\nsleep 1\nexec %s "$@"\n' % (sys.executable,))
    slow.chmod(0o755)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, '-m', 'mitogen', 'check',
         'local,python=%s' % (slow,)],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=ENV)
    os.close(slave)
    out = b''
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        proc.wait(timeout=60)
    text = out.decode()

    assert proc.returncode == 0, text
    ticks = re.findall(r'\r\[1/1\] local,python=%s \.\.\. (\d+\.\d) s'
                       % (re.escape(str(slow)),), text)
    [took] = re.findall(r': ok in (\d+\.\d\d) s', text)
    assert len(ticks) >= 2 and float(ticks[0]) < float(ticks[-1])
    assert float(took) >= 1.0
