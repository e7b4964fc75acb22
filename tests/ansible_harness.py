"""
Running real ``ansible-playbook`` against the test session's sshd, for
``tests/test_ansible.py``: Mitogen for Ansible (``ansible_mitogen``, the
client shipped in the mitogen 0.3.54 wheel) on our ``mitogen``, compared with
stock Ansible.

* :func:`ansible_mitogen_path` downloads the wheel once (hash-checked) into
  :data:`CACHE_DIR` and unpacks only its ``ansible_mitogen/`` directory; the
  directory holding it goes on ``PYTHONPATH``, so ``mitogen`` itself still
  comes from the venv.
* :class:`Playbook` runs ``ansible-playbook`` as a subprocess with an
  environment of its own (``ANSIBLE_*`` of the caller dropped; ``TMPDIR``,
  ``ANSIBLE_HOME``, local and remote temp directories private to the run;
  no configuration file) and collects what the ``result_dump``
  callback (``tests/ansible/callback_plugins``) wrote: one record per task
  result and the play recap.
* While it runs, it samples the processes the run starts (descendants of
  ``ansible-playbook`` and of the private sshd); afterwards it lists those
  still alive, and any other process carrying the run's tag in its
  environment or working in the run's directory, and the UNIX socket files
  left in that directory.
* :func:`normalise_result` removes from results what legitimately differs between
  two runs (timings, temporary paths, PIDs, job IDs, retry counts) so that
  :func:`differences` can compare a run with the reference run of the
  stock ``linear`` strategy.

``MITOGEN_TEST_ANSIBLE_PYTHON``, when set, names the Python whose
``ansible-playbook`` (next to it in its ``bin`` directory) runs the
playbooks instead of the test venv's: a venv with another ``mitogen``
installed runs the same comparison against that one (for benchmarks, or to
check the harness against Mitogen itself).
"""
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile

import leakcheck
from sshd import FAST_KEX

HERE = os.path.dirname(os.path.abspath(__file__))
#: Playbooks, custom module, module_utils, templates, files and the callback.
PLAYBOOK_DIR = os.path.join(HERE, 'ansible')
#: Survives between runs (listed in .gitignore).
CACHE_DIR = os.path.join(HERE, '.cache')

MITOGEN_VERSION = '0.3.54'
#: sha256 of mitogen-0.3.54-py2.py3-none-any.whl as published on PyPI.
WHEEL_SHA256 = (
    'ed7f209225069cbbe0c2f25ec5e4cd88e43bcb7ae0d55c61850083c96b81591d')

PYTHON_VARIABLE = 'MITOGEN_TEST_ANSIBLE_PYTHON'
#: Environment variable that marks every local process of one run.
RUN_TAG_VARIABLE = 'MITOGEN_TEST_ANSIBLE_RUN'
#: Read by the result_dump callback.
RESULTS_VARIABLE = 'MITOGEN_TEST_ANSIBLE_RESULTS'

#: Seconds a playbook run may take before the test calls it hung (stock
#: linear needs 70-120 s for the main playbook on 2 cores, idle or busy).
RUN_TIMEOUT = 240
#: Seconds processes of a finished run get to exit by themselves.
PROCESS_SETTLE = 10.0
#: Seconds between two samples of the processes on the targets (a sample
#: costs about 6 ms of CPU).
SAMPLE_INTERVAL = 0.1


# --- ansible_mitogen from the wheel ----------------------------------------

def _download_wheel(dest):
    requirement = os.path.join(dest, 'requirements.txt')
    with open(requirement, 'w') as f:
        f.write('mitogen==%s --hash=sha256:%s\n'
                % (MITOGEN_VERSION, WHEEL_SHA256))
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps',
         '--require-hashes', '--disable-pip-version-check',
         '-r', requirement, '-d', dest],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, timeout=300)
    wheels = [n for n in os.listdir(dest) if n.endswith('.whl')]
    if proc.returncode or len(wheels) != 1:
        raise RuntimeError('pip download of mitogen==%s failed:\n%s' % (
            MITOGEN_VERSION, proc.stdout.decode('utf-8', 'replace')))
    return os.path.join(dest, wheels[0])


def _unpack_ansible_mitogen(wheel, dest):
    """Extract the members under ``ansible_mitogen/`` of `wheel` into
    `dest`, and nothing else (the wheel's own ``mitogen/`` stays packed)."""
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            parts = name.split('/')
            if parts[0] != 'ansible_mitogen' or name.endswith('/'):
                continue
            if '..' in parts or name.startswith('/'):
                raise RuntimeError('unsafe member %r in %s' % (name, wheel))
            target = os.path.join(dest, *parts)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(name) as src, open(target, 'wb') as out:
                shutil.copyfileobj(src, out)


def _fill_cache(cache_dir, done, fill):
    """Unless `done` exists, call ``fill(work)`` with a new directory
    `work` (removed afterwards) under a lock of its own entry of
    `cache_dir`: safe when several test sessions ask at once, the first one
    fills the cache. Each entry has its own lock because filling one may
    fill another (the unpacked package needs the wheel): a second flock of
    one file from the same process would wait for itself."""
    if os.path.exists(done):
        return
    os.makedirs(cache_dir, exist_ok=True)
    entry = os.path.relpath(done, cache_dir).split(os.sep)[0]
    with open(os.path.join(cache_dir, '.%s.lock' % (entry,)), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(done):
            return
        work = tempfile.mkdtemp(prefix='fill-', dir=cache_dir)
        try:
            fill(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def ansible_mitogen_path(cache_dir=CACHE_DIR):
    """
    Return the directory whose ``ansible_mitogen/`` is Mitogen for
    Ansible, from the cache or freshly unpacked from the wheel.
    """
    path = os.path.join(cache_dir, 'mitogen-%s' % MITOGEN_VERSION)

    def unpack(work):
        unpacked = os.path.join(work, 'unpacked')
        _unpack_ansible_mitogen(mitogen_wheel(cache_dir), unpacked)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.rename(unpacked, path)
    _fill_cache(cache_dir, os.path.join(path, 'ansible_mitogen',
                                        '__init__.py'), unpack)
    return path


def mitogen_wheel(cache_dir=CACHE_DIR):
    """
    Return the path of the mitogen 0.3.54 wheel (upstream Mitogen), from
    the cache or freshly downloaded and checked against its published hash.
    """
    path = os.path.join(cache_dir, 'mitogen-%s-py2.py3-none-any.whl'
                        % (MITOGEN_VERSION,))
    _fill_cache(cache_dir, path,
                lambda work: os.rename(_download_wheel(work), path))
    return path


def ansible_python():
    """The Python whose ``ansible-playbook`` runs the playbooks."""
    return os.environ.get(PYTHON_VARIABLE) or sys.executable


def ansible_playbook():
    return os.path.join(os.path.dirname(ansible_python()), 'ansible-playbook')


def oldest_target_python():
    """The oldest target Python the ansible-core in use supports, "X.Y"
    (its ``module_utils/basic.py`` refuses anything older)."""
    code = ('import ansible.module_utils.basic as b;'
            'print("%d.%d" % b._PY_MIN)')
    return subprocess.run(
        [ansible_python(), '-c', code], stdout=subprocess.PIPE,
        check=True).stdout.decode().strip()


# --- processes -------------------------------------------------------------

def _stat(pid):
    """(ppid, state, start time) of `pid` from ``/proc/<pid>/stat``, or
    None if it is gone."""
    try:
        with open('/proc/%s/stat' % pid, 'rb') as f:
            line = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may itself hold spaces and parens.
    fields = line[line.rfind(b')') + 2:].split()
    return int(fields[1]), fields[0].decode(), fields[19].decode()


def _start_time(pid):
    found = _stat(pid)
    return found and found[2]


def descendants(root_pid, known=None):
    """``{(pid, start time): command}`` of every live descendant of
    `root_pid`; commands of `known` ({(pid, start time): command}) are
    taken from there instead of being read again."""
    children = {}
    for name in os.listdir('/proc'):
        if name.isdigit():
            found = _stat(name)
            if found is not None and found[1] != 'Z':
                children.setdefault(found[0], []).append(
                    (int(name), found[2]))
    known = known or {}
    result = {}
    todo = [root_pid]
    while todo:
        for key in children.get(todo.pop(), ()):
            command = known.get(key)
            if command is None:
                status = leakcheck.process_status(key[0])
                command = status[2] if status else '?'
            result[key] = command
            todo.append(key[0])
    return result


def marked_processes(variable, tag, directory):
    """``{(pid, start time): command}`` of every live process whose
    environment holds ``variable=tag`` or whose working directory is
    `directory` or below it (a process that rewrites its environment
    for its title, as ssh's ControlPersist master does, still keeps the
    working directory it inherited)."""
    marker = ('%s=%s' % (variable, tag)).encode()
    found = {}
    for name in os.listdir('/proc'):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open('/proc/%s/environ' % name, 'rb') as f:
                environ = f.read()
            cwd = os.readlink('/proc/%s/cwd' % name)
        except OSError:
            continue
        if (marker in environ.split(b'\0') or cwd == directory
                or cwd.startswith(directory + os.sep)):
            stat_fields = _stat(name)
            status = leakcheck.process_status(int(name))
            if stat_fields and status and stat_fields[1] != 'Z':
                found[(int(name), stat_fields[2])] = status[2]
    return found


def _alive(key):
    """Whether the process of `key` ((pid, start time)) still runs: not
    gone, not a zombie, not another process with a reused PID."""
    found = _stat(key[0])
    return found is not None and found[1] != 'Z' and found[2] == key[1]


class ProcessSampler(threading.Thread):
    """Records every process seen below its roots while it runs (the sshd
    the targets are reached through, ``ansible-playbook`` itself), even one
    re-parented to PID 1 later. Processes already below a root when it is
    added do not count, unless the root is `fresh` (just started by the
    caller, so that everything below it is its doing)."""

    def __init__(self):
        super().__init__(name='ansible-process-sampler', daemon=True)
        self.roots = []
        self.before = {}
        self.seen = {}
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def add_root(self, pid, fresh=False):
        with self._lock:
            if not fresh:
                self.before.update(descendants(pid))
            self.roots.append(pid)

    def run(self):
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(SAMPLE_INTERVAL)

    def sample(self):
        with self._lock:
            known = dict(self.before)
            known.update(self.seen)
            for root in self.roots:
                for key, command in descendants(root, known).items():
                    if key not in self.before:
                        self.seen[key] = command

    def stop(self):
        """End the thread, after one last sample; :meth:`sample` may
        still be called afterwards."""
        self._stop_event.set()
        self.join()
        self.sample()


def unix_sockets(top):
    """Paths of the UNIX socket files under `top`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    found.append(path)
            except OSError:
                pass
    return sorted(found)


def kill_processes(keys):
    """SIGKILL the processes of `keys` ((pid, start time) pairs) that are
    still the same processes."""
    for key in keys:
        if _alive(key):
            try:
                os.kill(key[0], signal.SIGKILL)
            except OSError:
                pass
    for pid, _ in keys:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


# --- inventories -----------------------------------------------------------

def ssh_host(sshd, user, **variables):
    """Variables of an inventory host reached over the private sshd as
    `user`, with the session's client key and the fixture's known hosts."""
    host = {
        'ansible_connection': 'ssh',
        'ansible_host': sshd.host,
        'ansible_port': sshd.port,
        'ansible_user': user,
        'ansible_ssh_private_key_file': sshd.client_key,
        'ansible_ssh_common_args': '-F %s -o KexAlgorithms=%s' % (
            sshd.client_config(with_key=True), FAST_KEX),
    }
    host.update(variables)
    return host


def write_inventory(path, hosts, group='targets'):
    """Write `hosts` ({name: variables}) as a YAML inventory (JSON is
    YAML) holding one group."""
    with open(path, 'w') as f:
        json.dump({'all': {'children': {group: {'hosts': hosts}}}}, f,
                  indent=2, sort_keys=True)
    return path


# --- running a playbook ----------------------------------------------------

class Run(object):
    """What one ``ansible-playbook`` run did.

    .. attribute:: returncode

       Its exit status; None if it was killed at its timeout.

    .. attribute:: results

       ``{(task, host): [record, ...]}``: every result record of the
       callback, in the order they came.

    .. attribute:: stats

       ``{host: {'ok': n, 'changed': n, ...}}``: the play recap.

    .. attribute:: leftover_processes

       ``[(pid, command), ...]``: processes of the run still alive
       :data:`PROCESS_SETTLE` seconds after ``ansible-playbook`` exited,
       locally or on the targets (killed once listed).

    .. attribute:: leftover_sockets

       UNIX socket files left under the run's directory.
    """

    def __init__(self, strategy, returncode, output, records, elapsed,
                 leftover_processes, leftover_sockets, replacements):
        self.strategy = strategy
        self.returncode = returncode
        self.output = output
        self.elapsed = elapsed
        self.leftover_processes = leftover_processes
        self.leftover_sockets = leftover_sockets
        self.replacements = replacements
        self.results = {}
        self.stats = {}
        for record in records:
            if record['event'] == 'result':
                key = (record['task'], record['host'])
                self.results.setdefault(key, []).append(record)
            elif record['event'] == 'stats':
                self.stats[record['host']] = record['stats']

    def describe(self):
        """What was left behind and the tail of ``ansible-playbook``'s
        output, for failure messages."""
        if self.returncode is None:
            outcome = 'was killed at its timeout'
        else:
            outcome = 'exited %d' % self.returncode
        lines = ['ansible-playbook (%s) %s after %.1f s' % (
            self.strategy, outcome, self.elapsed)]
        lines += ['left process %d: %s' % (pid, command[:200])
                  for pid, command in self.leftover_processes]
        lines += ['left socket %s' % path for path in self.leftover_sockets]
        return '\n'.join(lines) + '\noutput:\n' + self.output[-6000:]


class Playbook(object):
    """Runs one playbook of :data:`PLAYBOOK_DIR` with a given inventory.

    `sshd` is the session's :class:`sshd.SshServer` (its process is where
    target processes are looked for); `base` is a directory of the test;
    `scratch` a world-writable directory the targets may write into. Each
    run gets directories of its own in both, and the playbook gets their
    paths as the extra variables ``run_dir`` and ``scratch``.
    """

    def __init__(self, name, inventory, base, scratch, sshd=None,
                 mitogen_path=None, extra_vars=None, forks=None,
                 timeout=RUN_TIMEOUT):
        self.path = os.path.join(PLAYBOOK_DIR, name)
        self.inventory = inventory
        self.base = base
        self.scratch = tempfile.mkdtemp(prefix=name.split('.')[0] + '-',
                                        dir=scratch)
        os.chmod(self.scratch, 0o1777)
        self.sshd = sshd
        self.mitogen_path = mitogen_path
        self.extra_vars = dict(extra_vars or {})
        self.forks = forks
        self.timeout = timeout
        self._runs = {}

    def run_once(self, strategy):
        """:meth:`run` with `strategy` the first time; afterwards the same
        :class:`Run` (or the same exception) again."""
        if strategy not in self._runs:
            try:
                self._runs[strategy] = self.run(strategy)
            except Exception as e:
                self._runs[strategy] = e
        outcome = self._runs[strategy]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _environment(self, run_dir, scratch, strategy, tag):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('ANSIBLE_')
               and k not in ('PYTHONPATH', 'SSH_AUTH_SOCK', 'SSH_AGENT_PID')}
        dirs = {}
        for name in ('tmp', 'local-tmp', 'ansible-home'):
            dirs[name] = os.path.join(run_dir, name)
            os.mkdir(dirs[name])
        config = os.path.join(run_dir, 'ansible.cfg')
        open(config, 'w').close()
        env.update({
            'TMPDIR': dirs['tmp'],
            'LC_ALL': 'C.UTF-8',
            'PYTHONDONTWRITEBYTECODE': '1',
            RUN_TAG_VARIABLE: tag,
            RESULTS_VARIABLE: os.path.join(run_dir, 'results.jsonl'),
            'ANSIBLE_CONFIG': config,
            'ANSIBLE_HOME': dirs['ansible-home'],
            'ANSIBLE_LOCAL_TEMP': dirs['local-tmp'],
            'ANSIBLE_REMOTE_TEMP': os.path.join(scratch, '.remote-tmp'),
            'ANSIBLE_CALLBACK_PLUGINS': os.path.join(PLAYBOOK_DIR,
                                                     'callback_plugins'),
            'ANSIBLE_CALLBACKS_ENABLED': 'result_dump',
            'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_RETRY_FILES_ENABLED': '0',
            'ANSIBLE_TIMEOUT': '20',
            'ANSIBLE_STRATEGY': strategy,
            'ANSIBLE_PIPELINING': '1',
        })
        # ANSIBLE_ASYNC_DIR keeps its default (~/.ansible_async): Mitogen
        # for Ansible reads it from the target's environment, not from the
        # controller's configuration.
        if strategy.startswith('mitogen'):
            env['PYTHONPATH'] = self.mitogen_path
            env['ANSIBLE_STRATEGY_PLUGINS'] = os.path.join(
                self.mitogen_path, 'ansible_mitogen', 'plugins', 'strategy')
            # Mitogen keeps one connection per target itself.
            env['ANSIBLE_SSH_ARGS'] = '-o ControlMaster=no'
        else:
            # Stock Ansible is only usable fast with connection sharing;
            # the masters are told to exit after the run.
            env['ANSIBLE_SSH_ARGS'] = (
                '-o ControlMaster=auto -o ControlPersist=60s')
            env['ANSIBLE_SSH_CONTROL_PATH_DIR'] = os.path.join(
                dirs['ansible-home'], 'cp')
        if self.forks:
            env['ANSIBLE_FORKS'] = str(self.forks)
        return env

    def _stop_control_masters(self, run_dir):
        control_dir = os.path.join(run_dir, 'ansible-home', 'cp')
        if not os.path.isdir(control_dir):
            return
        for name in os.listdir(control_dir):
            subprocess.run(
                ['ssh', '-o', 'ControlPath=' + os.path.join(control_dir, name),
                 '-O', 'exit', 'unused'],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, timeout=30)

    def run(self, strategy, during=None):
        """Run the playbook with `strategy` and return a :class:`Run`.
        `during`, if given, is called with the run's directory while
        ``ansible-playbook`` runs, in a thread of its own."""
        run_dir = os.path.join(self.base, strategy)
        os.mkdir(run_dir)
        scratch = os.path.join(self.scratch, strategy)
        os.mkdir(scratch)
        os.chmod(scratch, 0o1777)
        tag = uuid.uuid4().hex
        env = self._environment(run_dir, scratch, strategy, tag)
        # Shared by the accounts the targets run as.
        os.mkdir(env['ANSIBLE_REMOTE_TEMP'])
        os.chmod(env['ANSIBLE_REMOTE_TEMP'], 0o1777)
        argv = [ansible_playbook(), '-i', self.inventory, self.path]
        extra_vars = dict(self.extra_vars, scratch=scratch, run_dir=run_dir)
        for key, value in sorted(extra_vars.items()):
            argv += ['-e', '%s=%s' % (key, value)]
        sampler = ProcessSampler()
        if self.sshd is not None:
            sampler.add_root(self.sshd.proc.pid)
        sampler.start()
        helper = None
        started = time.monotonic()
        with open(os.path.join(run_dir, 'output.txt'), 'w+b') as out:
            proc = subprocess.Popen(argv, cwd=run_dir, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
            sampler.add_root(proc.pid, fresh=True)
            if during is not None:
                helper = threading.Thread(target=during, args=(run_dir,),
                                          daemon=True)
                helper.start()
            try:
                returncode = proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                # Its workers and multiplexer are killed with the other
                # leftovers below.
                proc.kill()
                proc.wait()
                returncode = None
            elapsed = time.monotonic() - started
            if helper is not None:
                helper.join(self.timeout)
            self._stop_control_masters(run_dir)
            leftovers = self._wait_for_processes(sampler, tag, run_dir)
            out.seek(0)
            output = out.read().decode('utf-8', 'replace')
        records = []
        results_path = env[RESULTS_VARIABLE]
        if os.path.exists(results_path):
            with open(results_path, encoding='utf-8') as f:
                records = [json.loads(line) for line in f]
        replacements = [(run_dir, '<RUN>'), (scratch, '<SCRATCH>')]
        return Run(strategy, returncode, output, records, elapsed,
                   leftovers, unix_sockets(run_dir), replacements)

    def _wait_for_processes(self, sampler, tag, run_dir):
        """Wait for the run's processes to go; kill and return those that
        outlive :data:`PROCESS_SETTLE`."""
        sampler.stop()
        deadline = time.monotonic() + PROCESS_SETTLE
        while True:
            local = marked_processes(RUN_TAG_VARIABLE, tag, run_dir)
            sampler.sample()
            sampled = {k: c for k, c in sampler.seen.items() if _alive(k)}
            if (not local and not sampled) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        left = dict(local)
        left.update(sampled)
        kill_processes(list(left))
        return sorted((key[0], command) for key, command in left.items())


# --- comparing results -----------------------------------------------------

#: Result keys whose values differ from one run to the next whatever runs
#: the task: timings, PIDs, job IDs, temporary files, retry counts.
VOLATILE_KEYS = frozenset([
    'start', 'end', 'delta', 'attempts', 'ansible_job_id', 'results_file',
    'started', 'finished', 'pid',
])

#: Keys of ``stat`` results that change whenever a file is written again.
VOLATILE_STAT_KEYS = frozenset([
    'atime', 'mtime', 'ctime', 'inode', 'dev', 'version',
])

#: Gathered facts that change from one moment to the next (clock, load,
#: free memory and disk, the ssh client's port in the environment), and
#: the number of CPUs the gathering process may use (Mitogen for Ansible
#: pins its processes to CPUs, and local targets inherit that).
VOLATILE_FACTS = frozenset([
    'ansible_date_time', 'ansible_env', 'ansible_loadavg',
    'ansible_memfree_mb', 'ansible_memory_mb', 'ansible_mounts',
    'ansible_uptime_seconds', 'ansible_processor_nproc',
])

#: Modules whose output goes through a terminal: where it is allocated and
#: what the become prompt leaves behind ("\r\n", a blank first line,
#: ssh's "Shared connection to ... closed.") depends on the connection
#: plugin, not on what the command printed.
TTY_ACTIONS = frozenset([
    'raw', 'ansible.builtin.raw', 'script', 'ansible.builtin.script',
])

#: Temporary directories of a task, whose location also depends on the
#: connection (stock Ansible moves them to /var/tmp when becoming an
#: unprivileged account), and async job files.
_TMP_PATTERNS = [
    (re.compile(r'[^\s"\']*/(?:ansible-tmp-[0-9.]+-[0-9]+-[0-9]+'
                r'|ansible_mitogen_action_[0-9a-f]+)'), '<TASK_TMP>'),
    (re.compile(r'[^\s"\']*/ansible-local-[0-9]+[A-Za-z0-9_]+'),
     '<LOCAL_TMP>'),
    (re.compile(r'(\.ansible_async/)[A-Za-z0-9_.]+'), r'\1<JOB>'),
]

#: What root's ~/.bashrc prints now and then: ``pyenv rehash`` finding its
#: lock or its shims directory taken by a login running at the same moment
#: (the test sshd sets PYENV_REHASH_TIMEOUT=0).
_PYENV_NOISE = re.compile(
    r'^(?:pyenv: .*|.*/\.pyenv/(?:shims|libexec)/.*)(?:\n|$)', re.M)
_SHARED_CONNECTION = re.compile(r'^Shared connection to \S+ closed\.$')


def _normalise_text(text, replacements):
    for old, new in replacements:
        text = text.replace(old, new)
    for pattern, new in _TMP_PATTERNS:
        text = pattern.sub(new, text)
    return _PYENV_NOISE.sub('', text.replace('\r\n', '\n'))


def _normalise_value(value, replacements, key=None):
    if isinstance(value, dict):
        drop = VOLATILE_KEYS | (VOLATILE_STAT_KEYS if key == 'stat'
                                else frozenset())
        return {k: _normalise_value(v, replacements, k)
                for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [_normalise_value(v, replacements) for v in value]
    if isinstance(value, str):
        return _normalise_text(value, replacements)
    return value


def _lines(text):
    return [line for line in text.split('\n')
            if line.strip() and not _SHARED_CONNECTION.match(line.strip())]


#: Facts that list the machine's network interfaces and their addresses,
#: which other programs add and remove at any time (network namespaces,
#: veth pairs, containers): a run a minute later may see others.
INTERFACE_FACTS = frozenset([
    'ansible_interfaces', 'ansible_all_ipv4_addresses',
    'ansible_all_ipv6_addresses',
])


def _normalise_facts(facts):
    # Each interface has a fact of its own, named after it the way
    # ansible.module_utils.facts.namespace names facts.
    interfaces = frozenset('ansible_' + name.replace('-', '_')
                           for name in facts.get('ansible_interfaces', ()))
    facts = {k: v for k, v in facts.items()
             if k not in VOLATILE_FACTS and k not in INTERFACE_FACTS
             and k not in interfaces}
    for key, value in facts.items():
        # Interface and virtualisation lists come in directory order.
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            facts[key] = sorted(value)
    # Interpreter discovery reports its finding once with stock Ansible
    # and with every result with Mitogen for Ansible.
    facts.pop('discovered_interpreter_python', None)
    return facts


def _normalise_item(action, item):
    # What Ansible's callbacks strip from a result (warnings, deprecations,
    # exception) but leave in the per-item results of a loop.
    item = {k: v for k, v in item.items()
            if k not in ('warnings', 'deprecations', 'exception')}
    return normalise_result(action, item, [])


def normalise_result(action, result, replacements):
    """`result` of a task of `action` without what legitimately differs
    between two runs: :data:`VOLATILE_KEYS`, ``stat`` times and inodes,
    :data:`VOLATILE_FACTS`, network interfaces (:data:`INTERFACE_FACTS`
    and one fact per interface), run-specific paths (`replacements`, then
    temporary names), the terminal artefacts of :data:`TTY_ACTIONS`, and
    the lines root's login prints about pyenv; of an unreachable host,
    only ssh's own error lines; an empty ``data`` (async results of
    Mitogen for Ansible)."""
    result = _normalise_value(result, replacements)
    for name in ('stdout', 'stderr'):
        # Their *_lines lost the noise lines above only as empty strings.
        if isinstance(result.get(name), str) and name + '_lines' in result:
            result[name + '_lines'] = result[name].splitlines()
    if result.get('unreachable'):
        # How a connection failure is worded is the connection plugin's
        # business; what ssh itself said must be there.
        result['msg'] = [line.rsplit('ssh: ', 1)[1]
                         for line in result.get('msg', '').splitlines()
                         if 'ssh: ' in line]
    if result.get('data') == '':
        # Mitogen for Ansible's async job files carry an empty "data".
        del result['data']
    if 'ansible_facts' in result:
        result['ansible_facts'] = _normalise_facts(result['ansible_facts'])
        if not result['ansible_facts']:
            del result['ansible_facts']
    if 'results' in result:
        result['results'] = [
            _normalise_item(action, item) if isinstance(item, dict)
            else item for item in result['results']]
    if action in TTY_ACTIONS:
        for name in ('stdout', 'stderr'):
            if isinstance(result.get(name), str):
                result[name] = _lines(result[name])
                result.pop(name + '_lines', None)
    return result


def summary(run, key):
    """The normalised records of one (task, host) of `run`."""
    return [{
        'status': record['status'],
        'ignore_errors': record['ignore_errors'],
        'result': normalise_result(record['action'], record['result'],
                                   run.replacements),
    } for record in run.results.get(key, [])]


def differences(reference, run, hosts=None):
    """Human-readable differences between two runs, one per (task, host)
    whose normalised results differ; only `hosts` if given."""
    problems = []
    for key in sorted(set(reference.results) | set(run.results)):
        if hosts is not None and key[1] not in hosts:
            continue
        want, got = summary(reference, key), summary(run, key)
        if want != got:
            problems.append('task %r on host %r:\n  %s: %s\n  %s: %s' % (
                key[0], key[1], reference.strategy,
                json.dumps(want, sort_keys=True), run.strategy,
                json.dumps(got, sort_keys=True)))
    return problems
