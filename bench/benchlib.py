"""
Helpers of the benchmarks: the JSON lines of bench_core.py and
bench_execnet.py and their running of each benchmark in a fresh
interpreter, resident memory from /proc, the private sshd of tests/sshd.py
in a work directory, files of random bytes, the processes below a PID.
Stdlib only at import time (the benchmarks run in the venvs of Mitogen
0.3.54 and of execnet too); tests/sshd.py, which needs pytest, is imported
by the functions that use it.
"""
import argparse
import json
import os
import signal
import subprocess
import statistics
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def emit(bench, **metrics):
    """Print one benchmark's figures as a JSON line (see bench_core.py)."""
    line = dict(bench=bench)
    for key, value in metrics.items():
        line[key] = float('%.4g' % value) if isinstance(value, float) else value
    sys.stdout.write(json.dumps(line) + '\n')
    sys.stdout.flush()


def rss_kib(pid='self'):
    """Resident memory of a process in KiB, read from /proc: the master
    reads a child's itself, which costs the child nothing."""
    with open('/proc/%s/status' % (pid,)) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise RuntimeError('no VmRSS for %s' % (pid,))


def bench_parser(doc, names=None):
    """The command line common to bench_core.py and bench_execnet.py;
    `names` restricts ``--bench`` to those benchmarks."""
    parser = argparse.ArgumentParser(description=doc.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='fewer repetitions, for a smoke test')
    parser.add_argument('--bench', action='append', metavar='NAME',
                        choices=names, help='run only this benchmark '
                        '(repeatable)')
    parser.add_argument('--in-process', action='store_true',
                        help='run the benchmarks in this process (by default '
                        'each runs in a fresh interpreter)')
    return parser


def measure_fanout(opts, session):
    """The ``fanout`` benchmark: 16 threads each start a child and make a
    first call, all at once; the wall time until every one has answered,
    median of 3. `session`() returns (start, close): start(), run by each
    thread, starts a child and calls it; close() shuts the children down
    (outside the timing)."""
    threads, reps = 16, (1 if opts.quick else 3)
    samples = []
    for _ in range(reps):
        start, close = session()
        done = []
        try:
            workers = [threading.Thread(target=lambda: done.append(start()))
                       for _ in range(threads)]
            t0 = time.perf_counter()
            for t in workers:
                t.start()
            for t in workers:
                t.join()
            samples.append(time.perf_counter() - t0)
        finally:
            close()
        if len(done) != threads:
            raise RuntimeError('%d of %d threads started their child'
                               % (len(done), threads))
    emit('fanout', children=threads,
         total_ms=statistics.median(samples) * 1e3, reps=reps)


def measure_scale(opts, count, fleet):
    """The ``scale_<count>`` benchmark (a fifth of the children with
    --quick): `fleet`(n) starts n children one after the other, makes one
    call to each with all calls in flight at once, calls its argument (a
    function that reads the master's memory) while every child is
    connected, shuts everything down, and returns the set of the
    children's PIDs."""
    name = 'scale_%d' % count
    if opts.quick:
        count //= 5
    readings = []
    t0 = time.perf_counter()
    before = rss_kib()
    pids = fleet(count, lambda: readings.append(rss_kib()))
    elapsed = time.perf_counter() - t0
    if len(pids) != count:
        raise RuntimeError('%d answers from %d children' % (len(pids), count))
    emit(name, children=count, total_ms=elapsed * 1e3,
         per_child_ms=elapsed / count * 1e3, master_rss_kib=readings[0],
         master_rss_growth_kib=readings[0] - before)


def run_benches(script, benches, opts, extra=()):
    """Run the benchmarks of `benches` ((name, function of opts) pairs) that
    opts.bench selects. Unless opts.in_process, each runs in a fresh
    interpreter (`script` run again with ``--in-process --bench NAME`` and
    `extra`), so that a master's memory and first-use costs never depend on
    the benchmarks before it. A benchmark that fails prints an error line;
    the others still run."""
    for name, func in benches:
        if opts.bench and name not in opts.bench:
            continue
        if not opts.in_process:
            argv = [sys.executable, script, '--in-process', '--bench',
                    name] + list(extra) + (['--quick'] if opts.quick else [])
            status = subprocess.call(argv)
            if status:
                emit(name, error='exit status %d' % status)
            continue
        try:
            func(opts)
        except Exception as e:
            traceback.print_exc()
            emit(name, error='%s: %s' % (type(e).__name__, e))


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
