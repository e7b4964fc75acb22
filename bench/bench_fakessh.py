"""
rsync over mitogen.fakessh against rsync over real ssh on loopback, side by
side in one run (issue 5: fakessh must reach at least half the real ssh
rate).

Each round copies the same file of random bytes (256 MiB by default, so
neither compression nor rsync's delta algorithm helps) into an empty
directory three ways, in turn:

real_ssh        rsync -a -e "ssh ..." to root@127.0.0.1 on a private sshd
                (the one of tests/sshd.py: its own host key, port, config)
fakessh_local   mitogen.fakessh.run(router.local(), ...): rsync -a -e ssh
fakessh_sudo    the same to router.sudo(username='root')
fakessh_ssh_sudo  the same to router.sudo(username='root', via=router.ssh(
                root@127.0.0.1 on the same sshd)): every byte also crosses
                a real ssh connection, the one of mitogen's tree

and prints one JSON line per round and a table of medians, with the ratio
of each fakessh rate to the real ssh rate of the same run. Needs root (the
private sshd, sudo) and rsync; the anchor is not measured, since Mitogen
0.3.54's fakessh does not run.

    .venv/bin/python bench/bench_fakessh.py [--rounds 3] [--mib 256]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests'))

import mitogen.fakessh  # noqa: E402
import mitogen.master  # noqa: E402
import sshd  # noqa: E402  (tests/sshd.py: the private OpenSSH server)


def timed(func):
    start = time.perf_counter()
    status = func()
    elapsed = time.perf_counter() - start
    if status != 0:
        raise RuntimeError('exit status %r' % (status,))
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--mib', type=int, default=256)
    opts = parser.parse_args()
    if shutil.which('rsync') is None or os.getuid() != 0:
        sys.exit('needs rsync and root')

    work = tempfile.mkdtemp(prefix='bench-fakessh-')
    os.chmod(work, 0o755)
    server = sshd.SshServer(os.path.join(work, 'sshd'))
    os.mkdir(server.tmpdir)
    os.chmod(server.tmpdir, 0o755)
    src = os.path.join(work, 'src')
    os.mkdir(src)
    size = opts.mib << 20
    with open(os.path.join(src, 'data'), 'wb') as f:
        for _ in range(opts.mib):
            f.write(os.urandom(1 << 20))
    dst = os.path.join(work, 'dst')
    results = {'real_ssh': [], 'fakessh_local': [], 'fakessh_sudo': [],
               'fakessh_ssh_sudo': []}
    try:
        server.start()
        ssh_cmd = 'ssh -F %s -i %s -p %d -o BatchMode=yes' % (
            server.client_config(), server.client_key, server.port)
        with mitogen.master.Router() as router:
            local = router.local(python_path=sys.executable)
            sudo = router.sudo(username='root', python_path=sys.executable)
            # Same client settings as the real-ssh way: no compression
            # (mitogen.ssh compresses by default, which costs more than it
            # saves on random bytes).
            via = router.ssh(**server.ssh_kwargs(
                username='root', python_path=sys.executable,
                compression=False))
            ssh_sudo = router.sudo(username='root', via=via,
                                   python_path=sys.executable)
            ways = [
                ('real_ssh', lambda: subprocess.call([
                    'rsync', '-a', '-e', ssh_cmd, src + '/',
                    'root@127.0.0.1:' + dst + '/'])),
                ('fakessh_local', lambda: mitogen.fakessh.run(
                    local, router, ['rsync', '-a', '-e', 'ssh', src + '/',
                                    'host:' + dst + '/'])),
                ('fakessh_sudo', lambda: mitogen.fakessh.run(
                    sudo, router, ['rsync', '-a', '-e', 'ssh', src + '/',
                                   'host:' + dst + '/'])),
                ('fakessh_ssh_sudo', lambda: mitogen.fakessh.run(
                    ssh_sudo, router, ['rsync', '-a', '-e', 'ssh',
                                       src + '/', 'host:' + dst + '/'])),
            ]
            for rnd in range(opts.rounds):
                for name, func in ways:
                    shutil.rmtree(dst, ignore_errors=True)
                    mbps = size / timed(func) / 1e6
                    results[name].append(mbps)
                    print(json.dumps({'round': rnd, 'way': name,
                                      'MB/s': round(mbps, 1)}), flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    real = statistics.median(results['real_ssh'])
    print('\n%d MiB file, median of %d rounds (MB/s = 10^6 bytes/s)'
          % (opts.mib, opts.rounds))
    print('%-17s %10s %14s' % ('way', 'MB/s', 'vs real ssh'))
    for name, values in results.items():
        median = statistics.median(values)
        print('%-17s %10.1f %13.2fx' % (name, median, median / real))


if __name__ == '__main__':
    main()
