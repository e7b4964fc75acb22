"""
Helpers the benchmarks run under .venv share (bench_fileservice.py,
bench_ansible.py): the private sshd of tests/sshd.py in a work directory,
files of random bytes, the processes below a PID.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

import sshd  # noqa: E402  (tests/sshd.py: the private OpenSSH server)


def require_root_and_sshd():
    """Exit with the reason unless this runs as root with sshd installed."""
    if os.getuid() != 0 or not os.path.exists(sshd.SSHD):
        sys.exit('needs root and %s (openssh-server)' % sshd.SSHD)


def start_sshd(work):
    """Start a private sshd (root logs in with its client key) whose files
    live in `work`/sshd; the caller calls its ``stop()``."""
    server = sshd.SshServer(os.path.join(work, 'sshd'))
    os.mkdir(server.tmpdir)
    os.chmod(server.tmpdir, 0o755)      # sshd reads keys/<user> as <user>
    server.start()
    return server


def write_random_file(path, mib):
    """Write `mib` MiB of random bytes to `path`: incompressible."""
    with open(path, 'wb') as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


def descendants(root_pid):
    """PIDs of the live (not zombie) descendants of `root_pid`."""
    children = {}
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != 'Z':
            children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root_pid]
    while todo:
        for pid in children.get(todo.pop(), ()):
            found.append(pid)
            todo.append(pid)
    return found
