"""
A private OpenSSH server on 127.0.0.1 for the test session (see
``TESTENV.md`` section 2), as the pytest plugin behind the ``sshd`` fixture.

``/usr/sbin/sshd -D -e`` runs as a child of the test process, as root, on a
free port, with everything of its own in a temporary directory: host key,
config, log, and authorized keys (``AuthorizedKeysFile <tmp>/keys/%u``,
holding the session's client key for root and the test users). The
machine's own sshd, keys and ``~/.ssh`` are never used or changed.

* Root logs in with the client key only. The users of
  :data:`PASSWORD_USERS` may also log in with their password.
* ``SetEnv PYENV_VERSION=...`` lists every pyenv interpreter of root
  (pyenv's global version first), so ``python2.7``, ``python3.6``, ... run
  by name in a root login; other users only have the system ``python3``.
  Root's ``~/.bashrc`` (``pyenv init``) runs at every root login.
* The client side never reads ``~/.ssh/config`` or the machine's known
  hosts: :meth:`SshServer.client_config` writes an ``ssh -F`` file that
  trusts exactly this server's host key.

The server stops (SIGTERM, then waited for) at the end of the session. Tests
that need it are skipped, with the reason, where sshd is not installed or
the suite does not run as root.

The ``loopback_hosts`` fixture (:class:`LoopbackHosts`) gives a hundred more
"hosts": the same server configuration listening on 127.0.0.2 to
127.0.0.101 (on Linux all of 127.0.0.0/8 is local), each address a target
of its own with its own context name.
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import leakcheck

SSHD = '/usr/sbin/sshd'
SSH_KEYGEN = 'ssh-keygen'
HOST = '127.0.0.1'

#: Accounts whose authorized keys file holds the client key: root and the
#: accounts of :mod:`users`.
KEY_USERS = ('root', 'mitouser', 'mitonp', 'mitopw')

#: Accounts that may also log in with a password (sshd ``Match User``
#: patterns).
PASSWORD_USERS = ('mitopw',)

#: Key exchange for the client: the default post-quantum one costs ~80 ms
#: per connection on this kind of machine.
FAST_KEX = 'curve25519-sha256'

PYENV_ROOT = '/root/.pyenv'

#: sshd settings every test server shares: key logins only (root too),
#: no PAM, no permission checks on the test's files, many logins at once.
SERVER_POLICY = [
    'PubkeyAuthentication yes',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'UsePAM no',
    'PermitRootLogin prohibit-password',
    'StrictModes no',
    'MaxStartups 100',
]

#: Seconds sshd may take to accept connections after it starts.
START_TIMEOUT = 10.0


def free_port():
    """A TCP port on 127.0.0.1 nothing listens on at the moment."""
    sock = socket.socket()
    try:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


def stop_process(proc):
    """SIGTERM `proc` (a :class:`subprocess.Popen`, or None) and wait for
    it, killing it if it has not ended within 10 s."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def keygen(path, comment='mitogen-test'):
    """Make an ed25519 key pair without passphrase at `path`(.pub)."""
    subprocess.check_call([SSH_KEYGEN, '-q', '-t', 'ed25519', '-N', '',
                           '-C', comment, '-f', path],
                          stdin=subprocess.DEVNULL)


def pyenv_versions():
    """pyenv's interpreter versions of root, the global one first."""
    try:
        versions = sorted(os.listdir(os.path.join(PYENV_ROOT, 'versions')))
    except OSError:
        return []
    try:
        with open(os.path.join(PYENV_ROOT, 'version')) as f:
            default = f.read().split()[0]
    except (OSError, IndexError):
        default = None
    if default in versions:
        versions.remove(default)
        versions.insert(0, default)
    return versions


def login_environment():
    """sshd ``SetEnv`` lines for root's logins: every pyenv interpreter by
    name, and no ``pyenv rehash``."""
    versions = pyenv_versions()
    if not versions:
        return []
    # PYENV_REHASH_TIMEOUT=0: root's ~/.bashrc runs "pyenv rehash" at every
    # login, which waits up to a minute for a lock other logins may hold; a
    # login needs no rehash.
    return ['SetEnv PYENV_VERSION=%s PYENV_REHASH_TIMEOUT=0'
            % ':'.join(versions)]


class SshServer(object):
    """The running server and the client material to reach it.

    .. attribute:: port
    .. attribute:: client_key

       Private key authorized for every user of :data:`KEY_USERS`.

    .. attribute:: known_hosts

       A known hosts file holding this server's host key, and nothing else.

    .. attribute:: host_key_line

       The server's key as a known hosts line, for ``127.0.0.1`` and
       ``localhost`` on :attr:`port`.
    """
    host = HOST

    def __init__(self, tmpdir):
        self.tmpdir = tmpdir
        self.proc = None
        self.port = None
        self._configs = {}
        self.host_key = os.path.join(tmpdir, 'host_key')
        self.client_key = os.path.join(tmpdir, 'client_key')
        self.config_path = os.path.join(tmpdir, 'sshd_config')
        self.log_path = os.path.join(tmpdir, 'sshd.log')
        self.known_hosts = os.path.join(tmpdir, 'known_hosts')

    # --- server ---------------------------------------------------------

    def _write_server_files(self):
        keygen(self.host_key, 'mitogen-test-host')
        keygen(self.client_key)
        keys = os.path.join(self.tmpdir, 'keys')
        os.mkdir(keys)
        os.chmod(keys, 0o755)
        for user in KEY_USERS:
            self.authorize(user)

    def authorize(self, user):
        """Let `user` log in with :attr:`client_key`."""
        dest = os.path.join(self.tmpdir, 'keys', user)
        shutil.copy(self.client_key + '.pub', dest)
        os.chmod(dest, 0o644)

    def _write_config(self):
        lines = [
            'Port %d' % self.port,
            'ListenAddress %s' % HOST,
            'HostKey %s' % self.host_key,
            'PidFile %s' % os.path.join(self.tmpdir, 'sshd.pid'),
            'AuthorizedKeysFile %s/keys/%%u' % self.tmpdir,
        ] + SERVER_POLICY + [
            'MaxSessions 100',
            'Subsystem sftp /usr/lib/openssh/sftp-server',
        ]
        lines += login_environment()
        lines += ['Match User ' + ','.join(PASSWORD_USERS),
                  '    PasswordAuthentication yes']
        with open(self.config_path, 'w') as f:
            f.write('\n'.join(lines) + '\n')

    def start(self):
        os.makedirs('/run/sshd', mode=0o755, exist_ok=True)
        self._write_server_files()
        for _ in range(5):
            self.port = free_port()
            self._write_config()
            subprocess.check_call([SSHD, '-t', '-f', self.config_path])
            if self._try_start():
                break
        else:
            raise RuntimeError('sshd did not start; its log:\n' +
                               self.log())
        self._write_known_hosts()

    def _try_start(self):
        env = dict(os.environ)
        env.pop('MITOGEN_TEST_LEAK_TAG', None)
        with open(self.log_path, 'ab') as log:
            self.proc = subprocess.Popen(
                [SSHD, '-D', '-e', '-f', self.config_path],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False        # most likely the port was taken
            try:
                socket.create_connection((HOST, self.port), 1).close()
                return True
            except OSError:
                time.sleep(0.01)
        self.stop()
        raise RuntimeError('sshd did not listen within %.0f s; its log:\n%s'
                           % (START_TIMEOUT, self.log()))

    def stop(self):
        stop_process(self.proc)
        self.proc = None

    def log(self):
        """What sshd logged so far."""
        try:
            with open(self.log_path, errors='replace') as f:
                return f.read()
        except OSError:
            return ''

    # --- client ---------------------------------------------------------

    @property
    def host_key_line(self):
        # Under both names: a ProxyJump hop must name the server differently
        # from the target, or ssh refuses the "jumphost loop".
        with open(self.host_key + '.pub') as f:
            key_type, key = f.read().split()[:2]
        return '[%s]:%d,[localhost]:%d %s %s\n' % (
            HOST, self.port, self.port, key_type, key)

    def _write_known_hosts(self):
        with open(self.known_hosts, 'w') as f:
            f.write(self.host_key_line)

    def client_config(self, known_hosts=None, with_key=False):
        """Path of an ``ssh -F`` file that uses `known_hosts` (default:
        :attr:`known_hosts`) and nothing of the machine's configuration;
        with `with_key`, it also names :attr:`client_key` (for ssh processes
        ssh starts itself, such as a ProxyJump hop)."""
        known_hosts = known_hosts or self.known_hosts
        key = (known_hosts, with_key)
        path = self._configs.get(key)
        if path is None:
            path = os.path.join(self.tmpdir,
                                'ssh_config.%d' % len(self._configs))
            lines = [
                'Host *',
                '    UserKnownHostsFile %s' % known_hosts,
                '    GlobalKnownHostsFile /dev/null',
                '    CheckHostIP no',
                '    KexAlgorithms %s' % FAST_KEX,
            ]
            if with_key:
                lines += ['    IdentityFile %s' % self.client_key,
                          '    IdentitiesOnly yes',
                          '    BatchMode yes']
            with open(path, 'w') as f:
                f.write('\n'.join(lines) + '\n')
            self._configs[key] = path
        return path

    def ssh_kwargs(self, username='root', known_hosts=None, ssh_args=(),
                   **kwargs):
        """Arguments of ``router.ssh()`` for a key login as `username` that
        trusts this server (``check_host_keys='enforce'``); `kwargs` add to
        or replace them."""
        result = dict(
            hostname=HOST,
            port=self.port,
            username=username,
            identity_file=self.client_key,
            ssh_args=['-F', self.client_config(known_hosts)] + list(ssh_args),
            python_path='python3',
            connect_timeout=30,
        )
        result.update(kwargs)
        return result


@pytest.fixture(scope='session')
def sshd():
    """The session's :class:`SshServer`, started on first use."""
    if not os.path.exists(SSHD):
        pytest.skip('%s is not installed (scripts/setup installs '
                    'openssh-server)' % SSHD)
    if os.getuid() != 0:
        pytest.skip('the private sshd must run as root to log in as root '
                    'and as the test users')
    tmpdir = tempfile.mkdtemp(prefix='mitogen-sshd-')
    # sshd reads keys/<user> as that user.
    os.chmod(tmpdir, 0o755)
    server = SshServer(tmpdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmpdir, ignore_errors=True)


def write_known_hosts(path, line):
    with open(path, 'w') as f:
        f.write(line)
    return str(path)


@pytest.fixture
def empty_known_hosts(tmp_path):
    return write_known_hosts(tmp_path / 'known_hosts', '')


@pytest.fixture
def wrong_known_hosts(tmp_path, sshd):
    """A known hosts file recording another key for the server."""
    other = str(tmp_path / 'other_host_key')
    keygen(other)
    with open(other + '.pub') as f:
        key_type, key = f.read().split()[:2]
    return write_known_hosts(tmp_path / 'known_hosts', '[%s]:%d %s %s\n' % (
        sshd.host, sshd.port, key_type, key))


#: sshd refuses more than this many ``ListenAddress`` sockets per process
#: ("Too many listen sockets. Enlarge MAX_LISTEN_SOCKS").
MAX_LISTEN_SOCKS = 16


class LoopbackHosts(object):
    """The server of :class:`SshServer` (its host key, its authorized keys,
    its settings) listening on :attr:`addresses`, all on one :attr:`port`.
    sshd listens on at most :data:`MAX_LISTEN_SOCKS` addresses, so the
    addresses are spread over several sshd processes with one
    configuration each.

    .. attribute:: known_hosts

       A known hosts file holding the server's key for every address.
    """

    def __init__(self, server, count=100):
        self.server = server
        self.addresses = ['127.0.0.%d' % (2 + i) for i in range(count)]
        self.tmpdir = os.path.join(server.tmpdir, 'loopback')
        self.known_hosts = os.path.join(self.tmpdir, 'known_hosts')
        self.procs = []
        self.port = None

    def _config(self, index, addresses):
        lines = ['Port %d' % self.port]
        lines += ['ListenAddress %s' % a for a in addresses]
        lines += [
            'HostKey %s' % self.server.host_key,
            'PidFile %s' % os.path.join(self.tmpdir, 'sshd.%d.pid' % index),
            'AuthorizedKeysFile %s/keys/%%u' % self.server.tmpdir,
        ] + SERVER_POLICY + ['MaxStartups 200'] + login_environment() + [
            'Match User ' + ','.join(PASSWORD_USERS),
            '    PasswordAuthentication yes']
        path = os.path.join(self.tmpdir, 'sshd_config.%d' % index)
        with open(path, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        subprocess.check_call([SSHD, '-t', '-f', path])
        return path

    def start(self):
        os.mkdir(self.tmpdir)
        for _ in range(5):
            self.port = free_port()
            if self._try_start():
                break
        else:
            raise RuntimeError('no free port for the loopback sshds')
        with open(self.known_hosts, 'w') as f:
            with open(self.server.host_key + '.pub') as pub:
                key_type, key = pub.read().split()[:2]
            for address in self.addresses:
                f.write('[%s]:%d %s %s\n' % (address, self.port, key_type,
                                             key))

    def _try_start(self):
        groups = [self.addresses[i:i + MAX_LISTEN_SOCKS]
                  for i in range(0, len(self.addresses), MAX_LISTEN_SOCKS)]
        with open(os.path.join(self.tmpdir, 'sshd.log'), 'ab') as log:
            for index, addresses in enumerate(groups):
                self.procs.append(subprocess.Popen(
                    [SSHD, '-D', '-e', '-f', self._config(index, addresses)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log))
        deadline = time.monotonic() + START_TIMEOUT
        for address in [g[-1] for g in groups]:
            while True:
                if any(p.poll() is not None for p in self.procs):
                    self.stop()     # most likely the port was taken
                    return False
                try:
                    socket.create_connection((address, self.port), 1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError('loopback sshd did not listen '
                                           'on %s' % (address,))
                    time.sleep(0.01)
        return True

    def sessions(self):
        """PIDs of the login sessions the servers run now (the processes
        sshd forked for each connection)."""
        parents = set(p.pid for p in self.procs)
        pids = []
        for name in os.listdir('/proc'):
            if name.isdigit():
                status = leakcheck.process_status(int(name))
                if status and status[1] != 'Z' and status[0] in parents:
                    pids.append(int(name))
        return pids

    def stop(self):
        for pid in self.sessions():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for proc in self.procs:
            stop_process(proc)
        self.procs = []

    def ssh_kwargs(self, address, username='mitouser', **kwargs):
        """Arguments of ``router.ssh()`` for a key login to `address`, as
        :meth:`SshServer.ssh_kwargs` gives them for the main server."""
        kwargs.setdefault('known_hosts', self.known_hosts)
        kwargs.setdefault('port', self.port)
        return self.server.ssh_kwargs(username=username, hostname=address,
                                      **kwargs)


@pytest.fixture(scope='session')
def loopback_hosts(sshd, test_users):
    """A :class:`LoopbackHosts` of 100 addresses, started on first use;
    ``mitouser`` (of ``test_users``) logs in on every one."""
    hosts = LoopbackHosts(sshd)
    try:
        hosts.start()
        yield hosts
    finally:
        hosts.stop()
