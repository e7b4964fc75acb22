"""
Core benchmarks, written against the public Mitogen 0.3 API only, so that the
same file runs under this project and under Mitogen 0.3.54 (see bench/run).

Each benchmark prints one JSON line: {"bench": NAME, <metric>: <value>, ...}.
Metric names end in their unit: ``_ms``/``_us`` (lower is better),
``_per_s``/``_mb_s`` (higher is better); other keys are context.  A benchmark
that fails prints {"bench": NAME, "error": "..."} and the others still run.
MB is 10**6 bytes.

Every benchmark uses its own Router; children run ``sys.executable`` (the
virtual environment's interpreter, never a pyenv shim), except those of the
``ssh`` benchmark, which run ``--ssh-python`` on the other side of an sshd
that bench/run starts.

    python bench/bench_core.py [--quick] [--bench NAME ...]
        [--ssh-port PORT --ssh-key FILE --ssh-known-hosts FILE]
"""
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import mitogen.core
import mitogen.master

from benchlib import (bench_parser, emit, measure_fanout, measure_scale,
                      rss_kib, run_benches)

MiB = 1 << 20


# --- functions the children run ----------------------------------------

def noop():
    return None


def blob_len(data):
    return len(data)


_blob = None


def make_blob(size):
    global _blob
    _blob = os.urandom(size)
    return len(_blob)


def get_blob():
    return _blob


@mitogen.core.takes_router
def echo_loop(sender, router):
    """The child's end of the ``channel`` benchmark: send the master a
    sender for a receiver of our own, then send back every message that
    arrives on it until the channel closes."""
    receiver = mitogen.core.Receiver(router)
    sender.send(receiver.to_sender())
    for msg in receiver:
        sender.send(msg.unpickle())


def import_package(package, leaves):
    for leaf in leaves:
        importlib.import_module(package + '.' + leaf)
    return sum(1 for name in sys.modules
               if name == package or name.startswith(package + '.'))


# --- helpers -------------------------------------------------------------

def new_child(router):
    return router.local(python_path=sys.executable)


def timed(func, *args):
    t0 = time.perf_counter()
    result = func(*args)
    return time.perf_counter() - t0, result


def median(values):
    return statistics.median(values)


# --- benchmarks ----------------------------------------------------------

def bench_bootstrap(opts):
    """New local child + first call; the first child of this master (which
    pays the master's one-time costs) separately."""
    n = 3 if opts.quick else 10

    def start_and_call(router):
        ctx = new_child(router)
        return ctx, ctx.call(os.getpid)

    samples, child_rss = [], []
    with mitogen.master.Router() as router:
        for i in range(n + 1):
            elapsed, (ctx, pid) = timed(start_and_call, router)
            samples.append(elapsed)
            child_rss.append(rss_kib(pid))
            if not i:
                master_rss = rss_kib()
            ctx.shutdown(wait=True)
    emit('bootstrap', first_child_ms=samples[0] * 1e3,
         median_ms=median(samples[1:]) * 1e3,
         child_rss_kib=median(child_rss), master_rss_kib=master_rss, n=n)


def bench_fork(opts):
    """router.fork() + first call: a child forked from a parent context
    (this project and Mitogen only)."""
    n = 3 if opts.quick else 10
    samples = []
    with mitogen.master.Router() as router:
        for _ in range(n + 1):
            t0 = time.perf_counter()
            ctx = router.fork()
            ctx.call(os.getpid)
            samples.append(time.perf_counter() - t0)
            ctx.shutdown(wait=True)
    emit('fork', first_ms=samples[0] * 1e3,
         median_ms=median(samples[1:]) * 1e3, n=n)


def fanout_session():
    """See benchlib.measure_fanout."""
    router = mitogen.master.Router()

    def start():
        return new_child(router).call(os.getpid)

    def close():
        router.broker.shutdown()
        router.broker.join()
    return start, close


def bench_roundtrip(opts):
    """Median round trip of ctx.call(noop), pooled over several children:
    on two shared cores a pair settles in one of two latency modes."""
    children, calls, warm = (2, 200, 20) if opts.quick else (8, 500, 50)
    samples = []
    per_child = []
    with mitogen.master.Router() as router:
        for _ in range(children):
            ctx = new_child(router)
            for _ in range(warm):
                ctx.call(noop)
            mine = []
            for _ in range(calls):
                t0 = time.perf_counter()
                ctx.call(noop)
                mine.append(time.perf_counter() - t0)
            samples.extend(mine)
            per_child.append(round(median(mine) * 1e6, 1))
            ctx.shutdown(wait=True)
    emit('roundtrip', median_us=median(samples) * 1e6,
         per_child_median_us=per_child, n=len(samples))


def bench_twohop(opts):
    """A chain master -> middle -> leaf: starting a new leaf through an
    existing middle context (+ its first call), and the round trip of a
    call to the leaf, which every message makes through the middle."""
    leaves, calls, warm = (3, 200, 20) if opts.quick else (10, 500, 50)
    boot, samples = [], []
    with mitogen.master.Router() as router:
        middle = new_child(router)
        middle.call(noop)
        for _ in range(leaves):
            t0 = time.perf_counter()
            leaf = router.local(via=middle, python_path=sys.executable)
            leaf.call(noop)
            boot.append(time.perf_counter() - t0)
            for _ in range(warm):
                leaf.call(noop)
            for _ in range(calls // leaves):
                t0 = time.perf_counter()
                leaf.call(noop)
                samples.append(time.perf_counter() - t0)
            leaf.shutdown(wait=True)
        middle.shutdown(wait=True)
    emit('twohop', new_leaf_ms=median(boot) * 1e3,
         roundtrip_us=median(samples) * 1e6, leaves=leaves)


def bench_pipelined(opts):
    """Calls per second with many calls in flight: call_async N times, then
    collect every result."""
    n, reps = (1000, 2) if opts.quick else (5000, 5)
    rates = []
    with mitogen.master.Router() as router:
        ctx = new_child(router)
        ctx.call(noop)
        for _ in range(reps):
            t0 = time.perf_counter()
            receivers = [ctx.call_async(noop) for _ in range(n)]
            for receiver in receivers:
                receiver.get().unpickle()
            rates.append(n / (time.perf_counter() - t0))
        ctx.shutdown(wait=True)
    emit('pipelined', calls_per_s=median(rates), n=n, reps=reps)


def bench_channel(opts):
    """A message over an open channel (a Sender to a Receiver in the child,
    and one back), like execnet's channel: the round trip, and messages
    per second with many in flight. No function is looked up or called
    per message."""
    calls, warm, n, reps = (200, 20, 1000, 2) if opts.quick else \
        (2000, 100, 5000, 5)
    with mitogen.master.Router() as router:
        ctx = new_child(router)
        replies = mitogen.core.Receiver(router)
        ctx.call_async(echo_loop, replies.to_sender())
        to_child = replies.get().unpickle()
        for _ in range(warm):
            to_child.send(None)
            replies.get().unpickle()
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter()
            to_child.send(None)
            replies.get().unpickle()
            samples.append(time.perf_counter() - t0)
        rates = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(n):
                to_child.send(None)
            for _ in range(n):
                replies.get().unpickle()
            rates.append(n / (time.perf_counter() - t0))
        to_child.close()
        ctx.shutdown(wait=True)
    emit('channel', roundtrip_us=median(samples) * 1e6,
         pipelined_per_s=median(rates), n=n)


def bench_bulk(opts, size_mib):
    """Random bytes master->child as an argument, child->master as a return
    value; the child makes its bytes before the timed call."""
    size = size_mib * MiB
    reps = 2 if opts.quick else 5
    data = os.urandom(size)
    up, down = [], []
    with mitogen.master.Router() as router:
        ctx = new_child(router)
        ctx.call(noop)
        for _ in range(reps):
            elapsed, n = timed(ctx.call, blob_len, data)
            assert n == size, n
            up.append(size / elapsed / 1e6)
        ctx.call(make_blob, size)
        for _ in range(reps):
            elapsed, blob = timed(ctx.call, get_blob)
            assert len(blob) == size, len(blob)
            down.append(size / elapsed / 1e6)
            del blob
        ctx.shutdown(wait=True)
    emit('bulk_%dMiB' % size_mib, to_child_mb_s=median(up),
         to_master_mb_s=median(down), reps=reps)


# A package of 60 modules (48 in the package, 10 in a subpackage, and the two
# __init__ files) that import each other, so that importing the last module
# pulls in all of them.
PACKAGE_MODULES = 48
SUBPACKAGE_MODULES = 10

MODULE_BODY = '''
"""Generated module %(name)s: some classes and functions to compile."""
import collections
import functools

CONSTANTS = dict((k, k * %(index)d) for k in range(50))
Point = collections.namedtuple('Point', 'x y z')


class Shape%(index)d(object):
    """A class with a few methods."""

    def __init__(self, *points):
        self.points = [Point(*p) for p in points]

    def area(self):
        total = 0
        for a, b in zip(self.points, self.points[1:] + self.points[:1]):
            total += a.x * b.y - b.x * a.y
        return abs(total) / 2.0

    def scaled(self, factor):
        return Shape%(index)d(*[(p.x * factor, p.y * factor, p.z * factor)
                                for p in self.points])

    def __repr__(self):
        return 'Shape%(index)d(%%r)' %% (self.points,)


@functools.lru_cache(maxsize=None)
def fib%(index)d(n):
    if n < 2:
        return n
    return fib%(index)d(n - 1) + fib%(index)d(n - 2)


def describe(value):
    if isinstance(value, dict):
        return dict((k, describe(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    return '%%s:%%r' %% (type(value).__name__, value)
'''


def write_package(root, package):
    def write(relpath, text):
        path = os.path.join(root, package, relpath)
        if not os.path.isdir(os.path.dirname(path)):
            os.makedirs(os.path.dirname(path))
        with open(path, 'w') as f:
            f.write(text)

    write('__init__.py', '"""Benchmark package served by the master."""\n')
    write('sub/__init__.py', 'from . import s00\n')
    for i in range(SUBPACKAGE_MODULES):
        deps = ['from . import s%02d' % (i - 1)] if i else []
        if i >= 2:
            deps.append('from %s.sub import s%02d' % (package, i // 2))
        write('sub/s%02d.py' % i, '\n'.join(deps) + MODULE_BODY % dict(
            name='sub.s%02d' % i, index=100 + i))
    for i in range(PACKAGE_MODULES):
        deps = []
        if i:
            deps.append('from . import m%02d' % (i - 1))
        if i >= 3:
            deps.append('import %s.m%02d' % (package, i // 3))
        if i % 5 == 4:
            deps.append('from .sub import s%02d' % (i % SUBPACKAGE_MODULES))
        write('m%02d.py' % i, '\n'.join(deps) + MODULE_BODY % dict(
            name='m%02d' % i, index=i))
    leaves = ['m%02d' % (PACKAGE_MODULES - 1),
              'sub.s%02d' % (SUBPACKAGE_MODULES - 1)]
    return leaves, 2 + PACKAGE_MODULES + SUBPACKAGE_MODULES


def bench_import(opts):
    """Import a 60-module package that exists only on the master into a
    fresh child (already bootstrapped).  The first child also pays the
    master's cost of finding and reading the modules; later ones are
    served from what the master has learned."""
    n = 2 if opts.quick else 5
    root = tempfile.mkdtemp(prefix='mitogen-bench-')
    package = 'benchpkg%d' % os.getpid()
    try:
        leaves, count = write_package(root, package)
        # Compiling and executing the same source locally: the floor.
        probe = ('import sys, time; sys.path.insert(0, %r); t = time.perf_counter(); '
                 'import importlib; [importlib.import_module(%r + "." + l) for l in %r]; '
                 'print(time.perf_counter() - t)' % (root, package, leaves))
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE='1')
        local = float(subprocess.check_output([sys.executable, '-c', probe], env=env))

        sys.path.insert(0, root)
        samples = []
        with mitogen.master.Router() as router:
            for _ in range(n + 1):
                ctx = new_child(router)
                ctx.call(noop)
                elapsed, got = timed(ctx.call, import_package, package, leaves)
                assert got == count, (got, count)
                samples.append(elapsed)
                ctx.shutdown(wait=True)
    finally:
        if root in sys.path:
            sys.path.remove(root)
        shutil.rmtree(root)
    emit('import', first_ms=samples[0] * 1e3, median_ms=median(samples[1:]) * 1e3,
         local_compile_ms=local * 1e3, modules=count, n=n)


def local_fleet(count, connected):
    """See benchlib.measure_scale."""
    with mitogen.master.Router() as router:
        contexts = [new_child(router) for _ in range(count)]
        receivers = [ctx.call_async(os.getpid) for ctx in contexts]
        pids = set(r.get().unpickle() for r in receivers)
        connected()
    return pids


def bench_inflight(opts):
    """10,000 calls in flight to 10 children: call_async round robin, then
    collect every result; the master's memory growth while they are all
    queued."""
    children, n = (4, 1000) if opts.quick else (10, 10000)
    with mitogen.master.Router() as router:
        contexts = [new_child(router) for _ in range(children)]
        for ctx in contexts:
            ctx.call(noop)
        before = rss_kib()
        t0 = time.perf_counter()
        receivers = [contexts[i % children].call_async(noop)
                     for i in range(n)]
        issued = rss_kib()
        for receiver in receivers:
            receiver.get().unpickle()
        elapsed = time.perf_counter() - t0
    emit('inflight', children=children, calls=n, total_ms=elapsed * 1e3,
         calls_per_s=n / elapsed, master_rss_growth_kib=issued - before)


def ssh_connect(router, method, opts):
    """A context on the benchmark's sshd through `method` ('ssh': the
    OpenSSH client, 'paramiko': ours only)."""
    common = dict(hostname=opts.ssh_host, port=opts.ssh_port,
                  username=opts.ssh_user, identity_file=opts.ssh_key,
                  check_host_keys='enforce', compression=True,
                  python_path=opts.ssh_python, connect_timeout=30)
    if method == 'paramiko':
        return router.paramiko(known_hosts_file=opts.ssh_known_hosts,
                               **common)
    # The same client settings for both libraries: only this known hosts
    # file, the fast key exchange, and the same keepalives.
    ssh_args = ['-F', '/dev/null',
                '-o', 'UserKnownHostsFile=' + opts.ssh_known_hosts,
                '-o', 'GlobalKnownHostsFile=/dev/null',
                '-o', 'KexAlgorithms=curve25519-sha256']
    return router.ssh(ssh_args=ssh_args, keepalive_enabled=True,
                      keepalive_count=10, keepalive_interval=30, **common)


def measure_ssh(router, method, opts):
    """(connect + first call samples, pooled call round trip samples)."""
    n, contexts, calls, warm = (3, 1, 100, 10) if opts.quick else \
        (10, 3, 300, 30)
    boot, samples = [], []
    for i in range(n + 1):
        t0 = time.perf_counter()
        ctx = ssh_connect(router, method, opts)
        ctx.call(os.getpid)
        boot.append(time.perf_counter() - t0)
        if i < contexts:
            for _ in range(warm):
                ctx.call(noop)
            for _ in range(calls):
                t0 = time.perf_counter()
                ctx.call(noop)
                samples.append(time.perf_counter() - t0)
        ctx.shutdown(wait=True)
    return boot, samples


def bench_ssh(opts):
    """Over an sshd on 127.0.0.1 (bench/run starts a private one): a new
    ssh context + its first call (the first of a fresh master separately),
    and the call round trip. With the paramiko method (this project only),
    the same figures under ``paramiko_*``."""
    if not (opts.ssh_port and opts.ssh_key and opts.ssh_known_hosts):
        raise RuntimeError('no sshd given: run through bench/run, or pass '
                           '--ssh-port, --ssh-key and --ssh-known-hosts')
    metrics = {}
    methods = ['ssh']
    try:
        importlib.import_module('mitogen.paramiko')  # not in 0.3.54
        methods.append('paramiko')
    except ImportError:
        pass
    for method in methods:
        with mitogen.master.Router() as router:
            boot, samples = measure_ssh(router, method, opts)
        prefix = '' if method == 'ssh' else method + '_'
        metrics[prefix + 'first_ms'] = boot[0] * 1e3
        metrics[prefix + 'connect_ms'] = median(boot[1:]) * 1e3
        metrics[prefix + 'roundtrip_us'] = median(samples) * 1e6
    emit('ssh', **metrics)


BENCHES = [
    ('bootstrap', bench_bootstrap),
    ('roundtrip', bench_roundtrip),
    ('twohop', bench_twohop),
    ('pipelined', bench_pipelined),
    ('channel', bench_channel),
    ('bulk_4MiB', lambda opts: bench_bulk(opts, 4)),
    ('bulk_32MiB', lambda opts: bench_bulk(opts, 32)),
    ('fanout', lambda opts: measure_fanout(opts, fanout_session)),
    ('fork', bench_fork),
    ('import', bench_import),
    ('scale_10', lambda opts: measure_scale(opts, 10, local_fleet)),
    ('scale_100', lambda opts: measure_scale(opts, 100, local_fleet)),
    ('inflight', bench_inflight),
    ('ssh', bench_ssh),
]


def main():
    parser = bench_parser(__doc__, [name for name, _ in BENCHES])
    ssh = parser.add_argument_group('ssh benchmark (bench/run sets these)')
    ssh.add_argument('--ssh-host', default='127.0.0.1')
    ssh.add_argument('--ssh-port', type=int, help='port of the sshd')
    ssh.add_argument('--ssh-user', default='root')
    ssh.add_argument('--ssh-key', help='private key the sshd accepts')
    ssh.add_argument('--ssh-known-hosts',
                     help='known hosts file holding the sshd host key')
    ssh.add_argument('--ssh-python', default=os.path.realpath(sys.executable),
                     help='interpreter of the remote side (default: the one '
                     'this venv is built on)')
    opts = parser.parse_args()
    extra = ['--ssh-host', opts.ssh_host, '--ssh-user', opts.ssh_user,
             '--ssh-python', opts.ssh_python]
    for name in ('ssh_port', 'ssh_key', 'ssh_known_hosts'):
        if getattr(opts, name) is not None:
            extra += ['--' + name.replace('_', '-'), str(getattr(opts, name))]
    run_benches(os.path.abspath(__file__), BENCHES, opts, extra)


if __name__ == '__main__':
    main()
