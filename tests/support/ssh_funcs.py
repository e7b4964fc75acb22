"""
Functions the ssh tests call in contexts on the other side of ssh. They run
on every child Python, 2.7 included.
"""
import hashlib
import os
import pwd
import sys


def python_version():
    """The context's Python version as "X.Y"."""
    return u'%d.%d' % sys.version_info[:2]


def login_user():
    """Name of the account the context runs as."""
    return pwd.getpwuid(os.getuid()).pw_name


def ssh_connection():
    """``$SSH_CONNECTION`` as sshd set it for the login, or None."""
    return os.environ.get('SSH_CONNECTION')


def sha256(data):
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def child_processes(pid=None):
    """``{pid: argv}`` of the child processes of `pid` (default: this
    process)."""
    parent = str(pid or os.getpid())
    found = {}
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name) as f:
                stat = f.read()
            with open('/proc/%s/cmdline' % name, 'rb') as f:
                cmdline = f.read()
        except (IOError, OSError):
            continue
        if stat[stat.rfind(')') + 2:].split()[1] == parent:
            found[int(name)] = [a.decode('utf-8', 'replace')
                                for a in cmdline.split(b'\0') if a]
    return found
