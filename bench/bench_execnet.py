"""
The benchmarks of bench_core.py, written with execnet's public API
(``execnet.makegateway()``, ``Group``, ``remote_exec()``, channels, and
``popen//via=`` for two hops), for the third column of bench/run. It prints
the same JSON lines with the same benchmark and metric names wherever execnet
has an equivalent; ``fork`` and ``import`` have none (execnet neither forks
contexts nor serves modules) and are not printed. Runs under
bench/.venv-execnet (``bash bench/setup execnet``).

What a "call" is here: execnet has no remote function call. Its cheapest
round trip is one message over an open channel to a loop in the child that
answers it (``roundtrip.median_us``, ``pipelined``, ``inflight``, the
two-hop round trip), which is what bench/run compares with our call; a
``remote_exec()`` of a small source string per call, the nearest thing to
a call of a new function, is reported beside it
(``roundtrip.remote_exec_us``).

    python bench/bench_execnet.py [--quick] [--bench NAME ...]
"""
import os
import statistics
import sys
import time

import execnet

from benchlib import (bench_parser, emit, measure_fanout, measure_scale,
                      rss_kib, run_benches)

MiB = 1 << 20

# Child-side sources.
GETPID = 'import os; channel.send(os.getpid())'
ECHO = '''
for item in channel:
    channel.send(item)
'''
BLOB_LEN = '''
for item in channel:
    channel.send(len(item))
'''
MAKE_BLOB = '''
import os
size = channel.receive()
blob = os.urandom(size)
for _ in channel:
    channel.send(blob)
'''

SPEC = 'popen//python=%s' % (sys.executable,)


def median(values):
    return statistics.median(values)


def first_call(gw):
    return gw.remote_exec(GETPID).receive()


def bench_bootstrap(opts):
    n = 3 if opts.quick else 10
    samples, child_rss = [], []
    for i in range(n + 1):
        t0 = time.perf_counter()
        gw = execnet.makegateway(SPEC)
        pid = first_call(gw)
        samples.append(time.perf_counter() - t0)
        child_rss.append(rss_kib(pid))
        if not i:
            master_rss = rss_kib()
        gw.exit()
    emit('bootstrap', first_child_ms=samples[0] * 1e3,
         median_ms=median(samples[1:]) * 1e3,
         child_rss_kib=median(child_rss), master_rss_kib=master_rss, n=n)


def echo_samples(channel, calls, warm):
    for _ in range(warm):
        channel.send(None)
        channel.receive()
    mine = []
    for _ in range(calls):
        t0 = time.perf_counter()
        channel.send(None)
        channel.receive()
        mine.append(time.perf_counter() - t0)
    return mine


def bench_roundtrip(opts):
    children, calls, warm = (2, 200, 20) if opts.quick else (8, 500, 50)
    samples, per_child, execs = [], [], []
    for _ in range(children):
        gw = execnet.makegateway(SPEC)
        channel = gw.remote_exec(ECHO)
        mine = echo_samples(channel, calls, warm)
        samples.extend(mine)
        per_child.append(round(median(mine) * 1e6, 1))
        for _ in range(calls // 5):
            t0 = time.perf_counter()
            gw.remote_exec('channel.send(None)').receive()
            execs.append(time.perf_counter() - t0)
        channel.close()
        gw.exit()
    emit('roundtrip', median_us=median(samples) * 1e6,
         remote_exec_us=median(execs) * 1e6,
         per_child_median_us=per_child, n=len(samples))


def bench_twohop(opts):
    leaves, calls, warm = (3, 200, 20) if opts.quick else (10, 500, 50)
    boot, samples = [], []
    group = execnet.Group()
    try:
        middle = group.makegateway(SPEC + '//id=middle')
        first_call(middle)
        for i in range(leaves):
            t0 = time.perf_counter()
            leaf = group.makegateway(SPEC + '//via=middle//id=leaf%d' % i)
            first_call(leaf)
            boot.append(time.perf_counter() - t0)
            channel = leaf.remote_exec(ECHO)
            samples.extend(echo_samples(channel, calls // leaves, warm))
            channel.close()
            leaf.exit()
            leaf.join(timeout=30)
        middle.exit()
        middle.join(timeout=30)
    finally:
        group.terminate(timeout=30)
    emit('twohop', new_leaf_ms=median(boot) * 1e3,
         roundtrip_us=median(samples) * 1e6, leaves=leaves)


def echo_rate(channel, n, reps):
    """Median messages per second of `reps` bursts: `n` sent to an echo
    loop, then `n` received."""
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            channel.send(None)
        for _ in range(n):
            channel.receive()
        rates.append(n / (time.perf_counter() - t0))
    return median(rates)


def bench_pipelined(opts):
    n, reps = (1000, 2) if opts.quick else (5000, 5)
    gw = execnet.makegateway(SPEC)
    channel = gw.remote_exec(ECHO)
    channel.send(None)
    channel.receive()
    rate = echo_rate(channel, n, reps)
    channel.close()
    gw.exit()
    emit('pipelined', calls_per_s=rate, n=n, reps=reps)


def bench_channel(opts):
    """The same channel echo as ``roundtrip`` and ``pipelined``, under the
    name and figures of bench_core.py's ``channel``."""
    calls, warm, n, reps = (200, 20, 1000, 2) if opts.quick else \
        (2000, 100, 5000, 5)
    gw = execnet.makegateway(SPEC)
    channel = gw.remote_exec(ECHO)
    samples = echo_samples(channel, calls, warm)
    rate = echo_rate(channel, n, reps)
    channel.close()
    gw.exit()
    emit('channel', roundtrip_us=median(samples) * 1e6, pipelined_per_s=rate,
         n=n)


def bench_bulk(opts, size_mib):
    size = size_mib * MiB
    reps = 2 if opts.quick else 5
    data = os.urandom(size)
    up, down = [], []
    gw = execnet.makegateway(SPEC)
    first_call(gw)
    channel = gw.remote_exec(BLOB_LEN)
    for _ in range(reps):
        t0 = time.perf_counter()
        channel.send(data)
        got = channel.receive()
        up.append(size / (time.perf_counter() - t0) / 1e6)
        assert got == size, got
    channel.close()
    channel = gw.remote_exec(MAKE_BLOB)
    channel.send(size)
    for _ in range(reps):
        t0 = time.perf_counter()
        channel.send(None)
        blob = channel.receive()
        down.append(size / (time.perf_counter() - t0) / 1e6)
        assert len(blob) == size, len(blob)
        del blob
    channel.close()
    gw.exit()
    emit('bulk_%dMiB' % size_mib, to_child_mb_s=median(up),
         to_master_mb_s=median(down), reps=reps)


def fanout_session():
    """See benchlib.measure_fanout."""
    group = execnet.Group()

    def start():
        return first_call(group.makegateway(SPEC))

    return start, lambda: group.terminate(timeout=30)


def local_fleet(count, connected):
    """See benchlib.measure_scale."""
    group = execnet.Group()
    try:
        for _ in range(count):
            group.makegateway(SPEC)
        pids = set(group.remote_exec(GETPID).receive_each())
        connected()
    finally:
        group.terminate(timeout=60)
    return pids


def bench_inflight(opts):
    children, n = (4, 1000) if opts.quick else (10, 10000)
    group = execnet.Group()
    try:
        channels = []
        for _ in range(children):
            channel = group.makegateway(SPEC).remote_exec(ECHO)
            channel.send(None)
            channel.receive()
            channels.append(channel)
        before = rss_kib()
        t0 = time.perf_counter()
        for i in range(n):
            channels[i % children].send(None)
        issued = rss_kib()
        for i in range(n):
            channels[i % children].receive()
        elapsed = time.perf_counter() - t0
    finally:
        group.terminate(timeout=30)
    emit('inflight', children=children, calls=n, total_ms=elapsed * 1e3,
         calls_per_s=n / elapsed, master_rss_growth_kib=issued - before)


BENCHES = [
    ('bootstrap', bench_bootstrap),
    ('roundtrip', bench_roundtrip),
    ('twohop', bench_twohop),
    ('pipelined', bench_pipelined),
    ('channel', bench_channel),
    ('bulk_4MiB', lambda opts: bench_bulk(opts, 4)),
    ('bulk_32MiB', lambda opts: bench_bulk(opts, 32)),
    ('fanout', lambda opts: measure_fanout(opts, fanout_session)),
    ('scale_10', lambda opts: measure_scale(opts, 10, local_fleet)),
    ('scale_100', lambda opts: measure_scale(opts, 100, local_fleet)),
    ('inflight', bench_inflight),
]


def main():
    # Names of benchmarks execnet has no equivalent for are ignored.
    opts = bench_parser(__doc__).parse_args()
    run_benches(os.path.abspath(__file__), BENCHES, opts)


if __name__ == '__main__':
    main()
