"""
mitogen.service.FileService throughput against scp, and against Mitogen
0.3.54's own FileService, side by side in one run.

Each round copies the same file of random bytes (256 MiB by default) to the
same machine through a private sshd on 127.0.0.1 (tests/sshd.py: its own
host key, port and config), in turn:

scp        ``scp`` to root@127.0.0.1 (curve25519 key exchange, default
           cipher, no compression)
ssh        ``FileService.get()`` run in a ``router.ssh()`` context (root on
           the same sshd), fetching from the master's FileService
ssh_sudo   the same in a ``router.sudo(via=<that ssh context>)`` context,
           as the unprivileged account ``nobody``: every byte crosses the
           ssh connection, the ssh context, and the sudo context's pipe

``ssh`` and ``ssh_sudo`` run once under this project (.venv) and once under
Mitogen 0.3.54 (bench/.venv-mitogen, made by bench/setup), as ``--worker``
processes of this very file: the worker uses only the public Mitogen API
(``Pool``, ``FileService.register()``, ``FileService.get()``), so the same
code runs on both. Every way writes into a fresh file on the target side;
the worker checks the size and SHA-1 after timing.

Prints a JSON line per transfer and a table of medians: MB/s (10^6 bytes/s,
wall clock of the whole transfer as the master sees it), ratios to scp and
ours against Mitogen (above 1: ours is faster).

    .venv/bin/python bench/bench_fileservice.py [--rounds 5] [--mib 256]
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import mitogen.core
import mitogen.master
import mitogen.service

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHONS = {
    'ours': os.path.join(ROOT, '.venv', 'bin', 'python'),
    'mitogen': os.path.join(HERE, '.venv-mitogen', 'bin', 'python'),
}
#: Interpreter of every remote context, for both libraries: one that the
#: unprivileged sudo account can run, and not a venv (whose site-packages
#: would put one side's mitogen on the child's path).
TARGET_PYTHON = '/usr/bin/python3'
SUDO_USER = 'nobody'
#: Seconds one worker process (connect, transfers, checks) may take.
WORKER_TIMEOUT = 600


# --- worker: runs in the master of either library -------------------------

def noop():
    return None


def cpu_seconds():
    """CPU time (user + system, every thread) this process used so far."""
    times = os.times()
    return times[0] + times[1]


@mitogen.core.takes_router
def fetch(path, dest, router):
    """Child side: stream `path` from the master's FileService into `dest`.
    Returns what :meth:`FileService.get` says: whether the transfer was
    complete."""
    master = router.context_by_id(0)
    with open(dest, 'wb') as out_fp:
        ok, _ = mitogen.service.FileService.get(
            context=master, path=path, out_fp=out_fp)
    return ok


def check_and_remove(dest):
    """Child side: (size, SHA-1 hex) of `dest`, which is then removed."""
    digest = hashlib.sha1()
    size = 0
    with open(dest, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            size += len(chunk)
            digest.update(chunk)
    os.unlink(dest)
    return size, digest.hexdigest()


def worker(opts):
    """Connect over ssh and ssh -> sudo, then time one transfer to each,
    printing a JSON line for each."""
    ssh_args = ['-F', opts.ssh_config]
    with mitogen.master.Router() as router:
        pool = mitogen.service.Pool(router, size=opts.pool_size)
        try:
            service = mitogen.service.FileService(router)
            pool.add(service)
            service.register(opts.path)
            ssh = router.ssh(hostname='127.0.0.1', port=opts.ssh_port,
                             username='root', identity_file=opts.ssh_key,
                             ssh_args=ssh_args, check_host_keys='enforce',
                             compression=False, python_path=TARGET_PYTHON,
                             connect_timeout=30)
            sudo = router.sudo(via=ssh, username=SUDO_USER,
                               python_path=TARGET_PYTHON)
            for way, chain in (('ssh', [ssh]), ('ssh_sudo', [ssh, sudo])):
                ctx = chain[-1]
                # Imports this module and mitogen.service in the child
                # before the clock starts.
                ctx.call(noop)
                dest = os.path.join(opts.dest_dir, '%s.%d' % (way, os.getpid()))
                cpu = cpu_seconds() + sum(c.call(cpu_seconds) for c in chain)
                started = time.perf_counter()
                ok = ctx.call(fetch, opts.path, dest)
                elapsed = time.perf_counter() - started
                cpu = cpu_seconds() + sum(c.call(cpu_seconds)
                                          for c in chain) - cpu
                size, sha1 = ctx.call(check_and_remove, dest)
                print(json.dumps({
                    'way': way, 'seconds': elapsed, 'python_cpu': cpu,
                    'ok': bool(ok and size == opts.size
                               and sha1 == opts.sha1),
                }), flush=True)
        finally:
            pool.stop(join=True)


# --- driver: runs under .venv, starts sshd, scp and the workers -----------

def sha1_of(path):
    digest = hashlib.sha1()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def run_worker(side, opts, server, src, size, sha1, dest_dir):
    import benchlib     # the driver's only: children need none of it
    argv = [PYTHONS[side], os.path.abspath(__file__), '--worker',
            '--path', src, '--size', str(size), '--sha1', sha1,
            '--dest-dir', dest_dir, '--pool-size', str(opts.pool_size),
            '--ssh-port', str(server.port), '--ssh-key', server.client_key,
            '--ssh-config', server.client_config()]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=WORKER_TIMEOUT)
    finally:
        # The worker and whatever it left (its ssh client, say).
        benchlib.kill_group(proc)
    records = []
    for line in stdout.decode().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    if proc.returncode or len(records) != 2 or \
            not all(r['ok'] for r in records):
        raise RuntimeError('%s worker failed (exit %d): %s\n%s' % (
            side, proc.returncode, records,
            stderr.decode('utf-8', 'replace')[-3000:]))
    return records


def run_scp(server, src, dest_dir):
    dest = os.path.join(dest_dir, 'scp.bin')
    started = time.perf_counter()
    subprocess.check_call(
        ['scp', '-q', '-F', server.client_config(), '-i', server.client_key,
         '-P', str(server.port), '-o', 'BatchMode=yes', src,
         'root@127.0.0.1:' + dest], stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    os.unlink(dest)
    return elapsed


def driver(opts):
    import benchlib     # the driver's only: children need none of it
    benchlib.require_root_and_sshd()
    sides = opts.side or sorted(PYTHONS)
    if 'mitogen' in sides:
        subprocess.check_call(['bash', os.path.join(HERE, 'setup')])
    work = tempfile.mkdtemp(prefix='bench-fileservice-')
    os.chmod(work, 0o755)
    src = os.path.join(work, 'data')
    size = opts.mib << 20
    benchlib.write_random_file(src, opts.mib)
    sha1 = sha1_of(src)
    dest_dir = os.path.join(work, 'dest')
    os.mkdir(dest_dir)
    os.chmod(dest_dir, 0o1777)           # the sudo account writes here
    results = {}
    cpu = {}        # way -> CPU seconds of the Python processes involved
    started = time.monotonic()
    server = None
    try:
        server = benchlib.start_sshd(work)
        for rnd in range(opts.rounds):
            # Rotated, so no way always runs right after another.
            order = ['scp'] + sides
            order = order[rnd % len(order):] + order[:rnd % len(order)]
            for side in order:
                if side == 'scp':
                    records = [{'way': 'scp', 'seconds':
                                run_scp(server, src, dest_dir)}]
                else:
                    records = run_worker(side, opts, server, src, size, sha1,
                                         dest_dir)
                for r in records:
                    name = r['way'] if side == 'scp' else \
                        '%s %s' % (side, r['way'])
                    mb_s = size / r['seconds'] / 1e6
                    results.setdefault(name, []).append(mb_s)
                    line = {'round': rnd + 1, 'way': name,
                            'MB/s': round(mb_s, 1)}
                    if 'python_cpu' in r:
                        cpu.setdefault(name, []).append(r['python_cpu'])
                        line['python_cpu_s'] = round(r['python_cpu'], 2)
                    print(json.dumps(line), flush=True)
    finally:
        if server is not None:
            benchlib.stop_sshd(server)
        shutil.rmtree(work, ignore_errors=True)

    med = {name: statistics.median(v) for name, v in results.items()}
    print('\n%d MiB file, %d round(s), %.0f s, medians (MB/s = 10^6 bytes/s; '
          'CPU: seconds used by the master and the contexts on the way)'
          % (opts.mib, opts.rounds, time.monotonic() - started))
    print('%-18s %8s %8s %12s %8s' % ('way', 'MB/s', 'vs scp', 'vs mitogen',
                                      'CPU s'))
    for name in sorted(med, key=lambda n: (n != 'scp', n.split()[-1], n)):
        versus = '-'
        if name.startswith('ours '):
            anchor = med.get('mitogen ' + name.split()[1])
            if anchor:
                versus = '%.2fx' % (med[name] / anchor)
        cpu_s = '%.2f' % statistics.median(cpu[name]) if name in cpu else '-'
        print('%-18s %8.1f %7.2fx %12s %8s' % (
            name, med[name], med[name] / med['scp'], versus, cpu_s))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--mib', type=int, default=256)
    parser.add_argument('--side', action='append', choices=sorted(PYTHONS),
                        help='measure only this library (repeatable)')
    parser.add_argument('--pool-size', type=int, default=2,
                        help='threads of the master\'s service pool')
    worker_args = parser.add_argument_group('worker (set by the driver)')
    worker_args.add_argument('--worker', action='store_true')
    for name in ('path', 'sha1', 'dest-dir', 'ssh-key', 'ssh-config'):
        worker_args.add_argument('--' + name)
    worker_args.add_argument('--size', type=int)
    worker_args.add_argument('--ssh-port', type=int)
    opts = parser.parse_args()
    if opts.worker:
        worker(opts)
    else:
        driver(opts)


if __name__ == '__main__':
    main()
