"""
Specification of the container and namespace connection methods of the
``mitogen-containers`` distribution.

- podman for real: a container (:mod:`containers`) whose only Python is
  Debian's ``python3-minimal``; the transport conformance suite runs there
  too (``tests/test_conformance.py``). The core boots on that interpreter
  without the modules it lacks.
- setns for real: a process made by the test with ``unshare`` in its own
  mount, UTS, network and PID namespaces, and the podman container.
- docker, buildah, kubectl, lxc, lxd, incus, jail and the PID lookups of
  setns without their daemons: stub executables check the exact argv the
  real tool would be given, then run the child here (or print the PID).
- chains: ssh -> podman, sudo -> podman; Mitogen for Ansible's
  ``mitogen_podman`` and ``mitogen_setns`` connections.
- errors: a missing tool names its ``*_path`` option; a missing or stopped
  container is named; a container without the interpreter says so, with
  the tool's own output.
"""
import datetime
import decimal
import json
import os
import shlex
import signal
import socket
import subprocess
import sys

import pytest

import containers
import mitogen.core
import mitogen.parent
import mitogen.setns
from support import container_funcs as funcs

#: A container name a shell would mangle, and that must reach the tool as
#: one argument, unchanged.
ODD_NAME = u"web 1 'quoted' \"dq\" $HOME;rm -rf ü"


# --- stub tools ---------------------------------------------------------------

STUB = '''\
#!%(python)s
# A stand-in for %(tool)s: checks its argv, records it, then either runs
# the rest of its argv (the interpreter) or prints a PID.
import json, os, sys
spec = json.load(open(%(spec)r))
argv = sys.argv[1:]
with open(%(log)r, 'a') as log:
    log.write(json.dumps(argv) + '\\n')
want = spec['argv']
if spec['mode'] == 'exec':
    if argv[:len(want)] != want:
        sys.stderr.write('stub %(tool)s: unexpected argv %%r, wanted %%r\\n'
                         %% (argv, want))
        sys.exit(2)
    rest = argv[len(want):]
    os.execvp(rest[0], rest)
if argv != want:
    sys.stderr.write('stub %(tool)s: unexpected argv %%r, wanted %%r\\n'
                     %% (argv, want))
    sys.exit(2)
sys.stdout.write(spec['output'])
sys.exit(spec.get('status', 0))
'''


class Stub(object):
    """An executable standing in for `tool` in `directory`; :meth:`expect`
    says which argv it accepts and what it does."""

    def __init__(self, directory, tool):
        self.tool = tool
        self.path = str(directory / tool)
        self.spec = str(directory / (tool + '.json'))
        self.log = str(directory / (tool + '.log'))
        with open(self.path, 'w') as f:
            f.write(STUB % dict(python=sys.executable, tool=tool,
                                spec=self.spec, log=self.log))
        os.chmod(self.path, 0o755)

    def expect(self, argv, mode='exec', output='', status=0):
        with open(self.spec, 'w') as f:
            json.dump(dict(argv=argv, mode=mode, output=output,
                           status=status), f)

    def calls(self):
        with open(self.log) as f:
            return [json.loads(line) for line in f]


@pytest.fixture
def stub(tmp_path):
    return lambda tool: Stub(tmp_path, tool)


def python_argv(calls, tool_argv):
    """The interpreter part of the argv a stub was given."""
    [argv] = calls
    assert argv[:len(tool_argv)] == tool_argv
    return argv[len(tool_argv):]


# --- the methods without their daemons --------------------------------------

#: method -> (kwargs naming the tool and the container, argv the tool must
#: get before the interpreter, context name).
STUBBED = {
    'podman': (dict(container=ODD_NAME, username='app'),
               ['exec', '--interactive', '--user', 'app', ODD_NAME]),
    'docker': (dict(container=ODD_NAME, username='app'),
               ['exec', '--interactive', '--user', 'app', ODD_NAME]),
    'buildah': (dict(container=ODD_NAME, username='app'),
                ['run', '--user', 'app', '--', ODD_NAME]),
    'kubectl': (dict(pod=ODD_NAME, kubectl_args=['--namespace', 'web',
                                                 '--container', 'app']),
                ['exec', '--stdin', '--namespace', 'web', '--container',
                 'app', ODD_NAME, '--']),
    'lxc': (dict(container=ODD_NAME),
            ['--clear-env', '--name', ODD_NAME, '--']),
    'lxd': (dict(container=ODD_NAME),
            ['exec', '--mode=non-interactive', ODD_NAME, '--']),
    'incus': (dict(container=ODD_NAME),
              ['exec', '--mode=non-interactive', ODD_NAME, '--']),
    'jail': (dict(container=ODD_NAME, username='app'),
             ['-U', 'app', ODD_NAME]),
}

#: method -> its path option.
PATH_OPTIONS = {
    'podman': 'podman_path', 'docker': 'docker_path',
    'buildah': 'buildah_path', 'kubectl': 'kubectl_path',
    'lxc': 'lxc_attach_path', 'lxd': 'lxc_path', 'incus': 'incus_path',
    'jail': 'jexec_path',
}


@pytest.mark.parametrize('method', sorted(STUBBED))
def test_method_gives_the_tool_the_exact_argv_and_calls_through_it(
        router, stub, method):
    kwargs, tool_argv = STUBBED[method]
    tool = stub(method)
    tool.expect(tool_argv)
    kwargs = dict(kwargs, python_path=sys.executable)
    kwargs[PATH_OPTIONS[method]] = tool.path
    context = getattr(router, method)(**kwargs)
    assert context.call(funcs.echo, u'through %s' % method) == \
        u'through %s' % method
    assert context.name == u'%s.%s' % (method, ODD_NAME)
    rest = python_argv(tool.calls(), tool_argv)
    assert rest[:2] == [sys.executable, '-c']
    assert len(rest) == 3


@pytest.mark.parametrize('method', ['podman', 'docker', 'buildah', 'jail'])
def test_without_username_the_tool_picks_the_containers_user(
        router, stub, method):
    kwargs, tool_argv = STUBBED[method]
    tool = stub(method)
    for flag in ('--user', '-U'):
        if flag in tool_argv:
            i = tool_argv.index(flag)
            tool_argv = tool_argv[:i] + tool_argv[i + 2:]
    tool.expect(tool_argv)
    kwargs = dict(kwargs, username=None, python_path=sys.executable)
    kwargs[PATH_OPTIONS[method]] = tool.path
    assert getattr(router, method)(**kwargs).call(funcs.echo, 1) == 1


def test_docker_image_runs_a_temporary_container_removed_afterwards(
        router, stub):
    tool = stub('docker')
    tool.expect(['run', '--interactive', '--rm', 'debian:12'])
    context = router.docker(image='debian:12', docker_path=tool.path,
                            python_path=sys.executable)
    assert context.call(funcs.echo, 2) == 2
    assert context.name == 'docker.debian:12'


def test_default_interpreter_is_python3_of_the_container(router, stub):
    tool = stub('podman')
    tool.expect(['exec', '--interactive', 'web', 'python3', '-c'],
                mode='print', status=1)
    with pytest.raises(mitogen.parent.EofError):
        router.podman(container='web', podman_path=tool.path)
    [argv] = tool.calls()
    assert argv[:5] == ['exec', '--interactive', 'web', 'python3', '-c']


@pytest.mark.parametrize('method', sorted(STUBBED))
def test_missing_tool_names_the_path_option(router, tmp_path, method):
    kwargs = dict(STUBBED[method][0])
    kwargs[PATH_OPTIONS[method]] = str(tmp_path / 'not-installed')
    with pytest.raises(mitogen.core.StreamError) as info:
        getattr(router, method)(**kwargs)
    assert 'set %s=' % (PATH_OPTIONS[method],) in str(info.value)


def test_tool_failure_names_the_container_and_carries_its_output(
        router, stub):
    tool = stub('kubectl')
    tool.expect([], mode='print', status=1)
    with pytest.raises(mitogen.parent.EofError) as info:
        router.kubectl(pod='web-0', kubectl_path=tool.path)
    message = str(info.value)
    assert "kubectl pod 'web-0'" in message
    assert 'stub kubectl: unexpected argv' in message


def test_methods_need_their_container():
    import mitogen.docker
    import mitogen.kubectl
    with pytest.raises(ValueError, match='kubectl needs a pod'):
        mitogen.kubectl.Options(max_message_size=1)
    with pytest.raises(ValueError, match='docker needs a container or an '
                                         'image'):
        mitogen.docker.Options(max_message_size=1)


def test_kubectl_args_must_be_a_list():
    import mitogen.kubectl
    with pytest.raises(TypeError, match='kubectl_args must be a list'):
        mitogen.kubectl.Options(pod='p', kubectl_args='-n web',
                                max_message_size=1)


# --- setns lookups without their daemons ------------------------------------

#: kind -> (path option, tool, argv the tool must get, what it prints).
LOOKUPS = {
    'docker': ('docker_path', 'docker',
               ['inspect', '--format={{.State.Pid}}', ODD_NAME], '%d\n'),
    'lxc': ('lxc_info_path', 'lxc-info',
            ['--no-humanize', '--pid', '--name', ODD_NAME], '%d\n'),
    'lxd': ('lxc_path', 'lxc',
            ['info', ODD_NAME],
            'Name: web\nStatus: RUNNING\nType: container\nPID: %d\n'),
    'machinectl': ('machinectl_path', 'machinectl',
                   ['show', '--property=Leader', ODD_NAME], 'Leader=%d\n'),
}


@pytest.fixture(scope='module')
def namespaced(tmp_path_factory):
    """A process in its own mount, UTS, network and PID namespaces
    (``unshare``), with the host name ``mitogen-ns`` and, on a tmpfs only
    its mount namespace sees, a file ``marker``. Yields `(pid, mount
    point)`; `pid` is that of the namespace's first process, on this
    machine."""
    if os.geteuid() != 0:
        pytest.skip('entering namespaces needs root')
    mnt = str(tmp_path_factory.mktemp('ns-mount'))
    script = ('hostname mitogen-ns && mount -t tmpfs tmpfs %s && '
              'echo inside > %s/marker && echo ready && exec sleep 3600'
              % (shlex.quote(mnt), shlex.quote(mnt)))
    proc = subprocess.Popen(
        ['unshare', '--mount', '--uts', '--net', '--pid', '--fork',
         'sh', '-c', script], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    inner = None
    try:
        assert proc.stdout.readline() == b'ready\n'
        with open('/proc/%d/task/%d/children' % (proc.pid, proc.pid)) as f:
            [inner] = [int(pid) for pid in f.read().split()]
        yield inner, mnt
    finally:
        # The first process of a PID namespace outlives unshare, and takes
        # only SIGKILL from outside; the namespace ends with it.
        if inner is not None:
            os.kill(inner, signal.SIGKILL)
        proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.mark.parametrize('kind', sorted(LOOKUPS))
def test_setns_finds_the_first_process_with_the_kinds_tool(
        router, stub, namespaced, kind):
    option, name, argv, output = LOOKUPS[kind]
    pid, _ = namespaced
    tool = stub(name)
    tool.expect(argv, mode='print', output=output % pid)
    context = router.setns(container=ODD_NAME, kind=kind,
                           python_path=sys.executable,
                           **{option: tool.path})
    assert context.call(funcs.where)[0] == 'mitogen-ns'
    assert context.name == u'setns.%s' % (ODD_NAME,)
    assert tool.calls() == [argv]


@pytest.fixture
def ns_context(router, stub, namespaced):
    tool = stub('docker')
    tool.expect(LOOKUPS['docker'][2], mode='print',
                output='%d\n' % namespaced[0])
    return router.setns(container=ODD_NAME, kind='docker',
                        docker_path=tool.path, python_path=sys.executable)


def test_setns_child_sees_the_namespaces_host_name_and_network(ns_context):
    hostname, interfaces, _ = ns_context.call(funcs.where)
    assert hostname == 'mitogen-ns' != socket.gethostname()
    assert interfaces == ['lo']
    assert len(socket.if_nameindex()) > 1


def test_setns_child_sees_the_namespaces_mounts(ns_context, namespaced):
    marker = os.path.join(namespaced[1], 'marker')
    assert ns_context.call(funcs.read, marker) == 'inside\n'
    assert not os.path.exists(marker)


def test_setns_processes_the_child_starts_are_in_the_pid_namespace(
        ns_context):
    # The namespace's first process is 1 (sh, now sleep); a new one gets a
    # small PID there, whatever this machine's PIDs are.
    assert ns_context.call(funcs.child_pid) < 100


def test_setns_child_runs_as_username_with_a_fresh_environment(
        router, stub, namespaced):
    tool = stub('docker')
    tool.expect(LOOKUPS['docker'][2], mode='print',
                output='%d\n' % namespaced[0])
    context = router.setns(container=ODD_NAME, kind='docker',
                           username='nobody', docker_path=tool.path,
                           python_path='/usr/bin/python3')
    uid, gid, home, path = context.call(funcs.identity)
    assert (uid, gid) == (65534, 65534)
    assert home == '/nonexistent'
    assert path == mitogen.setns.CONTAINER_PATH


def test_setns_unknown_user_is_refused(router, stub, namespaced):
    tool = stub('docker')
    tool.expect(LOOKUPS['docker'][2], mode='print',
                output='%d\n' % namespaced[0])
    with pytest.raises(mitogen.core.StreamError,
                       match="no user 'no-such-user'"):
        router.setns(container=ODD_NAME, kind='docker',
                     username='no-such-user', docker_path=tool.path)


def test_setns_failed_lookup_names_the_container_and_the_tools_output(
        router, stub):
    tool = stub('docker')
    tool.expect(LOOKUPS['docker'][2], mode='print',
                output='Error: No such object: web\n', status=1)
    with pytest.raises(mitogen.core.StreamError) as info:
        router.setns(container=ODD_NAME, kind='docker',
                     docker_path=tool.path)
    assert repr(ODD_NAME) in str(info.value)
    assert 'Error: No such object: web' in str(info.value)


def test_setns_missing_tool_names_the_path_option(router, tmp_path):
    with pytest.raises(mitogen.core.StreamError, match='set lxc_info_path='):
        router.setns(container='web', kind='lxc',
                     lxc_info_path=str(tmp_path / 'lxc-info'))


def test_setns_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="not 'podman'"):
        mitogen.setns.Options(container='web', kind='podman',
                              max_message_size=1)


# --- podman for real ----------------------------------------------------------

def test_podman_child_runs_in_the_container(router, podman_container):
    context = router.podman(container=podman_container.name)
    assert context.name == 'podman.' + podman_container.name
    _, interfaces, root = context.call(funcs.where)
    assert interfaces == ['lo']
    st = os.stat(containers.ROOTFS)
    assert root != (os.stat('/').st_dev, os.stat('/').st_ino)
    assert root[1] == st.st_ino


def test_podman_username_runs_the_child_as_that_account(
        router, podman_container):
    context = router.podman(container=podman_container.name,
                            username='nobody')
    assert context.call(funcs.identity)[:2] == (65534, 65534)


def test_core_boots_on_python3_minimal_importing_only_what_it_has(
        router, podman_container):
    context = router.podman(container=podman_container.name)
    assert not context.call(funcs.importable, 'decimal')
    assert context.call(funcs.loaded_at_start,
                        ['decimal', 'uuid', 'pstats', 'cProfile']) == []
    # Values of modules it has arrive; what it lacks fails that call only.
    moment = datetime.datetime(2026, 12, 3, 17, 0)
    assert context.call(funcs.echo, moment) == moment
    with pytest.raises(mitogen.core.CallError,
                       match='cannot unpickle decimal.Decimal'):
        context.call(funcs.echo, decimal.Decimal('1.5'))
    assert context.call(funcs.echo, {1, 2}) == {1, 2}


def test_python3_minimal_child_imports_the_service_framework(
        router, podman_container):
    # mitogen.service runs in every child Mitogen for Ansible reaches; it
    # must not need modules python3-minimal lacks (pprint).
    context = router.podman(container=podman_container.name)
    assert not context.call(funcs.importable, 'pprint')
    assert context.call(funcs.importable, 'mitogen.service')


def test_python3_minimal_child_starts_children_of_its_own(
        router, podman_container):
    context = router.podman(container=podman_container.name)
    local = router.local(via=context, python_path='python3')
    forked = router.fork(via=context)
    assert not local.call(funcs.importable, 'decimal')
    assert forked.call(funcs.echo, 3) == 3


def test_core_imports_decimal_only_when_a_message_needs_it(router):
    context = router.local(python_path=sys.executable)
    assert context.call(funcs.loaded_at_start, ['decimal', 'uuid']) == []
    assert context.call(funcs.echo, decimal.Decimal('1.5')) == \
        decimal.Decimal('1.5')


def test_podman_missing_container_is_named(router, podman_container):
    name = podman_container.name + '-absent'
    with pytest.raises(mitogen.parent.EofError) as info:
        router.podman(container=name)
    assert repr(name) in str(info.value)
    assert 'no such container' in str(info.value)


def test_podman_stopped_container_is_named(router, stopped_container):
    with pytest.raises(mitogen.parent.EofError) as info:
        router.podman(container=stopped_container.name)
    assert repr(stopped_container.name) in str(info.value)


def test_podman_without_the_interpreter_says_so_with_podmans_output(
        router, podman_container):
    with pytest.raises(mitogen.parent.EofError) as info:
        router.podman(container=podman_container.name,
                      python_path='python2.7')
    message = str(info.value)
    assert "no Python interpreter 'python2.7'" in message
    assert 'executable file not found' in message


def test_setns_into_the_podman_container(router, podman_container):
    # podman answers ``inspect --format={{.State.Pid}}`` like docker.
    context = router.setns(container=podman_container.name, kind='docker',
                           docker_path='podman')
    assert not context.call(funcs.importable, 'decimal')
    _, interfaces, root = context.call(funcs.where)
    assert interfaces == ['lo']
    assert root[1] == os.stat(containers.ROOTFS).st_ino


def test_ssh_then_podman(router, sshd, podman_container):
    host = router.ssh(**sshd.ssh_kwargs(python_path='/usr/bin/python3'))
    context = router.podman(container=podman_container.name, via=host)
    assert context.name == '%s.podman.%s' % (host.name,
                                             podman_container.name)
    assert context.call(funcs.echo, u'ssh -> podman') == u'ssh -> podman'
    assert not context.call(funcs.importable, 'decimal')


def test_sudo_then_podman(router, podman_container):
    become = router.sudo(username='root', python_path='/usr/bin/python3')
    context = router.podman(container=podman_container.name, via=become)
    assert context.call(funcs.echo, u'sudo -> podman') == u'sudo -> podman'


def test_podman_via_reports_a_missing_container_as_eof_error(
        router, podman_container):
    via = router.local(python_path=sys.executable)
    with pytest.raises(mitogen.parent.EofError) as info:
        router.podman(container='absent-' + podman_container.name, via=via)
    assert 'absent-' + podman_container.name in str(info.value)


# --- Mitogen for Ansible ------------------------------------------------------

def test_ansible_mitogen_podman_and_setns_connections(
        router, tmp_path_factory, full_python_container):
    """A playbook with Mitogen for Ansible's ``mitogen_podman`` and
    ``mitogen_setns`` connections reaches the container through both."""
    import ansible_harness
    if not os.path.exists(ansible_harness.ansible_playbook()):
        pytest.skip('ansible-core is not installed (run scripts/setup)')
    # A short directory: the run's UNIX sockets live under it.
    tmp_path = tmp_path_factory.mktemp('ans-ct')
    name = full_python_container.name
    common = {'ansible_host': name,
              'ansible_python_interpreter': containers.FULL_PYTHON}
    hosts = {
        'podman': dict(common, ansible_connection='mitogen_podman'),
        'setns': dict(common, ansible_connection='mitogen_setns',
                      mitogen_kind='docker', mitogen_docker_path='podman'),
    }
    inventory = ansible_harness.write_inventory(
        str(tmp_path / 'inventory.yml'), hosts)
    scratch = str(tmp_path / 'scratch')
    os.mkdir(scratch)
    playbook = ansible_harness.Playbook(
        'containers.yml', inventory, str(tmp_path), scratch,
        mitogen_path=ansible_harness.ansible_mitogen_path())
    run = playbook.run('mitogen_linear')
    assert run.returncode == 0, run.describe()
    expected = router.podman(container=name).call(socket.gethostname)
    for host in hosts:
        [record] = run.results[('Host name', host)]
        assert record['result']['stdout'] == expected, run.describe()
        [record] = run.results[('Stat a file of the container', host)]
        assert record['result']['stat']['exists'], run.describe()
    assert (run.leftover_processes, run.leftover_sockets) == ([], []), (
        run.describe())
