"""
Helpers of bench_fileservice.py and bench_ansible.py: the private sshd of
tests/sshd.py in a work directory, files of random bytes, the processes
below a PID. Stdlib only at import time (bench_fileservice.py also runs in
the anchor's venv); tests/sshd.py, which needs pytest, is imported by the
functions that use it.
"""
import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _sshd_module():
    """tests/sshd.py: the private OpenSSH server of the test suite."""
    tests = os.path.join(ROOT, 'tests')
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import sshd
    return sshd


def require_root_and_sshd():
    """Exit with the reason unless this runs as root with sshd installed."""
    binary = _sshd_module().SSHD
    if os.getuid() != 0 or not os.path.exists(binary):
        sys.exit('needs root and %s (openssh-server)' % binary)


def start_sshd(work):
    """Start a private sshd (root logs in with its client key) whose files
    live in `work`/sshd; the caller calls its ``stop()``."""
    server = _sshd_module().SshServer(os.path.join(work, 'sshd'))
    os.mkdir(server.tmpdir)
    os.chmod(server.tmpdir, 0o755)      # sshd reads keys/<user> as <user>
    server.start()
    return server


def stop_sshd(server):
    """Kill what still runs below `server` (sessions outlive the listening
    sshd), then stop it."""
    if server.proc is not None:
        for pid in descendants(server.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    server.stop()


def kill_group(proc):
    """SIGKILL the process group `proc` (a :class:`subprocess.Popen`
    started with ``start_new_session=True``) leads, and reap `proc`."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


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
