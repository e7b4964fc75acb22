"""
Functions the container tests call in children inside containers and
namespaces, whose interpreter may be Debian's ``python3-minimal``: only
modules that package has. Python 2.7 compatible, like every child-side
helper.
"""
import os
import socket
import subprocess
import sys


def where():
    """``(hostname, network interface names, root directory's device and
    inode)``: what tells one namespace from another."""
    st = os.stat('/')
    return (socket.gethostname(),
            sorted(name for _, name in socket.if_nameindex()),
            (st.st_dev, st.st_ino))


def child_pid():
    """The PID a process started by this one sees for itself."""
    return int(subprocess.check_output(['sh', '-c', 'echo $$']))


def read(path):
    """The text of `path`, or None if there is none."""
    try:
        with open(path) as f:
            return f.read()
    except (IOError, OSError):
        return None


def identity():
    """``(uid, gid, HOME, PATH)``."""
    return (os.getuid(), os.getgid(), os.environ.get('HOME'),
            os.environ.get('PATH'))


def loaded_at_start(names):
    """The names of `names` that are imported in this process."""
    return sorted(name for name in names if name in sys.modules)


def importable(name):
    """Whether module `name` exists in this interpreter."""
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def echo(value):
    return value
