"""
Functions the sudo, su and doas tests call in their children: they report
who and where the child is. Python 2.7 compatible.
"""
import os


def identity():
    """``(uid, euid, gid)`` of the calling process."""
    return os.getuid(), os.geteuid(), os.getgid()


def environ_get(name):
    """The value of environment variable `name`, or None."""
    return os.environ.get(name)


def getcwd():
    return os.getcwd()


def getpid():
    return os.getpid()


def echo(data):
    """Return `data` unchanged: a round trip through the child."""
    return data


def byte_count(data):
    """The length of `data`, received from the parent."""
    return len(data)


def make_bytes(n):
    """`n` bytes cycling through every byte value, sent to the parent."""
    block = bytearray(range(256))
    return bytes(block * (n // 256) + block[:n % 256])


def ancestors(stop_pid):
    """PIDs from this process up its parents, stopping before `stop_pid`
    (or at PID 1): the child and the login programs between it and the
    process that started them."""
    pids = []
    pid = os.getpid()
    while pid not in (stop_pid, 0, 1):
        pids.append(pid)
        with open('/proc/%d/stat' % pid) as f:
            stat = f.read()
        pid = int(stat[stat.rfind(')') + 2:].split()[1])
    return pids
