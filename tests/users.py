"""
Test accounts and privilege rules for the session (``TESTENV.md`` section
4), as the pytest plugin behind the ``test_users``, ``doas_rules`` and
``user_python`` fixtures.

========= ===========================================================
account   what it is for
========= ===========================================================
mitouser  an ordinary account; ``su`` target; no password (``*``, so
          key logins are not refused as "locked")
mitonp    may ``sudo`` anything without a password; no password
mitopw    may ``sudo`` anything after typing its password, asked every
          time (``timestamp_timeout=0``); its password is random
========= ===========================================================

Every account has ``/bin/bash`` as its shell and a home under ``/home``.
The sudo rules live in the drop-in ``/etc/sudoers.d/mitotest``, checked with
``visudo -cf`` before it is installed. Where ``doas`` is installed,
``/etc/doas.conf`` lets root become anyone without a password and mitopw
with its password; the file the machine had is put back afterwards.

Non-root accounts cannot run root's pyenv interpreters (``~root`` is mode
700): children running as them use :data:`USER_PYTHON`.

Several test sessions may run at once on one machine, and the accounts are
machine-wide: each session registers in :data:`STATE_DIR` under a lock. The
first session creates the accounts (and re-creates those a crashed session
left); the last one to leave removes them, with their homes, the drop-in and
the doas rules. Tests are skipped, with the reason, when the suite does not
run as root or ``useradd``/``sudo`` are missing.
"""
import fcntl
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid

import pytest

#: The ordinary account.
USER = 'mitouser'
#: The password-less sudoer.
NOPASS = 'mitonp'
#: The sudoer that types a password.
PASSWD = 'mitopw'
ACCOUNTS = (USER, NOPASS, PASSWD)

#: The interpreter children of non-root accounts run.
USER_PYTHON = '/usr/bin/python3'

SUDOERS_DROP_IN = '/etc/sudoers.d/mitotest'
SUDOERS_RULES = """\
# Written by the mitogen test suite (tests/users.py); removed after it.
%(nopass)s ALL=(ALL:ALL) NOPASSWD: ALL
%(passwd)s ALL=(ALL:ALL) ALL
Defaults:%(passwd)s timestamp_timeout=0
""" % {'nopass': NOPASS, 'passwd': PASSWD}

DOAS_CONF = '/etc/doas.conf'
DOAS_RULES = """\
# Written by the mitogen test suite (tests/users.py); restored after it.
permit nopass root
permit %(passwd)s
""" % {'passwd': PASSWD}

#: Where sessions register and the shared password is kept (root only).
STATE_DIR = os.path.join('/run' if os.path.isdir('/run')
                         else tempfile.gettempdir(), 'mitogen-test-users')


class Accounts(object):
    """What the ``test_users`` fixture gives a test: the account names,
    mitopw's password, and look-ups."""
    user = USER
    nopass = NOPASS
    passwd = PASSWD
    python = USER_PYTHON

    def __init__(self, password):
        #: The password of :attr:`passwd`.
        self.password = password

    def uid(self, name):
        return pwd.getpwnam(name).pw_uid

    def home(self, name):
        return pwd.getpwnam(name).pw_dir


def _run(argv, stdin=None):
    proc = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError('%s failed (status %d): %s' % (
            ' '.join(argv), proc.returncode,
            proc.stdout.decode('utf-8', 'replace').strip()))


def _start_time(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(')') + 2:].split()[19]


def _me():
    return '%d-%s' % (os.getpid(), _start_time(os.getpid()))


def _live_holders():
    holders = os.path.join(STATE_DIR, 'holders')
    live = []
    for entry in os.listdir(holders):
        pid, _, start = entry.partition('-')
        if _start_time(int(pid)) == start:
            live.append(entry)
        else:
            os.unlink(os.path.join(holders, entry))
    return live


class _Lock(object):
    def __enter__(self):
        for path in (STATE_DIR, os.path.join(STATE_DIR, 'holders')):
            os.makedirs(path, mode=0o700, exist_ok=True)
        self.fd = os.open(os.path.join(STATE_DIR, 'lock'),
                          os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def _processes_of(uids):
    found = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            if os.stat('/proc/' + name).st_uid in uids:
                found.append(int(name))
        except OSError:
            pass
    return found


def _remove_accounts():
    uids = set()
    for name in ACCOUNTS:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            pass
    # userdel refuses an account with processes; any left are strays of
    # the test sessions that used it.
    for pid in _processes_of(uids):
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    if os.path.exists(SUDOERS_DROP_IN):
        os.unlink(SUDOERS_DROP_IN)
    saved = os.path.join(STATE_DIR, 'doas.conf.orig')
    if os.path.exists(saved):
        shutil.move(saved, DOAS_CONF)
    elif os.path.exists(os.path.join(STATE_DIR, 'doas.conf.absent')):
        if os.path.exists(DOAS_CONF):
            os.unlink(DOAS_CONF)
        os.unlink(os.path.join(STATE_DIR, 'doas.conf.absent'))
    for name in ACCOUNTS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        subprocess.call(['userdel', '-r', '-f', name],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    password_file = os.path.join(STATE_DIR, 'password')
    if os.path.exists(password_file):
        os.unlink(password_file)


def _install_doas_rules():
    if shutil.which('doas') is None:
        return
    if os.path.exists(DOAS_CONF):
        shutil.copy2(DOAS_CONF, os.path.join(STATE_DIR, 'doas.conf.orig'))
    else:
        open(os.path.join(STATE_DIR, 'doas.conf.absent'), 'w').close()
    tmp = DOAS_CONF + '.mitotest'
    with open(tmp, 'w') as f:
        f.write(DOAS_RULES)
    os.chmod(tmp, 0o600)
    os.rename(tmp, DOAS_CONF)


def _create_accounts():
    password = 'pw-' + uuid.uuid4().hex
    for name in ACCOUNTS:
        _run(['useradd', '-m', '-s', '/bin/bash', name])
    for name in (USER, NOPASS):
        _run(['usermod', '-p', '*', name])
    _run(['chpasswd'], stdin=('%s:%s\n' % (PASSWD, password)).encode())
    tmp = os.path.join(STATE_DIR, 'sudoers')
    with open(tmp, 'w') as f:
        f.write(SUDOERS_RULES)
    os.chmod(tmp, 0o440)
    _run(['visudo', '-cf', tmp])
    shutil.move(tmp, SUDOERS_DROP_IN)
    _install_doas_rules()
    fd = os.open(os.path.join(STATE_DIR, 'password'),
                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as f:
        f.write(password)
    return password


def _complete():
    try:
        for name in ACCOUNTS:
            pwd.getpwnam(name)
    except KeyError:
        return False
    return (os.path.exists(SUDOERS_DROP_IN) and
            os.path.exists(os.path.join(STATE_DIR, 'password')))


def _skip_reason():
    if os.getuid() != 0:
        return 'test accounts and sudo rules need root'
    for tool in ('useradd', 'userdel', 'usermod', 'chpasswd', 'sudo',
                 'visudo'):
        if shutil.which(tool) is None:
            return ('%s is not installed (scripts/setup installs sudo; '
                    'useradd comes with passwd)' % (tool,))
    if not os.path.exists(USER_PYTHON):
        return '%s, the Python of non-root accounts, is missing' % (
            USER_PYTHON,)
    return None


@pytest.fixture(scope='session')
def test_users():
    """The session's :class:`Accounts` (mitouser, mitonp, mitopw), created
    on first use and removed when the last session using them ends."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    me = _me()
    with _Lock():
        if not _live_holders() or not _complete():
            _remove_accounts()
            try:
                password = _create_accounts()
            except Exception:
                _remove_accounts()
                raise
        else:
            with open(os.path.join(STATE_DIR, 'password')) as f:
                password = f.read()
        open(os.path.join(STATE_DIR, 'holders', me), 'w').close()
    try:
        yield Accounts(password)
    finally:
        with _Lock():
            os.unlink(os.path.join(STATE_DIR, 'holders', me))
            if not _live_holders():
                _remove_accounts()


@pytest.fixture(scope='session')
def doas_rules(test_users):
    """:class:`Accounts`, for tests of doas: skipped, with the reason, where
    doas is not installed or :data:`DOAS_CONF` does not hold the rules of
    :data:`DOAS_RULES`."""
    if shutil.which('doas') is None:
        pytest.skip('doas is not installed (scripts/setup installs the '
                    'Debian package doas)')
    try:
        with open(DOAS_CONF) as f:
            rules = f.read()
    except OSError:
        rules = None
    if rules != DOAS_RULES:
        pytest.skip('%s does not hold the test rules: doas was installed '
                    'after the test accounts were made' % (DOAS_CONF,))
    return test_users


@pytest.fixture(scope='session')
def user_python(test_users):
    """The interpreter path for children running as a test account."""
    return test_users.python
