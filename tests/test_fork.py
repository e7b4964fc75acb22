"""
Specification of ``router.fork()`` (:mod:`mitogen.fork`): a child context
made by forking the master, or with ``via=`` another context. The fork
keeps what its parent imported, runs ``on_fork`` and ``on_start`` in the
child, has random state of its own, holds none of its parent's descriptors
or log handlers, and ends like any other child.

The functions forks run live in :mod:`support.fork_helpers`.
"""
import logging
import os
import random
import select
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

import interpreters
import leakcheck
import mitogen.core
import mitogen.fork
import mitogen.master
import mitogen.parent
from support import fork_helpers as helpers
from waiting import REPLY_TIMEOUT, call, wait_for

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith('linux'),
    reason='router.fork() is specified and tested on Linux only')

#: Seconds within which a process must be gone.
PROMPTLY = 10.0

#: Child versions forks of a child are tested on.
SPREAD = ['2.7', '3.6', '3.13']

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(ROOT, '.venv', 'bin', 'python')


@pytest.fixture
def log_router(caplog):
    """A router whose forks start after caplog captures INFO (forks take
    their log level from the master's when they start)."""
    caplog.set_level(logging.INFO)
    with mitogen.master.Router() as router:
        yield router


def spread(versions=SPREAD):
    return pytest.mark.parametrize(
        'interpreter', interpreters.params(versions), indirect=True)


def is_gone(pid):
    """True once `pid` has exited and was reaped."""
    return leakcheck.process_status(pid) is None


@pytest.fixture
def master_random_state():
    """Restore the master's random state after a test that seeds it."""
    state = random.getstate()
    yield
    random.setstate(state)


# ---------------------------------------------------------------------------
# Forking the master
# ---------------------------------------------------------------------------

def test_first_call_runs_in_a_new_process_whose_parent_is_the_master(router):
    fork = router.fork()
    pid, ppid = call(fork, helpers.pids)
    assert pid != os.getpid()
    assert ppid == os.getpid()


def test_fork_is_named_fork_dot_pid(router):
    fork = router.fork()
    pid, _ = call(fork, helpers.pids)
    assert fork.name == 'fork.%d' % (pid,)


def test_name_option_names_the_fork(router):
    assert router.fork(name='worker').name == 'worker'


def test_fork_package_globals_describe_the_fork(router):
    fork = router.fork()
    assert call(fork, helpers.package_globals) == (
        False, fork.context_id, 0, [0])
    assert helpers.package_globals() == (True, 0, None, [])


def test_module_imported_in_the_master_costs_no_module_request(router):
    before = router.responder.get_module_count
    fork = router.fork()
    assert call(fork, helpers.import_counting_requests,
                'support.fork_helpers') == (True, [])
    assert call(fork, helpers.echo, 'ok') == 'ok'
    assert router.responder.get_module_count == before


def test_on_fork_runs_in_the_fork_before_its_context_starts(router):
    fork = router.fork(on_fork=helpers.record_on_fork)
    pid, _ = call(fork, helpers.pids)
    # Still the master's package globals: the context had not started.
    assert call(fork, helpers.events) == [('on_fork', pid, True)]
    assert helpers.EVENTS == []


def test_on_start_receives_the_running_context_before_the_first_call(
        router):
    fork = router.fork(on_start=helpers.record_on_start)
    events = call(fork, helpers.events)
    pid, _ = call(fork, helpers.pids)
    assert events == [('on_start', pid, True, fork.context_id)]
    assert helpers.EVENTS == []


def test_on_fork_runs_before_on_start(router):
    fork = router.fork(on_fork=helpers.record_on_fork,
                       on_start=helpers.record_on_start)
    assert [e[0] for e in call(fork, helpers.events)] == ['on_fork',
                                                          'on_start']


def test_failing_on_fork_raises_eof_error_carrying_its_traceback(router):
    with pytest.raises(mitogen.parent.EofError) as info:
        router.fork(on_fork=helpers.fail_on_fork)
    assert 'on_fork failed on purpose' in str(info.value)


def test_hanging_on_fork_times_out_without_leaving_a_process(router):
    start = time.monotonic()
    with pytest.raises(mitogen.core.TimeoutError):
        router.fork(on_fork=helpers.hang_on_fork, connect_timeout=1.0)
    assert time.monotonic() - start < PROMPTLY


def test_hooks_may_be_any_callable_when_forking_the_master(router,
                                                          tmp_path):
    def write(name, text):
        with open(str(tmp_path / name), 'w') as fp:
            fp.write(text)

    fork = router.fork(
        on_fork=lambda: write('on_fork', str(os.getpid())),
        on_start=lambda econtext: write('on_start',
                                        str(econtext.router.context_id)))
    pid, _ = call(fork, helpers.pids)
    assert (tmp_path / 'on_fork').read_text() == str(pid)
    assert (tmp_path / 'on_start').read_text() == str(fork.context_id)


def test_failing_on_start_ends_the_fork_and_logs_why(log_router, caplog):
    fork = log_router.fork(on_start=helpers.fail_on_start)
    with pytest.raises(mitogen.core.ChannelError):
        call(fork, helpers.pids)
    records = wait_for(lambda: [
        r for r in caplog.records
        if r.name == 'mitogen.ctx.%s' % (fork.name,)
        and 'on_start failed on purpose' in r.getMessage()])
    assert records[0].levelno == logging.ERROR


def test_python_path_is_refused(router):
    with pytest.raises(TypeError):
        router.fork(python_path=sys.executable)


def test_fork_random_state_differs_from_the_masters(router,
                                                    master_random_state):
    expected = helpers.seeded_value(1234)
    random.seed(1234)
    fork = router.fork()
    # Positive control: the master's own state was the seeded one.
    assert random.random() == expected
    assert call(fork, helpers.random_value) != expected


def test_two_forks_have_different_random_states(router):
    one = router.fork()
    two = router.fork()
    assert call(one, helpers.random_value) != call(two, helpers.random_value)


def test_shutdown_wait_ends_the_fork(router):
    fork = router.fork()
    pid, _ = call(fork, helpers.pids)
    fork.shutdown(wait=True)
    assert is_gone(pid)


def test_router_exit_leaves_no_fork_process():
    with mitogen.master.Router() as router:
        pids = [call(router.fork(), helpers.pids)[0] for _ in range(2)]
    assert [pid for pid in pids if not is_gone(pid)] == []


def test_fork_log_records_reach_the_master_on_the_context_logger(
        log_router, caplog):
    fork = log_router.fork()
    call(fork, helpers.log_on, 'app', logging.WARNING, 'from the fork')
    records = wait_for(lambda: [
        r for r in caplog.records
        if r.name == 'mitogen.ctx.%s' % (fork.name,)
        and getattr(r, 'mitogen_name', None) == 'app'])
    assert [r.getMessage() for r in records] == ['from the fork']


def test_fork_print_reaches_the_master_as_a_stdout_record(log_router,
                                                          caplog):
    fork = log_router.fork()
    call(fork, helpers.print_line, 'printed by the fork')
    records = wait_for(lambda: [
        r for r in caplog.records
        if r.name == 'mitogen.ctx.%s' % (fork.name,)
        and getattr(r, 'mitogen_name', None) == 'stdout'])
    assert [r.getMessage() for r in records] == ['printed by the fork']


def test_fork_does_not_write_through_the_masters_log_handlers(
        log_router, caplog, tmp_path):
    path = tmp_path / 'master.log'
    logger = logging.getLogger('fork_test_private')
    handler = logging.FileHandler(str(path))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        fork = log_router.fork()
        call(fork, helpers.log_on, 'fork_test_private', logging.WARNING,
             'from the fork')
        # Positive control: the record did reach the master.
        wait_for(lambda: [r for r in caplog.records
                          if r.name == 'mitogen.ctx.%s' % (fork.name,)
                          and r.getMessage() == 'from the fork'])
        logger.warning('from the master')
        handler.flush()
        assert path.read_text() == 'from the master\n'
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.propagate = True


def test_fork_does_not_keep_the_masters_descriptors_open(router):
    rfd, wfd = os.pipe()
    try:
        fork = router.fork()
        call(fork, helpers.echo, None)
        os.close(wfd)
        wfd = None
        # Had the fork kept its copy of the write end, no end of file.
        readable, _, _ = select.select([rfd], [], [], PROMPTLY)
        assert readable and os.read(rfd, 1) == b''
    finally:
        os.close(rfd)
        if wfd is not None:
            os.close(wfd)


def test_twenty_forks_while_other_threads_call_another_child(router):
    other = router.local()
    stop = threading.Event()
    errors = []
    done = []

    def hammer(n):
        log = logging.getLogger('fork_test_hammer')
        try:
            i = 0
            while not stop.is_set():
                assert call(other, helpers.echo, (n, i)) == (n, i)
                log.info('thread %d call %d', n, i)
                i += 1
            done.append(i)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(20):
            fork = router.fork(connect_timeout=REPLY_TIMEOUT)
            pid, ppid = call(fork, helpers.pids)
            assert ppid == os.getpid()
            fork.shutdown(wait=True)
            assert is_gone(pid)
    finally:
        stop.set()
        for t in threads:
            t.join(REPLY_TIMEOUT)
    assert errors == []
    assert len(done) == 3 and min(done) > 0


def test_forks_started_from_several_threads_at_once_all_work(router):
    results = []
    errors = []

    def fork_some():
        try:
            for _ in range(3):
                fork = router.fork(connect_timeout=REPLY_TIMEOUT)
                results.append(call(fork, helpers.pids))
                fork.shutdown(wait=True)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=fork_some) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(REPLY_TIMEOUT * 3)
    assert errors == []
    assert len(set(pid for pid, _ in results)) == 12
    assert set(ppid for _, ppid in results) == {os.getpid()}


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason='only Python 3.12+ warns about forking a '
                           'process that has threads')
def test_forking_with_the_broker_running_emits_no_deprecation_warning(
        router):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        call(router.fork(), helpers.echo, None)
    assert [str(w.message) for w in caught
            if issubclass(w.category, DeprecationWarning)] == []


def test_a_fork_can_start_a_child_of_its_own(router):
    fork = router.fork()
    fork_pid, _ = call(fork, helpers.pids)
    child = router.local(via=fork)
    pid, ppid = call(child, helpers.pids)
    assert ppid == fork_pid
    assert child.name == '%s.local.%d' % (fork.name, pid)


def test_functions_of_the_main_script_run_in_the_fork_as_inherited(
        tmp_path):
    script = tmp_path / 'prog.py'
    script.write_text(textwrap.dedent('''
        import os
        import sys

        import mitogen

        STATE = 'as imported'


        def state():
            return os.getpid(), STATE


        @mitogen.main()
        def main(router):
            global STATE
            STATE = 'changed by the master'
            fork = router.fork()
            before = router.responder.get_module_count
            pid, seen = fork.call(state)
            sys.stdout.write('%s|%s|%s\\n' % (
                pid != os.getpid(), seen,
                router.responder.get_module_count - before))
    '''))
    proc = subprocess.run(
        [VENV_PYTHON, str(script)], cwd=str(tmp_path),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split('|') == ['True',
                                               'changed by the master',
                                               '0\n']


# ---------------------------------------------------------------------------
# Forking a child (via=)
# ---------------------------------------------------------------------------

@spread()
def test_fork_via_a_child_is_that_childs_child(router, interpreter):
    child = router.local(python_path=interpreter.path)
    child_pid, _ = call(child, helpers.pids)
    fork = router.fork(via=child)
    pid, ppid = call(fork, helpers.pids)
    assert ppid == child_pid
    assert fork.name == '%s.fork.%d' % (child.name, pid)
    assert call(fork, helpers.package_globals) == (
        False, fork.context_id, child.context_id, [child.context_id, 0])


@spread()
def test_fork_via_a_child_runs_its_hooks_in_the_fork(router, interpreter):
    child = router.local(python_path=interpreter.path)
    fork = router.fork(via=child, on_fork=helpers.record_on_fork,
                       on_start=helpers.record_on_start)
    pid, _ = call(fork, helpers.pids)
    assert call(fork, helpers.events) == [
        ('on_fork', pid, False),
        ('on_start', pid, True, fork.context_id),
    ]
    assert call(child, helpers.events) == []


@spread()
def test_fork_via_a_child_reseeds_random(router, interpreter):
    child = router.local(python_path=interpreter.path)
    expected = call(child, helpers.seeded_value, 1234)
    call(child, helpers.seed_random, 1234)
    fork = router.fork(via=child)
    # Positive control: the child's own state was the seeded one.
    assert call(child, helpers.random_value) == expected
    assert call(fork, helpers.random_value) != expected


@spread()
def test_fork_via_a_child_shares_that_childs_importer(router, interpreter):
    child = router.local(python_path=interpreter.path)
    call(child, helpers.import_and_forget, 'support.fork_lazy')
    fork = router.fork(via=child)
    before = router.responder.get_module_count
    assert call(fork, helpers.import_counting_requests,
                'support.fork_lazy') == (False, [])
    assert router.responder.get_module_count == before


@spread()
def test_modules_a_child_loaded_are_served_by_its_forks_own_importer(
        router, interpreter):
    child = router.local(python_path=interpreter.path)
    fork = router.fork(via=child)
    served, stale = call(fork, helpers.module_loaders)
    assert stale == []
    # support and support.fork_helpers at least, loaded by the child.
    assert served >= 2


@pytest.mark.parametrize('interpreter', interpreters.params(['3.13']),
                         indirect=True)
def test_fork_via_a_child_reads_package_data_of_modules_it_inherited(
        router, interpreter):
    child = router.local(python_path=interpreter.path)
    assert call(child, helpers.read_resource, 'support',
                'fork_data.txt') == b'data for forks\n'
    fork = router.fork(via=child)
    assert call(fork, helpers.read_resource, 'support',
                'fork_data.txt') == b'data for forks\n'


@spread()
def test_fork_of_a_fork_of_a_child(router, interpreter):
    child = router.local(python_path=interpreter.path)
    first = router.fork(via=child)
    first_pid, _ = call(first, helpers.pids)
    second = router.fork(via=first)
    pid, ppid = call(second, helpers.pids)
    assert ppid == first_pid
    second.shutdown(wait=True)
    assert call(first, helpers.echo, 'still here') == 'still here'
