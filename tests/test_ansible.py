"""
Mitogen for Ansible runs unchanged on our ``mitogen``.

``ansible_mitogen``, the Ansible client shipped in the mitogen 0.3.54 wheel,
is unpacked (alone) from that wheel into ``tests/.cache`` and run by the
venv's real ``ansible-playbook`` against the private sshd, the test accounts
and the local machine (see :mod:`ansible_harness`). Each playbook runs once
with Ansible's stock ``linear`` strategy, the reference, and once with each
Mitogen strategy; a Mitogen run must give the same play recap and the same
results, task by task and host by host, once timings, temporary paths and
the like are normalised away, and must leave no process and no UNIX socket
behind.

Playbooks and their files live in ``tests/ansible/``:

``main.yml``
    fact gathering, command/shell/raw/script, loops, copy (small and
    multi-MiB), template, lineinfile, stat with checksum, fetch, async tasks
    (polled; fire-and-forget then async_status), ``meta: reset_connection``,
    ``delegate_to``, a custom module with a custom module_utils, ignored
    failures, on the hosts of :func:`main_hosts`.
``many_hosts.yml``
    a few tasks on twelve aliases of the sshd at once (forks=12).
``kill_task.yml``
    a task whose process on one target the test kills.

Set ``MITOGEN_TEST_ANSIBLE_PYTHON`` to another venv's Python to run the same
tests with that venv's ansible-core and mitogen (see :mod:`ansible_harness`).
"""
import hashlib
import json
import os
import pwd
import shutil
import signal
import tempfile
import threading
import time

import pytest

import ansible_harness
import interpreters
import sshd as sshd_module

#: Strategies of Mitogen for Ansible checked against stock ``linear``.
MITOGEN_STRATEGIES = ('mitogen_linear', 'mitogen_free', 'mitogen_host_pinned')

#: Size of the file the main playbook copies to every host.
BIG_FILE_SIZE = 5 * 1024 * 1024

#: Seconds the kill test waits for the task's process to show up.
KILL_WAIT = 20.0
#: Seconds the kill playbook may take (it needs 3-13 s, idle or busy).
KILL_RUN_TIMEOUT = 30


@pytest.fixture(scope='module')
def mitogen_path():
    """The directory holding ``ansible_mitogen`` (for ``PYTHONPATH``)."""
    if not os.path.exists(ansible_harness.ansible_playbook()):
        pytest.skip('%s is missing: ansible-core is not installed there '
                    '(scripts/setup installs it)'
                    % ansible_harness.ansible_playbook())
    return ansible_harness.ansible_mitogen_path()


def test_harness_fills_an_empty_cache_with_the_package_and_its_wheel(
        tmp_path, monkeypatch):
    # On a fresh machine unpacking the package downloads the wheel from
    # within the package's own cache fill: neither may wait for the other.
    # The download is replaced by a copy of the wheel already cached.
    cached = ansible_harness.mitogen_wheel()

    def download(dest):
        copy = os.path.join(dest, os.path.basename(cached))
        shutil.copy(cached, copy)
        return copy
    monkeypatch.setattr(ansible_harness, '_download_wheel', download)
    found = []
    filler = threading.Thread(target=lambda: found.append(
        ansible_harness.ansible_mitogen_path(str(tmp_path))))
    filler.daemon = True
    filler.start()
    filler.join(60)
    assert found, 'filling an empty cache did not finish in 60 s'
    assert os.path.exists(os.path.join(found[0], 'ansible_mitogen',
                                       '__init__.py'))
    assert os.path.exists(os.path.join(
        str(tmp_path), os.path.basename(cached)))


@pytest.fixture(scope='module')
def scratch():
    """A world-writable directory for the targets, which run as several
    accounts on this machine."""
    path = tempfile.mkdtemp(prefix='mitogen-ansible-')
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope='module')
def target_pythons():
    """{host name: interpreter or None}: the oldest target Python the
    ansible-core in use supports, and the newest this project supports."""
    return {
        'python_oldest': interpreters.find(
            ansible_harness.oldest_target_python()),
        'python_newest': interpreters.find(interpreters.WANTED[-1]),
    }


def main_hosts(sshd, users, target_pythons):
    """The hosts of the main playbook: each way of reaching a target that
    Mitogen for Ansible must handle, in one inventory."""
    hosts = {
        # On the controller itself.
        'local': {'ansible_connection': 'local',
                  'ansible_python_interpreter': '{{ ansible_playbook_python }}'},
        # Key logins, with the interpreter found by discovery as mitouser.
        'root': ansible_harness.ssh_host(
            sshd, 'root', ansible_python_interpreter='/usr/bin/python3'),
        'user': ansible_harness.ssh_host(sshd, users.user),
        # become: sudo without and with a password, su with a password.
        'sudo_nopass': ansible_harness.ssh_host(
            sshd, users.nopass, ansible_python_interpreter=users.python,
            ansible_become=True, ansible_become_method='sudo',
            ansible_become_user='root'),
        'sudo_password': ansible_harness.ssh_host(
            sshd, users.passwd, ansible_python_interpreter=users.python,
            ansible_become=True, ansible_become_method='sudo',
            ansible_become_user='root',
            ansible_become_password=users.password),
        'su_password': ansible_harness.ssh_host(
            sshd, users.user, ansible_python_interpreter=users.python,
            ansible_become=True, ansible_become_method='su',
            ansible_become_user=users.passwd,
            ansible_become_password=users.password,
            # Stock Ansible hands its temporary files to the unprivileged
            # account this way (the machine has no setfacl).
            ansible_shell_allow_world_readable_temp=True),
        # Nothing listens on this port.
        'unreachable': ansible_harness.ssh_host(
            sshd, 'root', ansible_port=sshd_module.free_port(),
            ansible_python_interpreter='/usr/bin/python3'),
        'bad_python': ansible_harness.ssh_host(
            sshd, 'root',
            ansible_python_interpreter='/nonexistent/bin/python3'),
    }
    for name, found in target_pythons.items():
        if found is not None:
            hosts[name] = ansible_harness.ssh_host(
                sshd, 'root', ansible_python_interpreter=found.path)
    return hosts


@pytest.fixture(scope='module')
def async_dirs(test_users):
    """Async job directories (``~/.ansible_async``) of the accounts the
    targets run as; those the tests create are removed again (when
    empty: a concurrent session may be using one)."""
    homes = [pwd.getpwnam('root').pw_dir] + [
        test_users.home(name) for name in
        (test_users.user, test_users.nopass, test_users.passwd)]
    paths = [os.path.join(home, '.ansible_async') for home in homes]
    created = [path for path in paths if not os.path.exists(path)]
    yield
    for path in created:
        try:
            os.rmdir(path)
        except OSError:
            pass


@pytest.fixture(scope='module')
def big_file(tmp_path_factory):
    """(path, SHA-1) of a multi-MiB file of random bytes."""
    path = tmp_path_factory.mktemp('ansible-big') / 'big.bin'
    data = os.urandom(BIG_FILE_SIZE)
    path.write_bytes(data)
    return str(path), hashlib.sha1(data).hexdigest()


@pytest.fixture(scope='module')
def main_playbook(tmp_path_factory, sshd, test_users, mitogen_path, scratch,
                  big_file, async_dirs, target_pythons):
    base = tmp_path_factory.mktemp('ansible-main')
    hosts = main_hosts(sshd, test_users, target_pythons)
    inventory = ansible_harness.write_inventory(
        str(base / 'inventory.yml'), hosts)
    return ansible_harness.Playbook(
        'main.yml', inventory, str(base), scratch, sshd=sshd,
        mitogen_path=mitogen_path, forks=len(hosts), extra_vars={
            'big_file': big_file[0],
            'big_sha1': big_file[1],
        })


@pytest.fixture(scope='module')
def linear_main(main_playbook):
    """The reference: the main playbook run by stock ``linear``."""
    return main_playbook.run_once('linear')


@pytest.fixture(scope='module', params=MITOGEN_STRATEGIES)
def mitogen_main(request, main_playbook):
    """The main playbook run by one Mitogen strategy."""
    return main_playbook.run_once(request.param)


@pytest.fixture(scope='module', params=('linear',) + MITOGEN_STRATEGIES)
def any_main(request, main_playbook):
    """The main playbook run by each strategy, stock linear included."""
    return main_playbook.run_once(request.param)


# --- the reference run -----------------------------------------------------

def statuses(run, task):
    return {host: [r['status'] for r in records]
            for (name, host), records in run.results.items() if name == task}


def test_linear_reference_reaches_every_kind_of_host(linear_main):
    """The harness works with stock Ansible: every reachable host got
    through the whole play (so become, interpreters and sshd settings are
    right), the refused port is unreachable, the missing interpreter
    fails."""
    run = linear_main
    assert run.stats, run.describe()
    facts = statuses(run, 'Gathering Facts')
    assert facts.pop('unreachable') == ['unreachable'], run.describe()
    assert facts.pop('bad_python') == ['failed'], run.describe()
    assert all(v == ['ok'] for v in facts.values()), run.describe()
    last = statuses(run, "Remove the host's scratch directory")
    assert sorted(last) == sorted(facts), run.describe()
    assert all(v == ['ok'] for v in last.values()), run.describe()


def test_linear_reference_runs_become_as_target_user(linear_main, test_users):
    """The become hosts run tasks as the account they become."""
    results = {host: records[0]['result']['stdout']
               for (task, host), records in linear_main.results.items()
               if task == 'Run a command'}
    assert results['sudo_nopass'] == 'root'
    assert results['sudo_password'] == 'root'
    assert results['su_password'] == test_users.passwd
    assert results['user'] == test_users.user


@pytest.mark.parametrize('host', ['python_oldest', 'python_newest'])
def test_targets_run_oldest_and_newest_python(any_main, target_pythons, host):
    """The custom module ran on the interpreter versions of the
    python_oldest and python_newest hosts."""
    found = target_pythons[host]
    if found is None:
        pytest.skip('no interpreter for %s on this machine' % host)
    records = any_main.results.get(
        ('Run a custom module with a custom module_utils', host))
    assert records, any_main.describe()
    assert records[0]['result'].get('python_version') == found.version, (
        any_main.describe())


# --- Mitogen strategies against the reference ------------------------------

#: The host whose interpreter does not exist. Stock Ansible reaches it and
#: reports the module failed; Mitogen for Ansible starts the interpreter as
#: its connection, and 0.3.54 reports the host unreachable. Either way
#: that host stops there: :func:`test_missing_interpreter_stops_its_host`
#: checks it, the comparisons leave it out.
MISSING_INTERPRETER_HOST = 'bad_python'


def test_play_recap_matches_linear(mitogen_main, linear_main):
    """Same ok/changed/failed/unreachable/skipped counts per host."""
    def recap(run):
        return {host: stats for host, stats in run.stats.items()
                if host != MISSING_INTERPRETER_HOST}
    assert recap(mitogen_main), mitogen_main.describe()
    assert recap(mitogen_main) == recap(linear_main), mitogen_main.describe()


def test_task_results_match_linear(mitogen_main, linear_main):
    """Same status and (normalised) result for every task on every host."""
    hosts = set(linear_main.stats) - {MISSING_INTERPRETER_HOST}
    problems = ansible_harness.differences(linear_main, mitogen_main, hosts)
    assert not problems, '\n'.join(problems[:20]) + '\n' + (
        mitogen_main.describe())


def test_missing_interpreter_stops_its_host(any_main):
    """The host whose interpreter is missing fails fact gathering, with the
    interpreter's path in the message, and runs nothing else."""
    host = MISSING_INTERPRETER_HOST
    records = {task: r for (task, h), r in any_main.results.items()
               if h == host}
    assert list(records) == ['Gathering Facts'], any_main.describe()
    [record] = records['Gathering Facts']
    assert record['status'] in ('failed', 'unreachable'), any_main.describe()
    assert '/nonexistent/bin/python3' in json.dumps(record['result'])
    stats = any_main.stats[host]
    assert (stats['ok'], stats['failures'] + stats['unreachable']) == (0, 1)


# --- process hygiene -------------------------------------------------------

def test_no_process_left_after_run(any_main):
    """Once ansible-playbook exits, nothing it started remains: no
    multiplexer, no worker, no ssh, no child on a target."""
    assert any_main.leftover_processes == [], any_main.describe()


def test_no_unix_socket_left_after_run(any_main):
    """No UNIX socket file (multiplexer listener, ssh control socket)
    remains in the run's TMPDIR or elsewhere in its directory."""
    assert any_main.leftover_sockets == [], any_main.describe()


# --- many hosts at once ----------------------------------------------------

#: Aliases of the private sshd in the many-hosts inventory.
MANY_HOSTS = 12


@pytest.fixture(scope='module')
def many_playbook(tmp_path_factory, sshd, test_users, mitogen_path, scratch):
    base = tmp_path_factory.mktemp('ansible-many')
    hosts = {}
    for n in range(1, MANY_HOSTS + 1):
        user = 'root' if n % 2 else test_users.user
        hosts['h%02d' % n] = ansible_harness.ssh_host(
            sshd, user, ansible_python_interpreter='/usr/bin/python3')
    inventory = ansible_harness.write_inventory(
        str(base / 'inventory.yml'), hosts)
    return ansible_harness.Playbook(
        'many_hosts.yml', inventory, str(base), scratch, sshd=sshd,
        mitogen_path=mitogen_path, forks=MANY_HOSTS)


@pytest.fixture(scope='module', params=MITOGEN_STRATEGIES)
def mitogen_many(request, many_playbook):
    return many_playbook.run_once(request.param)


def test_many_hosts_linear_reference_succeeds(many_playbook):
    """Every host of the reference run got through every task."""
    linear_many = many_playbook.run_once('linear')
    assert sorted(linear_many.stats) == ['h%02d' % n for n in
                                         range(1, MANY_HOSTS + 1)]
    for host, stats in linear_many.stats.items():
        assert (stats['failures'], stats['unreachable']) == (0, 0), (
            linear_many.describe())


def test_many_hosts_match_linear(mitogen_many, many_playbook):
    """Twelve hosts with forks=12: same recap and results as linear."""
    linear_many = many_playbook.run_once('linear')
    assert mitogen_many.stats == linear_many.stats, mitogen_many.describe()
    problems = ansible_harness.differences(linear_many, mitogen_many)
    assert not problems, '\n'.join(problems[:20]) + '\n' + (
        mitogen_many.describe())


def test_many_hosts_leave_nothing_behind(mitogen_many):
    """No process and no UNIX socket remain after twelve connections."""
    assert (mitogen_many.leftover_processes,
            mitogen_many.leftover_sockets) == ([], []), (
        mitogen_many.describe())


# --- a task killed on its target -------------------------------------------
#
# The process killed is the one running the task's module on the target:
# with Mitogen for Ansible, the target's context itself (modules run in
# it), so its connection dies and must be made again for the next task.
# Killing Ansible's own WorkerProcess instead makes stock Ansible end the
# whole run ("A worker was found in a dead state"), whatever the strategy.

#: The host whose task process the test kills.
VICTIM = 'victim'


class Killer(object):
    """Called while the kill playbook runs: waits for the victim's PID
    file, then SIGKILLs that process."""

    def __init__(self, pid_dir):
        self.pid_file = os.path.join(pid_dir, VICTIM)
        self.killed = None

    def __call__(self, run_dir):
        deadline = time.monotonic() + KILL_WAIT
        while time.monotonic() < deadline:
            try:
                with open(self.pid_file) as f:
                    pid = int(f.read())
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            status = ansible_harness.leakcheck.process_status(pid)
            os.kill(pid, signal.SIGKILL)
            self.killed = (pid, status and status[2])
            return


@pytest.fixture(scope='module', params=('linear',) + MITOGEN_STRATEGIES)
def killed_run(request, tmp_path_factory, sshd, test_users, mitogen_path,
               scratch):
    """(run, killer): the kill playbook on the victim (root over ssh), an
    ordinary account over ssh and the local host, run by one strategy."""
    base = tmp_path_factory.mktemp('ansible-kill')
    pid_dir = os.path.join(scratch, 'pids-' + request.param)
    os.mkdir(pid_dir)
    os.chmod(pid_dir, 0o1777)
    hosts = {
        VICTIM: ansible_harness.ssh_host(
            sshd, 'root', ansible_python_interpreter='/usr/bin/python3'),
        'user': ansible_harness.ssh_host(
            sshd, test_users.user,
            ansible_python_interpreter=test_users.python),
        'local': {'ansible_connection': 'local',
                  'ansible_python_interpreter':
                      '{{ ansible_playbook_python }}'},
    }
    inventory = ansible_harness.write_inventory(
        str(base / 'inventory.yml'), hosts)
    playbook = ansible_harness.Playbook(
        'kill_task.yml', inventory, str(base), scratch, sshd=sshd,
        mitogen_path=mitogen_path, forks=len(hosts), timeout=KILL_RUN_TIMEOUT,
        extra_vars={'pid_dir': pid_dir, 'victim': VICTIM})
    killer = Killer(pid_dir)
    return playbook.run(request.param, during=killer), killer


def test_killed_task_fails_only_on_its_host(killed_run):
    """SIGKILL of the process running a task on one target: that task
    fails there and succeeds elsewhere; the next task runs on every host,
    the victim included (Mitogen for Ansible connects again)."""
    run, killer = killed_run
    assert killer.killed, 'no PID file appeared\n' + run.describe()
    before = statuses(run, 'Before the kill')
    killed = statuses(run, 'Sleep until killed')
    after = statuses(run, 'After the kill')
    assert before == {VICTIM: ['ok'], 'user': ['ok'], 'local': ['ok']}, (
        run.describe())
    # ansible-core 2.19 reports Mitogen's "disconnected" as a failure,
    # 2.21 as unreachable; ignore_unreachable lets the play go on anyway.
    assert killed.pop(VICTIM, None) in (['failed'], ['unreachable']), (
        run.describe())
    assert killed == {'user': ['ok'], 'local': ['ok']}, run.describe()
    assert after == {VICTIM: ['ok'], 'user': ['ok'], 'local': ['ok']}, (
        run.describe())


def test_killed_task_leaves_nothing_behind(killed_run):
    """No process and no UNIX socket remain after a run with a killed
    task."""
    run, _ = killed_run
    assert (run.leftover_processes, run.leftover_sockets) == ([], []), (
        run.describe())
