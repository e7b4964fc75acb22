"""
One job on a hundred ssh hosts -- connect to each, run one function, shut
everything down -- with this project's :mod:`mitogen.fleet`, with Mitogen
0.3.54 driven from a hundred threads, and with execnet's ``Group``, side by
side in one run.

The hosts are the private sshd of the test suite listening on 127.0.0.2 to
127.0.0.101 (tests/sshd.py ``LoopbackHosts``: several sshd processes of one
configuration, its own host key, a client key for root). Every side logs in
as root with the same client settings (``ssh -F`` file: that known hosts
file, curve25519 key exchange) and runs ``/usr/bin/python3`` on the far side.

ours      ``mitogen.fleet.arun()`` with ``concurrency`` = number of hosts
mitogen   Mitogen 0.3.54 (bench/.venv-mitogen): a thread per host doing
          ``router.ssh()`` then ``ctx.call(os.getpid)``
execnet   execnet 2.1.2 (bench/.venv-execnet): ``Group.makegateway()`` per
          host (it connects one host at a time, which is how ``Group`` is
          used), ``group.remote_exec()`` to all, ``group.terminate()``

Each side runs as a ``--worker`` process of this file, interleaved over the
rounds (ours, mitogen, execnet, ours, ...). Reported per side: the wall
time of the whole job (``total_s``), and the growth of the master's resident
memory while every host is connected, divided by the number of hosts
(``rss_per_host_kib``; ssh client processes not included). Prints a JSON
line per run, then medians and ratios (above 1: ours is better).

    bash bench/setup && bash bench/setup execnet
    .venv/bin/python bench/bench_fleet.py [--rounds 3] [--hosts 100]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHONS = {
    'ours': os.path.join(ROOT, '.venv', 'bin', 'python'),
    'mitogen': os.path.join(HERE, '.venv-mitogen', 'bin', 'python'),
    'execnet': os.path.join(HERE, '.venv-execnet', 'bin', 'python'),
}
#: The far side's interpreter, for every side: not a venv's, whose
#: site-packages would put one side's library on the child's path.
TARGET_PYTHON = '/usr/bin/python3'
#: Seconds one worker may take.
WORKER_TIMEOUT = 600


# --- worker: runs in the master of one side --------------------------------

def rss_kib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise RuntimeError('no VmRSS in /proc/self/status')


def ssh_kwargs(opts, address):
    return dict(hostname=address, port=opts.port, username='root',
                identity_file=opts.key, ssh_args=['-F', opts.config],
                python_path=TARGET_PYTHON, connect_timeout=60)


def work_ours(opts, addresses):
    import asyncio

    import mitogen.aio
    import mitogen.fleet

    targets = [dict(ssh_kwargs(opts, a), method='ssh') for a in addresses]
    rss = {}

    async def main():
        async with mitogen.aio.Router(connect_threads=len(targets)) as router:
            rss['before'] = rss_kib()
            results = await mitogen.fleet.arun(
                targets, os.getpid, router=router, concurrency=len(targets),
                timeout=120, progress=False)
            rss['connected'] = rss_kib()
            return results
    results = asyncio.run(main())
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError('%d hosts failed, e.g. %r' % (len(failed),
                                                          failed[0]))
    return rss['connected'] - rss['before']


def work_mitogen(opts, addresses):
    import concurrent.futures

    import mitogen.master

    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    before = rss_kib()

    def one(address):
        context = router.ssh(**ssh_kwargs(opts, address))
        context.call(os.getpid)
        return context
    try:
        with concurrent.futures.ThreadPoolExecutor(len(addresses)) as pool:
            list(pool.map(one, addresses))
        connected = rss_kib()
    finally:
        broker.shutdown()
        broker.join()
    return connected - before


def work_execnet(opts, addresses):
    import execnet

    group = execnet.Group()
    before = rss_kib()
    try:
        for address in addresses:
            group.makegateway(
                'ssh=-i %s -p %d root@%s//ssh_config=%s//python=%s' % (
                    opts.key, opts.port, address, opts.config,
                    TARGET_PYTHON))
        channels = group.remote_exec('import os; channel.send(os.getpid())')
        pids = channels.receive_each()
        connected = rss_kib()
    finally:
        group.terminate(timeout=30)
    if len(pids) != len(addresses):
        raise RuntimeError('%d answers from %d hosts' % (len(pids),
                                                         len(addresses)))
    return connected - before


def worker(opts):
    with open(opts.addresses) as f:
        addresses = json.load(f)
    started = time.monotonic()
    grown = globals()['work_' + opts.worker](opts, addresses)
    total = time.monotonic() - started
    print(json.dumps({'side': opts.worker, 'hosts': len(addresses),
                      'total_s': round(total, 3),
                      'rss_per_host_kib': round(grown / len(addresses), 1)}))


# --- driver ----------------------------------------------------------------

def run_worker(side, work, server, hosts):
    argv = [PYTHONS[side], os.path.abspath(__file__), '--worker', side,
            '--port', str(hosts.port), '--key', server.client_key,
            '--config', server.client_config(hosts.known_hosts),
            '--addresses', os.path.join(work, 'addresses.json')]
    proc = subprocess.run(argv, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=WORKER_TIMEOUT,
                          cwd=ROOT, universal_newlines=True)
    for line in proc.stdout.splitlines():
        if line.startswith('{'):
            return json.loads(line)
    return {'side': side, 'error': 'exit status %d: %s' % (
        proc.returncode, proc.stderr.strip().splitlines()[-3:])}


def driver(opts):
    sys.path.insert(0, HERE)
    import benchlib
    benchlib.require_root_and_sshd()
    sides = [s for s in opts.side or sorted(PYTHONS, key=list(PYTHONS).index)
             if os.path.exists(PYTHONS[s])]
    missing = set(opts.side or PYTHONS) - set(sides)
    if missing:
        sys.stderr.write('not set up, skipped: %s (run bash bench/setup and '
                         'bash bench/setup execnet)\n' % ', '.join(missing))
    work = tempfile.mkdtemp(prefix='mitogen-bench-fleet-')
    server = benchlib.start_sshd(work)
    sshd = benchlib._sshd_module()
    hosts = sshd.LoopbackHosts(server, count=opts.hosts)
    rows = {side: [] for side in sides}
    try:
        hosts.start()
        with open(os.path.join(work, 'addresses.json'), 'w') as f:
            json.dump(hosts.addresses, f)
        for i in range(opts.rounds):
            for side in sides:
                record = run_worker(side, work, server, hosts)
                print(json.dumps(dict(record, round=i + 1)))
                sys.stdout.flush()
                if 'error' not in record:
                    rows[side].append(record)
                # Let the servers' sessions end before the next side.
                deadline = time.monotonic() + 30
                while hosts.sessions() and time.monotonic() < deadline:
                    time.sleep(0.1)
    finally:
        hosts.stop()
        benchlib.stop_sshd(server)
    report(rows, opts)


def report(rows, opts):
    def median(side, key):
        values = [r[key] for r in rows.get(side, ())]
        return statistics.median(values) if values else None

    print()
    print('%d hosts, medians of %d rounds; ratio: other / ours (above 1: ours '
          'is better)' % (opts.hosts, opts.rounds))
    ours_total, ours_rss = median('ours', 'total_s'), median(
        'ours', 'rss_per_host_kib')
    for side in rows:
        total, rss = median(side, 'total_s'), median(side, 'rss_per_host_kib')
        if total is None:
            print('%-8s failed' % side)
            continue
        ratio = ''
        if side != 'ours' and ours_total:
            ratio = '   time x%.2f' % (total / ours_total)
            if ours_rss and rss:
                ratio += '   memory x%.2f' % (rss / ours_rss)
        print('%-8s total %6.2f s   master RSS %7.1f KiB/host%s'
              % (side, total, rss, ratio))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--hosts', type=int, default=100)
    parser.add_argument('--side', action='append', choices=sorted(PYTHONS),
                        help='run only this side (repeatable)')
    worker_args = parser.add_argument_group('worker (set by the driver)')
    worker_args.add_argument('--worker', choices=sorted(PYTHONS))
    worker_args.add_argument('--port', type=int)
    for name in ('key', 'config', 'addresses'):
        worker_args.add_argument('--' + name)
    opts = parser.parse_args()
    if opts.worker:
        worker(opts)
    else:
        driver(opts)


if __name__ == '__main__':
    main()
