"""
Login-failure suite: every connection method that logs in -- ssh (OpenSSH
client), paramiko, sudo, su and doas -- fails the same way, through the
same tests:

* no password given where one is needed:
  :class:`~mitogen.parent.PasswordRequiredError`, at once;
* a wrong password: :class:`~mitogen.parent.PasswordRefusedError`, within
  :data:`REFUSED_WITHIN` seconds, long before the connect timeout;
* (ssh, paramiko) a host key that is not known, or differs from the one
  recorded: :class:`mitogen.ssh.HostKeyError`;

each an instance of the method's documented ``PasswordError`` (or
``HostKeyError``), with Mitogen's texts; and nothing of the failed attempt
left running: no process anywhere under this one (the ssh client, the sshd
session, sudo, su, doas, started directly or by an intermediate), and no
fd or thread here.

Each method is tried on each hop it has: ``direct`` from the master, and
``via`` an intermediate context, through which the error must arrive with
its own type (:func:`mitogen.parent.register_proxy_error`). sudo, su and
doas only prompt an account other than root, so they are tried only
``via`` a context of that account (sudo and doas as mitopw, su as
mitouser); ssh ``via`` a Python 2.7 context, paramiko ``via`` a context
on this interpreter (it needs Paramiko installed).

The router and the intermediates live for the module; each test checks
that its failed attempt left them as it found them.
"""
import contextlib
import importlib
import os
import sys
import time

import pytest

import interpreters
import leakcheck
import mitogen.core
import mitogen.doas
import mitogen.master
import mitogen.parent
import mitogen.ssh
import mitogen.su
import mitogen.sudo

#: Connect timeout given to every attempt: a failure must be reported long
#: before it.
CONNECT_TIMEOUT = 30.0

#: Seconds within which a refused password must be reported. PAM (su)
#: delays a failed authentication by about 3 s, sudo waits about 2 s
#: before asking again; this leaves room for a loaded machine.
REFUSED_WITHIN = 12.0

#: Seconds within which a missing password must be reported: the program
#: asks at once.
REQUIRED_WITHIN = 6.0

#: Seconds within which what a failed attempt started must be gone.
GONE_WITHIN = 10.0

WRONG_PASSWORD = 'not-the-password'

METHODS = ['ssh', 'paramiko', 'sudo', 'su', 'doas']

#: (method, hop) pairs the suite runs: sudo, su and doas prompt only an
#: account other than root, so they have no direct hop.
CASES = [('ssh', 'direct'), ('ssh', 'via'), ('paramiko', 'direct'),
         ('paramiko', 'via'), ('sudo', 'via'), ('su', 'via'),
         ('doas', 'via')]


class Login(object):
    """How one method logs in, on one hop.

    .. attribute:: module

       The method's module, which documents its ``PasswordError``,
       ``PasswordRequiredError`` and ``PasswordRefusedError``.

    .. attribute:: via

       None, or the intermediate context the attempt goes through.

    .. attribute:: required_text, refused_text

       Text the errors of this method hold (Mitogen's wording).

    .. attribute:: program_text

       None, or what the login program says in both errors.
    """
    required_text = 'password is required but none was given'
    refused_text = 'password is incorrect'
    program_text = None
    #: None, or ``host_key_attempt(router, known_hosts, via)``.
    host_key_attempt = None

    def __init__(self, name, module, attempt, via=None):
        self.name = name
        self.module = module
        self._attempt = attempt
        self.via = via

    def __repr__(self):
        return 'Login(%r, via=%r)' % (self.name, self.via)

    def attempt(self, router, password=None):
        """Start a child that must fail to log in, with `password`."""
        return self._attempt(router, password, self.via)

    def attempt_with_host_keys(self, router, known_hosts):
        """Start a child with the known hosts file `known_hosts`."""
        return self.host_key_attempt(router, known_hosts, self.via)


def ssh_login(request, users, hop, router):
    sshd = request.getfixturevalue('sshd')

    def attempt(router, password, via):
        # Password only: no key is offered.
        return router.ssh(**sshd.ssh_kwargs(
            username=users.passwd, identity_file=None,
            python_path=users.python, password=password, via=via,
            ssh_args=['-o', 'PubkeyAuthentication=no'],
            connect_timeout=CONNECT_TIMEOUT))

    def host_key_attempt(router, known_hosts, via):
        return router.ssh(**sshd.ssh_kwargs(
            known_hosts=known_hosts, check_host_keys='enforce', via=via,
            connect_timeout=CONNECT_TIMEOUT))

    via = None
    if hop == 'via':
        # A 2.7 intermediate rebuilds the error's type name as 2.7 sees it.
        via = router.local(python_path=interpreters.require('2.7').path)
    login = Login('ssh', mitogen.ssh, attempt, via)
    login.required_text = 'no password was specified'
    login.program_text = 'Permission denied'
    login.host_key_attempt = host_key_attempt
    return login


def paramiko_login(request, users, hop, router):
    pytest.importorskip('paramiko', reason='paramiko is not installed '
                        '(scripts/setup installs it)')
    import mitogen.paramiko
    sshd = request.getfixturevalue('sshd')

    def attempt(router, password, via):
        return router.paramiko(
            hostname=sshd.host, port=sshd.port, username=users.passwd,
            known_hosts_file=sshd.known_hosts, python_path=users.python,
            password=password, via=via, connect_timeout=CONNECT_TIMEOUT)

    def host_key_attempt(router, known_hosts, via):
        return router.paramiko(
            hostname=sshd.host, port=sshd.port, username='root',
            identity_file=sshd.client_key, known_hosts_file=known_hosts,
            check_host_keys='enforce', python_path=users.python, via=via,
            connect_timeout=CONNECT_TIMEOUT)

    via = None
    if hop == 'via':
        via = router.local(python_path=sys.executable)
    login = Login('paramiko', mitogen.paramiko, attempt, via)
    login.required_text = 'no password was specified'
    login.host_key_attempt = host_key_attempt
    return login


def become_login(request, users, name, router):
    module = {'sudo': mitogen.sudo, 'su': mitogen.su,
              'doas': mitogen.doas}[name]
    if name == 'doas':
        users = request.getfixturevalue('doas_rules')
    if name == 'su':
        # su asks for the target's password: mitouser becomes mitopw.
        via = router.su(username=users.user, python_path=users.python)
        target = users.passwd
    else:
        # sudo and doas ask for the caller's: mitopw becomes mitonp.
        via = router.sudo(username=users.passwd, python_path=users.python)
        target = users.nopass

    def attempt(router, password, via):
        return router.connect(name, username=target, password=password,
                              python_path=users.python, via=via,
                              connect_timeout=CONNECT_TIMEOUT)

    return Login(name, module, attempt, via)


@pytest.fixture(scope='module')
def router():
    with mitogen.master.Router() as router:
        yield router


@pytest.fixture(scope='module')
def key_free_home(tmp_path_factory):
    """HOME pointing to an empty directory and no SSH agent, for the
    module: Paramiko, given no key and no password, looks in ``~/.ssh``
    and asks the agent; it must find nothing."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('HOME', str(tmp_path_factory.mktemp('home')))
        patch.delenv('SSH_AUTH_SOCK', raising=False)
        yield


@pytest.fixture(scope='module',
                params=[pytest.param(c, id='%s-%s' % c) for c in CASES])
def login(request, router, key_free_home):
    name, hop = request.param
    users = request.getfixturevalue('test_users')
    if name == 'ssh':
        return ssh_login(request, users, hop, router)
    if name == 'paramiko':
        return paramiko_login(request, users, hop, router)
    return become_login(request, users, name, router)


@pytest.fixture
def host_key_login(login):
    if login.host_key_attempt is None:
        pytest.skip('%s checks no host key' % (login.name,))
    return login


# --- helpers -----------------------------------------------------------------

def descendants():
    """``{pid: command}`` of every live process under this one."""
    children = {}
    for pid in map(int, filter(str.isdigit, os.listdir('/proc'))):
        status = leakcheck.process_status(pid)
        if status is not None and status[1] != 'Z':
            children.setdefault(status[0], []).append((pid, status[2]))
    found = {}
    todo = [os.getpid()]
    while todo:
        for pid, command in children.get(todo.pop(), ()):
            found[pid] = command
            todo.append(pid)
    return found


@contextlib.contextmanager
def nothing_left_running():
    """Assert that the block leaves no process under this one, and no fd
    or thread here, that was not there before it."""
    before = descendants()
    snapshot = leakcheck.Snapshot()
    yield
    deadline = time.monotonic() + GONE_WITHIN
    while True:
        new = dict((pid, command) for pid, command in descendants().items()
                   if pid not in before)
        if not new or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert new == {}
    assert leakcheck.find_leaks(snapshot, process_settle=0) == []


def assert_said(login, error, text):
    """Assert `error` holds `text`, what the program said, and (via=) the
    name of the intermediate."""
    assert text in str(error)
    if login.program_text is not None:
        assert login.program_text in str(error)
    assert_proxied(login, error)


def assert_proxied(login, error):
    if login.via is not None:
        assert '(via %s)' % (login.via.name,) in str(error)


# --- the suite ---------------------------------------------------------------

def test_missing_password_raises_password_required_error_at_once(router,
                                                                 login):
    with nothing_left_running():
        started = time.monotonic()
        with pytest.raises(login.module.PasswordRequiredError) as info:
            login.attempt(router)
        elapsed = time.monotonic() - started
    assert elapsed < REQUIRED_WITHIN
    assert isinstance(info.value, login.module.PasswordError)
    assert not isinstance(info.value, login.module.PasswordRefusedError)
    assert_said(login, info.value, login.required_text)


def test_wrong_password_raises_password_refused_error_fast(router, login):
    with nothing_left_running():
        started = time.monotonic()
        with pytest.raises(login.module.PasswordRefusedError) as info:
            login.attempt(router, WRONG_PASSWORD)
        elapsed = time.monotonic() - started
    assert elapsed < min(REFUSED_WITHIN, CONNECT_TIMEOUT)
    assert isinstance(info.value, login.module.PasswordError)
    assert not isinstance(info.value, login.module.PasswordRequiredError)
    assert_said(login, info.value, login.refused_text)
    assert WRONG_PASSWORD not in str(info.value)


@pytest.mark.parametrize('known_hosts', ['empty_known_hosts',
                                         'wrong_known_hosts'])
def test_refused_host_key_raises_host_key_error(request, router,
                                                host_key_login, known_hosts):
    path = request.getfixturevalue(known_hosts)
    with nothing_left_running():
        with pytest.raises(host_key_login.module.HostKeyError) as info:
            host_key_login.attempt_with_host_keys(router, path)
    assert 'host key verification failed' in str(info.value)
    assert_proxied(host_key_login, info.value)


@pytest.mark.parametrize('method', METHODS)
def test_password_errors_are_the_documented_classes(method):
    if method == 'paramiko':
        pytest.importorskip('paramiko', reason='paramiko is not installed '
                            '(scripts/setup installs it)')
    module = importlib.import_module('mitogen.' + method)
    assert module.PasswordError is mitogen.parent.PasswordError
    assert module.PasswordRequiredError is \
        mitogen.parent.PasswordRequiredError
    assert module.PasswordRefusedError is mitogen.parent.PasswordRefusedError
    assert issubclass(module.PasswordRequiredError, module.PasswordError)
    assert issubclass(module.PasswordRefusedError, module.PasswordError)
    assert issubclass(module.PasswordError, mitogen.core.StreamError)
