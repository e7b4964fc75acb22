"""
Wall time of one fixed playbook (bench/ansible/playbook.yml) under three
ways of running Ansible, interleaved over several rounds:

linear   stock ansible-core 2.19.14 with its ``linear`` strategy
         (bench/.venv-ansible-ours), ssh with connection sharing
         (ControlPersist) and pipelining
ours     ``mitogen_linear`` of Mitogen for Ansible (``ansible_mitogen`` of
         the mitogen 0.3.54 wheel, unmodified) on this project's mitogen
         (bench/.venv-ansible-ours: that ansible-core and this checkout's
         distributions, nothing else, made by ``bench/setup ansible-ours``)
mitogen  ``mitogen_linear`` on Mitogen 0.3.54 itself, with the same
         ansible-core (bench/.venv-ansible-mitogen, made by
         ``bench/setup ansible``)

with 1 target and with 12 targets (aliases of one private sshd on 127.0.0.1,
root login with a key, forks=12). Both Mitogen ways run the very same
``ansible_mitogen`` files: ours gets a copy of the ones installed in
bench/.venv-ansible-mitogen on ``PYTHONPATH``.

Prints one JSON line per run, then the median wall time of each way and the
ratios ``ours vs mitogen`` (Mitogen's time / ours) and ``ours vs linear``
(linear's time / ours): above 1, ours is faster.

    .venv/bin/python bench/bench_ansible.py [--rounds 5] [--hosts 1 --hosts 12]
"""
import argparse
import glob
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PLAYBOOK_DIR = os.path.join(HERE, 'ansible')

#: The same ansible-core as the anchor's venv and nothing else beside our
#: distributions: the project's .venv holds test tools, and paramiko there
#: alone adds ~50 ms to every ansible-playbook start.
OURS_BIN = os.path.join(HERE, '.venv-ansible-ours', 'bin')
ANCHOR_VENV = os.path.join(HERE, '.venv-ansible-mitogen')
ANCHOR_BIN = os.path.join(ANCHOR_VENV, 'bin')
WAYS = ('linear', 'ours', 'mitogen')
#: The Python modules run with on the targets: the system one, the same for
#: every way (no interpreter discovery, no pyenv shim).
TARGET_PYTHON = '/usr/bin/python3'
#: Seconds one ansible-playbook run may take.
RUN_TIMEOUT = 600
#: Seconds a finished run's processes get to exit by themselves.
SETTLE_TIMEOUT = 15
BIG_FILE_MIB = 4


def ansible_mitogen_dir(work):
    """A directory holding only a copy of the ``ansible_mitogen`` package
    installed in the anchor's venv: on ``PYTHONPATH`` it brings Mitogen for
    Ansible without the wheel's ``mitogen``."""
    found = glob.glob(os.path.join(ANCHOR_VENV, 'lib', 'python*',
                                   'site-packages', 'ansible_mitogen'))
    if not found:
        raise RuntimeError('%s has no ansible_mitogen: run bash bench/setup '
                           'ansible' % ANCHOR_VENV)
    dest = os.path.join(work, 'ansible-mitogen-path')
    shutil.copytree(found[0], os.path.join(dest, 'ansible_mitogen'),
                    ignore=shutil.ignore_patterns('__pycache__'))
    return dest


class Bench(object):

    def __init__(self, work, server, forks):
        self.work = work
        self.server = server
        self.forks = forks
        self.mitogen_path = ansible_mitogen_dir(work)
        self.big_file = os.path.join(work, 'big.bin')
        benchlib.write_random_file(self.big_file, BIG_FILE_MIB)
        with open(self.big_file, 'rb') as f:
            self.big_sha1 = hashlib.sha1(f.read()).hexdigest()
        self.inventories = {}
        self.runs = 0
        # Bytecode of the controller's modules, kept for the whole bench
        # (the environment may forbid writing it next to the sources).
        self.pycache = os.path.join(work, 'pycache')

    def inventory(self, hosts):
        path = self.inventories.get(hosts)
        if path is None:
            common = {
                'ansible_connection': 'ssh',
                'ansible_host': self.server.host,
                'ansible_port': self.server.port,
                'ansible_user': 'root',
                'ansible_ssh_private_key_file': self.server.client_key,
                'ansible_ssh_common_args': '-F %s' % (
                    self.server.client_config(with_key=True),),
                'ansible_python_interpreter': TARGET_PYTHON,
            }
            inventory = {'all': {'children': {'targets': {'hosts': {
                'target%02d' % i: common for i in range(hosts)}}}}}
            path = os.path.join(self.work, 'inventory-%d.json' % hosts)
            with open(path, 'w') as f:
                json.dump(inventory, f, indent=1)
            self.inventories[hosts] = path
        return path

    def environment(self, way, run_dir, scratch):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('ANSIBLE_')
               and k not in ('PYTHONPATH', 'PYTHONDONTWRITEBYTECODE',
                             'SSH_AUTH_SOCK', 'SSH_AGENT_PID')}
        for name in ('tmp', 'local-tmp', 'home'):
            os.mkdir(os.path.join(run_dir, name))
        config = os.path.join(run_dir, 'ansible.cfg')
        open(config, 'w').close()
        env.update({
            'TMPDIR': os.path.join(run_dir, 'tmp'),
            'PYTHONPYCACHEPREFIX': self.pycache,
            'LC_ALL': 'C.UTF-8',
            'ANSIBLE_CONFIG': config,
            'ANSIBLE_HOME': os.path.join(run_dir, 'home'),
            'ANSIBLE_LOCAL_TEMP': os.path.join(run_dir, 'local-tmp'),
            'ANSIBLE_REMOTE_TEMP': os.path.join(scratch, '.remote-tmp'),
            'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_RETRY_FILES_ENABLED': '0',
            'ANSIBLE_TIMEOUT': '30',
            'ANSIBLE_PIPELINING': '1',
            'ANSIBLE_FORKS': str(self.forks),
        })
        if way == 'linear':
            env['ANSIBLE_STRATEGY'] = 'linear'
            # Stock Ansible at its best: one shared ssh connection per host.
            env['ANSIBLE_SSH_ARGS'] = (
                '-o ControlMaster=auto -o ControlPersist=60s')
            env['ANSIBLE_SSH_CONTROL_PATH_DIR'] = os.path.join(run_dir, 'cp')
            return env
        env['ANSIBLE_STRATEGY'] = 'mitogen_linear'
        env['ANSIBLE_SSH_ARGS'] = '-o ControlMaster=no'
        if way == 'ours':
            env['PYTHONPATH'] = self.mitogen_path
            plugins = self.mitogen_path
        else:
            plugins = os.path.dirname(glob.glob(os.path.join(
                ANCHOR_VENV, 'lib', 'python*', 'site-packages',
                'ansible_mitogen'))[0])
        env['ANSIBLE_STRATEGY_PLUGINS'] = os.path.join(
            plugins, 'ansible_mitogen', 'plugins', 'strategy')
        return env

    def run(self, way, hosts):
        """Run the playbook once; return (seconds, error or None)."""
        self.runs += 1
        label = '%03d-%s-%d' % (self.runs, way, hosts)
        run_dir = os.path.join(self.work, 'runs', label)
        scratch = os.path.join(self.work, 'scratch', label)
        os.makedirs(run_dir)
        os.makedirs(os.path.join(scratch, '.remote-tmp'))
        env = self.environment(way, run_dir, scratch)
        bindir = ANCHOR_BIN if way == 'mitogen' else OURS_BIN
        argv = [os.path.join(bindir, 'ansible-playbook'),
                '-i', self.inventory(hosts),
                os.path.join(PLAYBOOK_DIR, 'playbook.yml'),
                '-e', 'scratch=' + scratch, '-e', 'run_dir=' + run_dir,
                '-e', 'big_file=' + self.big_file,
                '-e', 'big_sha1=' + self.big_sha1]
        error = None
        output = os.path.join(run_dir, 'output.txt')
        with open(output, 'wb') as out:
            started = time.perf_counter()
            proc = subprocess.Popen(argv, cwd=PLAYBOOK_DIR, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                proc.wait(RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                error = 'timed out after %d s' % RUN_TIMEOUT
            except BaseException:
                benchlib.kill_group(proc)       # interrupted
                raise
            elapsed = time.perf_counter() - started
        self._clean_up(proc, run_dir)
        if error is None and proc.returncode:
            error = 'exit status %d' % proc.returncode
        if error:
            with open(output, errors='replace') as f:
                error += '; output ends with:\n' + f.read()[-3000:]
        shutil.rmtree(scratch, ignore_errors=True)
        return elapsed, error

    def _clean_up(self, proc, run_dir):
        """Stop what the run left: ssh control masters, then whatever of
        its session or on the targets outlives SETTLE_TIMEOUT; wait for the
        rest to exit, so that it does not slow down the next run."""
        control_dir = os.path.join(run_dir, 'cp')
        if os.path.isdir(control_dir):
            for name in os.listdir(control_dir):
                subprocess.call(
                    ['ssh', '-o', 'ControlPath=' +
                     os.path.join(control_dir, name), '-O', 'exit', 'x'],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, timeout=30)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None and \
                    not benchlib.descendants(self.server.proc.pid):
                break
            time.sleep(0.05)
        benchlib.kill_group(proc)
        for pid in benchlib.descendants(self.server.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rounds', type=int, default=5,
                        help='interleaved runs of each way (default 5)')
    parser.add_argument('--hosts', type=int, action='append',
                        help='number of targets (repeatable; default 1 '
                        'and 12)')
    parser.add_argument('--way', action='append', choices=WAYS,
                        help='run only this way (repeatable)')
    parser.add_argument('--forks', type=int, default=12)
    opts = parser.parse_args()
    host_counts = opts.hosts or [1, 12]
    ways = opts.way or list(WAYS)
    benchlib.require_root_and_sshd()
    if 'mitogen' in ways or 'ours' in ways:
        subprocess.check_call(['bash', os.path.join(HERE, 'setup'),
                               'ansible'])
    if 'linear' in ways or 'ours' in ways:
        subprocess.check_call(['bash', os.path.join(HERE, 'setup'),
                               'ansible-ours'])

    work = tempfile.mkdtemp(prefix='bench-ansible-')
    os.chmod(work, 0o755)
    results = {}
    failures = []
    started = time.monotonic()
    server = None
    try:
        server = benchlib.start_sshd(work)
        bench = Bench(work, server, opts.forks)
        # One untimed run of each way: the controller's bytecode is
        # compiled once, not in the first round.
        for way in ways:
            _, error = bench.run(way, 1)
            if error:
                failures.append(('warm-up', way, 1, error))
        for rnd in range(opts.rounds):
            for hosts in host_counts:
                # Rotated, so no way always runs right after another.
                order = ways[rnd % len(ways):] + ways[:rnd % len(ways)]
                for way in order:
                    elapsed, error = bench.run(way, hosts)
                    print(json.dumps({'round': rnd + 1, 'hosts': hosts,
                                      'way': way, 'seconds': round(elapsed, 3),
                                      'ok': error is None}), flush=True)
                    if error:
                        failures.append((rnd + 1, way, hosts, error))
                    else:
                        results.setdefault((hosts, way), []).append(elapsed)
    finally:
        if server is not None:
            benchlib.stop_sshd(server)
        shutil.rmtree(work, ignore_errors=True)

    print('\n%d round(s), %.0f s; playbook wall time in seconds, medians; '
          'ratios > 1: ours is faster' % (opts.rounds,
                                          time.monotonic() - started))
    header = ('hosts',) + tuple(ways) + ('ours vs mitogen', 'ours vs linear')
    rows = []
    for hosts in host_counts:
        med = {}
        for way in ways:
            values = results.get((hosts, way))
            med[way] = statistics.median(values) if values else None
        row = [str(hosts)] + ['-' if med[w] is None else '%.2f' % med[w]
                              for w in ways]
        for other in ('mitogen', 'linear'):
            if med.get('ours') and med.get(other):
                row.append('%.2f' % (med[other] / med['ours']))
            else:
                row.append('-')
        rows.append(row)
    widths = [max(len(r[c]) for r in [header] + rows)
              for c in range(len(header))]
    for row in [header] + rows:
        print('  '.join(cell.rjust(w) for cell, w in zip(row, widths)))
    for rnd, way, hosts, error in failures:
        print('\nFAILED: round %s, %s, %d host(s): %s' % (rnd, way, hosts,
                                                           error))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
