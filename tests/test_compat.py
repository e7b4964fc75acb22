"""
Specification of the names programs written for Mitogen (Mitogen for
Ansible first) import besides the documented API: the 2/3 helpers and
process helpers of :mod:`mitogen.core`, :func:`mitogen.fork.on_fork`,
``mitogen.parent``'s ``CallSpec``, ``POLLER_LIGHTWEIGHT``, ``popen`` and
``_preexec_hook``, ``mitogen.utils``' ``PASSTHROUGH``,
``_levelname_to_levels`` and ``setup_gil``, and the modules
:mod:`mitogen.debug` and :mod:`mitogen.imports`.

What runs in children is checked in a child of every Python version; the
functions they run live in :mod:`support.compat_funcs`.
"""
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

import interpreters
import mitogen.core
import mitogen.debug
import mitogen.fork
import mitogen.imports
import mitogen.master
import mitogen.parent
import mitogen.utils
from support import compat_funcs as funcs
from waiting import call, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(ROOT, '.venv', 'bin', 'python')

#: Seconds the import scans of every child may take, together.
SCAN_TIMEOUT = 300.0


@pytest.fixture(scope='module')
def contexts():
    """A child of every Python version this machine has, by version."""
    with mitogen.master.Router() as router:
        yield dict((i.version, router.local(python_path=i.path))
                   for i in interpreters.find_interpreters())


@pytest.fixture
def child(contexts, interpreter):
    return contexts[interpreter.version]


@pytest.fixture(scope='module')
def import_scans(contexts):
    """The import scans of every child, which take seconds each, started
    together: ``{version: {what: receiver}}``."""
    return dict((version, {
        'stdlib': context.call_async(funcs.imports_corpus),
        300: context.call_async(funcs.imports_with_extended_args, 300),
        70000: context.call_async(funcs.imports_with_extended_args, 70000),
    }) for version, context in contexts.items())


def scan_result(import_scans, interpreter, what):
    recv = import_scans[interpreter.version][what]
    return recv.get(timeout=SCAN_TIMEOUT).unpickle()


# ---------------------------------------------------------------------------
# mitogen.core
# ---------------------------------------------------------------------------

def test_core_helpers_behave_alike_on_every_python(child):
    got = call(child, funcs.core_helpers)
    assert got['b'] == b'abc' and got['b_bytes'] == b'abc'
    assert tuple(got['str_partition']) == (u'k', u'=', u'v=w')
    assert tuple(got['str_rpartition']) == (u'k=v', u'=', u'w')
    assert tuple(got['bytes_partition']) == (b'k', b'=', b'v')
    assert got['paths'] == [True, True, False]
    assert got['types'] == [True, True, True]
    assert [tuple(i) for i in got['iteritems']] == [(u'a', 1), (u'b', 2)]
    assert got['next'] == 7 and got['any'] == [True, False]
    assert got['import_module'] is True


def test_core_pipe_and_socketpair_on_every_python(child):
    got = call(child, funcs.core_helpers)
    assert got['piped'] == b'through the pipe'
    assert got['pipe_cloexec'] == [True, True]
    assert got['received'] == b'x'
    assert got['blocking'] == [True, True]
    assert got['pair_cloexec'] == [True, True]
    assert got['after_set'] is False


def test_fs_path_types_are_text_and_bytes():
    assert set(mitogen.core.FsPathTypes) == {str, bytes}


def test_loggers_are_root_mitogen_and_io():
    assert mitogen.core.LOGGERS == ('', 'mitogen', 'mitogen.io')


def test_socketpair_is_a_blocking_unix_stream_pair_usable_as_semaphore():
    # As ansible_mitogen's process.py: one side blocks in recv(1) until the
    # other sends a byte, then until it shuts its writing side.
    parent_sock, child_sock = mitogen.core.socketpair()
    try:
        assert parent_sock.family == socket.AF_UNIX
        assert parent_sock.type == socket.SOCK_STREAM
        assert parent_sock.gettimeout() is None
        t = threading.Thread(target=child_sock.send, args=(b'1',))
        t.start()
        assert mitogen.core.io_op(parent_sock.recv, 1) == (b'1', False)
        t.join()
        parent_sock.shutdown(socket.SHUT_WR)
        assert mitogen.core.io_op(child_sock.recv, 1) == (b'', False)
    finally:
        parent_sock.close()
        child_sock.close()


def test_socketpair_can_be_non_blocking():
    a, b = mitogen.core.socketpair(blocking=False)
    try:
        assert not mitogen.core.get_blocking(a.fileno())
        with pytest.raises(socket.error):
            a.recv(1)
    finally:
        a.close()
        b.close()


def test_set_blocking_returns_the_previous_flags():
    r, w = os.pipe()
    try:
        before = mitogen.core.set_blocking(r, False)
        assert not before & os.O_NONBLOCK
        assert mitogen.core.get_blocking(r) is False
        assert mitogen.core.set_blocking(r, True) & os.O_NONBLOCK
        assert mitogen.core.get_blocking(r) is True
    finally:
        os.close(r)
        os.close(w)


def test_import_module_returns_the_named_module():
    assert mitogen.core.import_module('logging.handlers') is \
        sys.modules['logging.handlers']


def test_import_module_raises_import_error_for_a_missing_module():
    with pytest.raises(ImportError):
        mitogen.core.import_module('mitogen_compat_missing_module')


def test_profile_hook_just_calls_the_function_by_default(tmp_path,
                                                         monkeypatch):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    result = mitogen.core._profile_hook('plain', lambda a, b: a + b, 1, 2)
    assert result == 3
    assert mitogen.core._profile_hook.__name__ == '_profile_hook'
    assert os.listdir(str(tmp_path)) == []


@pytest.fixture
def profiling(tmp_path, monkeypatch):
    """Profiling enabled for the test only, writing into tmp_path."""
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    monkeypatch.setattr(mitogen.core, '_profile_hook',
                        mitogen.core._profile_hook)
    mitogen.core.enable_profiling()
    return tmp_path


def test_enable_profiling_dumps_stats_named_after_the_call_and_pid(
        profiling):
    import pstats
    result = mitogen.core._profile_hook('Strategy', sorted, [3, 1, 2])
    assert result == [1, 2, 3]
    # ansible_mitogen tells whether profiling is on by the hook's name.
    assert mitogen.core._profile_hook.__name__ != '_profile_hook'
    path = profiling / ('mitogen.%d.Strategy.pstat' % (os.getpid(),))
    stats = pstats.Stats(str(path))
    assert any(func[2] == "<built-in method builtins.sorted>"
               for func in stats.stats)


def test_enable_profiling_profiles_brokers_started_afterwards(profiling):
    broker = mitogen.master.Broker()
    broker.shutdown()
    broker.join()
    assert os.path.exists(str(
        profiling / ('mitogen.%d.mitogen.broker.pstat' % (os.getpid(),))))


def test_profiling_raises_what_the_function_raises(profiling):
    def fail():
        raise ValueError('boom')
    with pytest.raises(ValueError):
        mitogen.core._profile_hook('fails', fail)
    assert os.listdir(str(profiling)) == [
        'mitogen.%d.fails.pstat' % (os.getpid(),)]


def test_profiling_works_in_a_child_of_every_python(child):
    result, path, names = call(child, funcs.profile_to_stats, 'child')
    assert result == [1, 2, 3]
    assert path.endswith('.child.pstat')
    assert any('sorted' in name for name in names)


def test_core_imports_no_profiler_until_profiling_is_enabled():
    code = ('import sys, mitogen.core; '
            'mitogen.core._profile_hook("x", len, "ab"); '
            'print(sorted(m for m in ("cProfile", "pstats", "profile", '
            '"tempfile") if m in sys.modules))')
    out = subprocess.check_output([VENV_PYTHON, '-S', '-c', code],
                                  env=dict(os.environ, PYTHONPATH=os.pathsep
                                           .join(sys.path)))
    assert out.strip() == b'[]'


def test_latch_on_fork_is_safe_at_any_time_and_latches_keep_working():
    latch = mitogen.core.Latch()
    mitogen.core.Latch._on_fork()
    mitogen.core.Latch._on_fork()
    latch.put(1)
    assert latch.get(timeout=1) == 1
    fresh = mitogen.core.Latch()
    fresh.put(2)
    assert fresh.get(timeout=1) == 2


# ---------------------------------------------------------------------------
# mitogen.fork
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('status, code', [
    (0, 0), (3 << 8, 3), (255 << 8, 255),
    (signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, -signal.SIGTERM),
])
def test_convert_exit_status_follows_subprocess(status, code):
    assert mitogen.fork._convert_exit_status(status) == code


def test_convert_exit_status_of_real_processes_on_every_python(child):
    assert call(child, funcs.fork_and_convert, 'exit3') == 3
    assert call(child, funcs.fork_and_convert, 'kill') == -signal.SIGKILL


def test_on_fork_in_the_same_process_keeps_its_locks():
    lock = logging._lock
    core_lock = mitogen.parent._core_lock
    mitogen.fork.on_fork()
    mitogen.fork.on_fork()
    assert logging._lock is lock
    assert mitogen.parent._core_lock is core_lock


def _in_fork(body):
    """Run `body()` in a fork of this process; return the bytes it
    returns."""
    r, w = os.pipe()
    pid = mitogen.fork._fork()
    if pid == 0:
        status = 1
        try:
            os.close(r)
            os.write(w, body())
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    try:
        chunks = []
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert mitogen.fork._convert_exit_status(status) == 0
    return b''.join(chunks)


def test_forks_draw_different_openssl_random_bytes():
    # on_fork() leaves OpenSSL 1.1.1+ to reseed itself after a fork: two
    # forks and their parent must still draw different bytes.
    ssl = pytest.importorskip('ssl')

    def body():
        mitogen.fork.on_fork()
        return ssl.RAND_bytes(16)
    ssl.RAND_bytes(16)
    first = _in_fork(body)
    second = _in_fork(body)
    mine = ssl.RAND_bytes(16)
    assert len(set([first, second, mine])) == 3


def test_on_fork_in_a_fork_reseeds_random_and_replaces_locks():
    import mitogen.service
    state = random.getstate()
    locks = (logging._lock, mitogen.parent._core_lock,
             mitogen.service._pool_lock)

    def body():
        mitogen.fork.on_fork()
        now = (logging._lock, mitogen.parent._core_lock,
               mitogen.service._pool_lock)
        return repr((random.random(),
                     [a is b for a, b in zip(locks, now)])).encode()
    try:
        random.seed(1234)
        got = _in_fork(body)
        expected = random.random()
    finally:
        random.setstate(state)
    value, same_locks = eval(got)
    assert value != expected
    assert same_locks == [False, False, False]


def test_on_fork_is_safe_twice_on_every_python(child):
    assert call(child, funcs.on_fork_twice) is True


# ---------------------------------------------------------------------------
# mitogen.parent
# ---------------------------------------------------------------------------

class _Owner(object):
    def method(self, x):
        return x

    @classmethod
    def klass(cls):
        return cls


def test_call_spec_renders_module_function_and_arguments():
    spec = mitogen.parent.CallSpec(os.path.join, ('a', 2), {'kw': b'v'})
    assert str(spec) == "posixpath.join('a', 2, kw=b'v')"
    assert repr(spec) == str(spec)


def test_call_spec_names_the_class_of_methods():
    assert str(mitogen.parent.CallSpec(_Owner.klass, (), {})) == \
        'test_compat._Owner.klass()'
    assert str(mitogen.parent.CallSpec(_Owner().method, (1,), {})) == \
        'test_compat._Owner.method(1)'


def test_call_spec_hides_secrets():
    spec = mitogen.parent.CallSpec(len, (mitogen.core.Secret(u'pw'),), {})
    assert 'pw' not in str(spec)


def test_call_spec_on_every_python(child, interpreter):
    text = "u'a'" if interpreter.version == '2.7' else "'a'"
    assert call(child, funcs.call_spec_text) == \
        'posixpath.join(%s, b=1)' % (text,)


@pytest.mark.parametrize('n, text', [
    (0, 'exited with return code 0'),
    (1, 'exited with return code 1'),
    (-9, 'exited due to signal 9 (SIGKILL)'),
    (-15, 'exited due to signal 15 (SIGTERM)'),
    (-6, 'exited due to signal 6 (SIGABRT)'),
])
def test_returncode_to_str(n, text):
    assert mitogen.parent.returncode_to_str(n) == text


def test_returncode_to_str_on_every_python(child):
    assert call(child, funcs.returncode_texts) == [
        'exited with return code 0', 'exited with return code 1',
        'exited due to signal 9 (SIGKILL)',
        'exited due to signal 15 (SIGTERM)']


def test_poller_lightweight_is_the_poll_poller():
    assert mitogen.parent.POLLER_LIGHTWEIGHT is mitogen.core.Poller


def test_poller_classes_say_whether_the_platform_supports_them():
    import select
    assert mitogen.core.Poller.SUPPORTED is hasattr(select, 'poll')
    assert mitogen.core.EpollPoller.SUPPORTED is hasattr(select, 'epoll')


def test_broker_defaults_to_the_first_supported_poller(monkeypatch):
    monkeypatch.setattr(mitogen.core.EpollPoller, 'SUPPORTED', False)
    broker = mitogen.master.Broker()
    try:
        assert type(broker.poller) is mitogen.core.Poller
    finally:
        broker.shutdown()
        broker.join()


class _LightBroker(mitogen.master.Broker):
    poller_class = mitogen.parent.POLLER_LIGHTWEIGHT


def test_broker_subclass_uses_its_poller_class_for_a_whole_tree():
    with mitogen.master.Router(broker=_LightBroker()) as router:
        assert type(router.broker.poller) is mitogen.core.Poller
        child = router.local(python_path=sys.executable)
        grandchild = router.local(via=child, python_path=sys.executable)
        assert call(grandchild, os.getpid) != os.getpid()
        # Larger than any socket buffer: written in parts, on POLLOUT.
        data = os.urandom(8 * 1048576)
        assert call(child, funcs.echo_length, mitogen.core.Blob(data)) == \
            len(data)


def _write_pid_to(path):
    def hook():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(fd, ('%d\n' % (os.getpid(),)).encode())
        os.close(fd)
    return hook


def test_preexec_hook_is_none_by_default():
    assert mitogen.parent._preexec_hook is None


def test_preexec_hook_runs_in_every_spawned_child(router, tmp_path,
                                                  monkeypatch):
    marks = tmp_path / 'marks'
    monkeypatch.setattr(mitogen.parent, '_preexec_hook',
                        _write_pid_to(str(marks)))
    context = router.local(python_path=sys.executable)
    try:
        pid = call(context, os.getpid)
    finally:
        context.shutdown(wait=True)
    assert marks.read_text().split() == [str(pid)]


def test_popen_runs_the_given_preexec_fn_then_the_hook(tmp_path,
                                                       monkeypatch):
    order = tmp_path / 'order'

    def first():
        with open(str(order), 'a') as f:
            f.write('preexec_fn\n')

    def hook():
        with open(str(order), 'a') as f:
            f.write('hook\n')
    monkeypatch.setattr(mitogen.parent, '_preexec_hook', hook)
    proc = mitogen.parent.popen(args=['true'], preexec_fn=first,
                                close_fds=True)
    assert proc.wait() == 0
    assert order.read_text().split() == ['preexec_fn', 'hook']


def test_popen_without_hook_is_subprocess_popen():
    proc = mitogen.parent.popen(args=[sys.executable, '-c', 'print(6 * 7)'],
                                stdout=subprocess.PIPE)
    out, _ = proc.communicate()
    assert isinstance(proc, subprocess.Popen)
    assert out.strip() == b'42'


# ---------------------------------------------------------------------------
# mitogen.utils
# ---------------------------------------------------------------------------

def test_passthrough_holds_the_types_cast_keeps():
    for t in (int, float, bool, type(None), mitogen.core.Context,
              mitogen.core.CallError, mitogen.core.Blob,
              mitogen.core.Secret):
        assert t in mitogen.utils.PASSTHROUGH


def test_cast_passes_passthrough_values_through_unchanged(router):
    values = [mitogen.core.Secret(u's'), mitogen.core.Blob(b'b'),
              mitogen.core.CallError('e'), router.myself(), 1, 2.5, None,
              True]
    result = mitogen.utils.cast(values)
    assert all(a is b for a, b in zip(result, values))


@pytest.mark.parametrize('name, levels', [
    ('DEBUG', (logging.DEBUG, logging.DEBUG, logging.INFO)),
    ('debug', (logging.DEBUG, logging.DEBUG, logging.INFO)),
    ('INFO', (logging.INFO, logging.INFO, logging.INFO)),
    ('WARNING', (logging.WARNING, logging.WARNING, logging.WARNING)),
    ('ERROR', (logging.ERROR, logging.ERROR, logging.ERROR)),
    ('IO', (logging.DEBUG, logging.DEBUG, logging.DEBUG)),
    ('NONSENSE', (logging.WARNING, logging.WARNING, logging.WARNING)),
])
def test_levelname_to_levels(name, levels):
    assert mitogen.utils._levelname_to_levels(name) == levels


def test_levelname_to_levels_uses_the_default_for_unknown_names():
    assert mitogen.utils._levelname_to_levels(
        'bogus', default=logging.ERROR) == (logging.ERROR,) * 3


def test_levelname_to_levels_pairs_with_loggers_as_ansible_zips_them():
    levels = mitogen.utils._levelname_to_levels('IO')
    assert len(levels) == len(mitogen.core.LOGGERS) == 3


def test_levelname_to_levels_on_every_python(child):
    assert call(child, funcs.levels_for, 'IO') == [logging.DEBUG] * 3
    assert call(child, funcs.levels_for, 'INFO') == [logging.INFO] * 3


def test_setup_gil_raises_the_switch_interval():
    before = sys.getswitchinterval()
    try:
        mitogen.utils.setup_gil()
        assert sys.getswitchinterval() > before
    finally:
        sys.setswitchinterval(before)


def test_log_get_formatter_is_a_logging_formatter():
    assert isinstance(mitogen.utils.log_get_formatter(), logging.Formatter)


# ---------------------------------------------------------------------------
# mitogen.debug
# ---------------------------------------------------------------------------

def test_format_stacks_names_every_thread_and_its_frames():
    stop = threading.Event()

    def parked_in_a_recognisable_function():
        stop.wait(10)
    t = threading.Thread(target=parked_in_a_recognisable_function,
                         name='parked-thread')
    t.start()
    try:
        text = mitogen.debug.format_stacks()
    finally:
        stop.set()
        t.join()
    assert "Thread 'parked-thread'" in text
    assert 'parked_in_a_recognisable_function' in text
    assert 'test_format_stacks_names_every_thread_and_its_frames' in text


def test_dump_to_logger_logs_stacks_until_stopped(caplog):
    caplog.set_level(logging.INFO, logger='mitogen.debug')
    assert mitogen.debug.dump_to_logger(secs=0.05) is None
    try:
        wait_until(lambda: len([r for r in caplog.records
                                if r.name == 'mitogen.debug']) >= 2)
    finally:
        mitogen.debug.stop_dumping()
    assert not [t for t in threading.enumerate()
                if t.name == 'mitogen.debug.dump_to_logger']
    record = [r for r in caplog.records if r.name == 'mitogen.debug'][0]
    assert 'MainThread' in record.getMessage()


def test_dump_to_logger_in_a_child_logs_through_the_master(child, caplog):
    caplog.set_level(logging.INFO)
    call(child, mitogen.debug.dump_to_logger, 0.05)
    try:
        wait_until(lambda: 'stacks of every thread' in caplog.text, 20)
    finally:
        call(child, mitogen.debug.stop_dumping)
    assert 'dump_to_logger' not in call(child, funcs.stacks_of_this_process)


# ---------------------------------------------------------------------------
# mitogen.imports
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('source, expected', [
    ('import a', [(0, 'a', ())]),
    ('import a.b as c, d', [(0, 'a.b', ()), (0, 'd', ())]),
    ('from a.b import c, d', [(0, 'a.b', ('c', 'd'))]),
    ('from . import x', [(1, '', ('x',))]),
    ('from ..p.q import r', [(2, 'p.q', ('r',))]),
    ('from os import *', [(0, 'os', ('*',))]),
    ('try:\n    import a\nexcept ImportError:\n    a = None\n',
     [(0, 'a', ())]),
    ('if x:\n    from p import q\nelse:\n    import r\n',
     [(0, 'p', ('q',)), (0, 'r', ())]),
    # Local scopes are left out, as Mitogen documents.
    ('def f():\n    import inner\n', []),
    ('class C:\n    import z\n    def m(self):\n        from x import y\n',
     []),
    ('import a\ndef f():\n    import b\nimport c\n',
     [(0, 'a', ()), (0, 'c', ())]),
])
def test_codeobj_imports(source, expected):
    co = compile(source, '<test>', 'exec')
    assert list(mitogen.imports.codeobj_imports(co)) == expected


def test_codeobj_imports_feeds_ansible_scan_fromlist():
    # ansible_mitogen.module_finder.scan_fromlist's doctest.
    src = 'import a; import b.c; from d.e import f; from g import h, i\n'
    co = compile(src, '<str>', 'exec')
    found = []
    for level, modname, fromlist in mitogen.imports.codeobj_imports(co):
        for name in fromlist:
            found.append((level, '%s.%s' % (modname, name)))
        if not fromlist:
            found.append((level, modname))
    assert found == [(0, 'a'), (0, 'b.c'), (0, 'd.e.f'), (0, 'g.h'),
                     (0, 'g.i')]


@pytest.mark.parametrize('count', [300, 70000])
def test_codeobj_imports_with_extended_args(import_scans, interpreter,
                                            count):
    # 300 constants and names need one EXTENDED_ARG (wordcode), 70000 two
    # (and one of Python 2's 16-bit ones).
    assert scan_result(import_scans, interpreter, count) is None


def test_codeobj_imports_matches_ast_on_the_stdlib_of_every_python(
        import_scans, interpreter):
    files, imports, relative, mismatches = scan_result(
        import_scans, interpreter, 'stdlib')
    assert mismatches == []
    assert files > 100 and imports > 1000 and relative > 5


def test_codeobj_imports_gives_py2_implicit_level(contexts):
    if '2.7' not in contexts:
        pytest.skip('python2.7 not installed on this machine')
    got = call(contexts['2.7'], funcs.imports_of,
               'import a\nfrom b import c\nfrom . import d\n')
    assert got == [[-1, 'a', []], [-1, 'b', ['c']], [1, '', ['d']]]
