"""
The seed's routing example as a real chain across two "hosts":
``master -> ssh1 -> sudo1 -> ssh2 -> sudo2``.

The hosts are network namespaces made for this module (``TESTENV.md``
section 5): a bridge in this namespace and one veth into each namespace,
addresses from ``10.200.<n>.0/24`` on them only, no default route, so
nothing leaves the machine. Each namespace runs its own sshd on port 22,
under a hostname of its own (``unshare --uts``): ``host1`` and ``host2``.
Filesystem and accounts are shared, as the test accounts of :mod:`users`.

The chain logs in as root on host1, becomes ``mitonp`` with sudo, logs in
from there as ``mitonp`` on host2 (with a key only ``mitonp`` can read),
and becomes root again with sudo. Per the seed, ssh1 must learn routes
(``ADD_ROUTE``) to ssh2 and sudo2, and sudo1 one to sudo2, as neither
started those contexts itself.
"""
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import types

import pytest

import mitogen.master
import sites
from sshd import FAST_KEX, SERVER_POLICY, SSHD, keygen, stop_process
from support import netns_funcs
from support import tree_helpers as th

#: The interpreter every account has.
PYTHON = '/usr/bin/python3'

#: Seconds an sshd may take to accept connections after it starts.
START_TIMEOUT = 10.0

MASTER_ONLY_PACKAGE = 'netns_chain_master_only'
MASTER_ONLY_ANSWER = u'answered at the far end'


def _run(argv):
    proc = subprocess.run(argv, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError('%s failed (status %d): %s' % (
            ' '.join(argv), proc.returncode,
            proc.stdout.decode('utf-8', 'replace').strip()))


def _free_subnet():
    """A third octet ``n`` such that no address of this namespace lies in
    10.200.n.0/24 (other test sessions may have their own hosts)."""
    out = subprocess.check_output(['ip', '-4', '-o', 'addr', 'show'])
    used = out.decode()
    start = os.getpid() % 200 + 20
    for i in range(234):
        n = (start + i) % 234 + 20
        if ' 10.200.%d.' % n not in used:
            return n
    pytest.skip('every subnet 10.200.20-253.0/24 is in use on this machine')


def _skip_reason():
    if os.getuid() != 0:
        return 'network namespaces and their sshds need root'
    for tool in ('ip', 'unshare'):
        if shutil.which(tool) is None:
            return '%s is not installed' % (tool,)
    if not os.path.exists(SSHD):
        return '%s is not installed (scripts/setup installs openssh-server)' \
            % (SSHD,)
    return None


class Host(object):
    """One namespace with its sshd."""

    def __init__(self, index, netns, address, tmpdir):
        self.name = 'host%d' % (index,)
        self.netns = netns
        self.address = address
        self.host_key = os.path.join(tmpdir, '%s_key' % (self.name,))
        self.config = os.path.join(tmpdir, '%s_sshd_config' % (self.name,))
        self.log = os.path.join(tmpdir, '%s_sshd.log' % (self.name,))
        self.pid_file = os.path.join(tmpdir, '%s_sshd.pid' % (self.name,))
        self.proc = None

    def write_config(self, keys_dir):
        keygen(self.host_key, 'mitogen-test-' + self.name)
        lines = [
            'Port 22',
            'ListenAddress %s' % (self.address,),
            'HostKey %s' % (self.host_key,),
            'PidFile %s' % (self.pid_file,),
            'AuthorizedKeysFile %s/%%u' % (keys_dir,),
        ] + SERVER_POLICY + [
            # Root's ~/.bashrc runs "pyenv rehash", which may wait for a
            # lock other logins hold; a login needs no rehash.
            'SetEnv PYENV_REHASH_TIMEOUT=0',
        ]
        with open(self.config, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        _run([SSHD, '-t', '-f', self.config])

    def known_hosts_line(self):
        with open(self.host_key + '.pub') as f:
            key_type, key = f.read().split()[:2]
        return '%s %s %s\n' % (self.address, key_type, key)

    def start(self):
        env = dict(os.environ)
        env.pop('MITOGEN_TEST_LEAK_TAG', None)
        # ip netns exec, unshare and sh each exec the next: the Popen's PID
        # is sshd's.
        with open(self.log, 'ab') as log:
            self.proc = subprocess.Popen(
                ['ip', 'netns', 'exec', self.netns, 'unshare', '--uts', 'sh',
                 '-c', 'hostname %s && exec %s -D -e -f %s'
                 % (self.name, SSHD, self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)

    def wait_listening(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection((self.address, 22), 1).close()
                return
            except OSError:
                time.sleep(0.01)
        with open(self.log, errors='replace') as f:
            raise RuntimeError('sshd of %s did not listen; its log:\n%s'
                               % (self.name, f.read()))

    def stop(self):
        stop_process(self.proc)
        self.proc = None


class Network(object):
    """The bridge, the namespaces, their sshds and the client material:
    :attr:`root_key` (readable by root only), :attr:`nopass_key` (owned by
    mitonp, mode 600), :attr:`ssh_config` (an ``ssh -F`` file trusting
    exactly the two hosts' keys, readable by everyone)."""

    def __init__(self, tag, subnet, tmpdir):
        self.bridge = 'mcb' + tag
        self.prefix = '10.200.%d.' % (subnet,)
        self.tmpdir = tmpdir
        self.hosts = [Host(i, 'mitogen-chain%d-%s' % (i, tag),
                           '%s1%d' % (self.prefix, i), tmpdir)
                      for i in (1, 2)]
        self.veths = ['mcv%d%s' % (i, tag) for i in (1, 2)]
        self.root_key = os.path.join(tmpdir, 'root_key')
        self.nopass_key = os.path.join(tmpdir, 'mitonp_key')
        self.ssh_config = os.path.join(tmpdir, 'ssh_config')
        self.known_hosts = os.path.join(tmpdir, 'known_hosts')
        self._netns_made = []
        self._bridge_made = False

    def create(self, users):
        for host in self.hosts:
            _run(['ip', 'netns', 'add', host.netns])
            self._netns_made.append(host.netns)
        _run(['ip', 'link', 'add', self.bridge, 'type', 'bridge'])
        self._bridge_made = True
        _run(['ip', 'addr', 'add', self.prefix + '1/24', 'dev', self.bridge])
        _run(['ip', 'link', 'set', self.bridge, 'up'])
        for host, veth in zip(self.hosts, self.veths):
            _run(['ip', 'link', 'add', veth, 'type', 'veth', 'peer', 'name',
                  'eth0', 'netns', host.netns])
            _run(['ip', 'link', 'set', veth, 'master', self.bridge, 'up'])
            _run(['ip', '-n', host.netns, 'addr', 'add', host.address + '/24',
                  'dev', 'eth0'])
            _run(['ip', '-n', host.netns, 'link', 'set', 'eth0', 'up'])
            _run(['ip', '-n', host.netns, 'link', 'set', 'lo', 'up'])
        self._write_client_files(users)
        os.makedirs('/run/sshd', mode=0o755, exist_ok=True)
        for host in self.hosts:
            host.write_config(os.path.join(self.tmpdir, 'keys'))
            host.start()
        for host in self.hosts:
            host.wait_listening()
        with open(self.known_hosts, 'w') as f:
            f.writelines(host.known_hosts_line() for host in self.hosts)
        os.chmod(self.known_hosts, 0o644)

    def _write_client_files(self, users):
        keys = os.path.join(self.tmpdir, 'keys')
        os.mkdir(keys)
        os.chmod(keys, 0o755)
        keygen(self.root_key)
        keygen(self.nopass_key)
        nopass = pwd.getpwnam(users.nopass)
        os.chown(self.nopass_key, nopass.pw_uid, nopass.pw_gid)
        for user, key in (('root', self.root_key),
                          (users.nopass, self.nopass_key)):
            dest = os.path.join(keys, user)
            shutil.copy(key + '.pub', dest)
            os.chmod(dest, 0o644)
        with open(self.ssh_config, 'w') as f:
            f.write('\n'.join([
                'Host *',
                '    UserKnownHostsFile %s' % (self.known_hosts,),
                '    GlobalKnownHostsFile /dev/null',
                '    CheckHostIP no',
                '    KexAlgorithms %s' % (FAST_KEX,),
            ]) + '\n')
        os.chmod(self.ssh_config, 0o644)

    def destroy(self):
        for host in self.hosts:
            host.stop()
        # Deleting a namespace deletes its end of the veth, and with it the
        # end on the bridge (asynchronously, about a second later).
        for netns in self._netns_made:
            subprocess.call(['ip', 'netns', 'del', netns])
        if self._bridge_made:
            subprocess.call(['ip', 'link', 'del', self.bridge])

    def ssh_kwargs(self, host, username, identity_file):
        return dict(hostname=host.address, username=username,
                    identity_file=identity_file,
                    ssh_args=['-F', self.ssh_config],
                    check_host_keys='enforce', python_path=PYTHON,
                    connect_timeout=30)


@pytest.fixture(scope='module')
def network(test_users):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tag = '%x' % (os.getpid(),)
    probe = 'mitogen-chain-probe-' + tag
    proc = subprocess.run(['ip', 'netns', 'add', probe],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode:
        pytest.skip('ip netns is unavailable: %s'
                    % proc.stdout.decode('utf-8', 'replace').strip())
    subprocess.call(['ip', 'netns', 'del', probe])
    tmpdir = tempfile.mkdtemp(prefix='mitogen-netns-')
    # sshd reads keys/<user> as that user; mitonp reads its key and config.
    os.chmod(tmpdir, 0o755)
    network = Network(tag, _free_subnet(), tmpdir)
    try:
        network.create(test_users)
        yield network
    finally:
        network.destroy()
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture(scope='module')
def master_only_site(tmp_path_factory):
    """A package on the master's ``sys.path`` only, never imported by the
    master itself."""
    yield from sites.master_only_package(
        tmp_path_factory, 'netns-master-only', MASTER_ONLY_PACKAGE, 'far',
        MASTER_ONLY_ANSWER)


@pytest.fixture(scope='module')
def chain(network, test_users, master_only_site):
    """``ssh1 -> sudo1 -> ssh2 -> sudo2``: root on host1, mitonp on host1,
    mitonp on host2, root on host2."""
    host1, host2 = network.hosts
    with mitogen.master.Router() as router:
        c = types.SimpleNamespace()
        c.ssh1 = router.ssh(**network.ssh_kwargs(host1, 'root',
                                                 network.root_key))
        c.sudo1 = router.sudo(via=c.ssh1, username=test_users.nopass,
                              python_path=PYTHON)
        c.ssh2 = router.ssh(via=c.sudo1, **network.ssh_kwargs(
            host2, test_users.nopass, network.nopass_key))
        c.sudo2 = router.sudo(via=c.ssh2, username='root',
                              python_path=PYTHON)
        try:
            yield c
        finally:
            c.ssh1.shutdown(wait=True)


def test_far_end_runs_on_host2_as_root(chain):
    assert chain.sudo2.call(netns_funcs.where) == ('host2', 0)


@pytest.mark.parametrize('hop, host, account', [
    ('ssh1', 'host1', 'root'),
    ('sudo1', 'host1', 'mitonp'),
    ('ssh2', 'host2', 'mitonp'),
])
def test_each_intermediate_runs_on_its_host_as_its_account(
        chain, hop, host, account):
    uid = pwd.getpwnam(account).pw_uid
    assert getattr(chain, hop).call(netns_funcs.where) == (host, uid)


def test_second_login_comes_from_host1_over_the_test_network(chain, network):
    host1, host2 = network.hosts
    client, _, server, port = chain.ssh2.call(
        netns_funcs.ssh_connection).split()
    assert (client, server, port) == (host1.address, host2.address, '22')


def test_far_end_imports_a_package_only_the_master_has(chain):
    assert chain.sudo2.call(th.call_in, MASTER_ONLY_PACKAGE + '.far',
                            'answer') == MASTER_ONLY_ANSWER


def test_ssh1_routes_ssh2_and_sudo2_through_sudo1(chain):
    routes = chain.ssh1.call(th.routes)
    assert routes[chain.ssh2.context_id] == chain.sudo1.context_id
    assert routes[chain.sudo2.context_id] == chain.sudo1.context_id


def test_sudo1_routes_sudo2_through_ssh2(chain):
    routes = chain.sudo1.call(th.routes)
    assert routes[chain.sudo2.context_id] == chain.ssh2.context_id
