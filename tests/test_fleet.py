"""
:mod:`mitogen.fleet` with local children: per-host results in order,
failures kept to their host, the time limit, the concurrency limit, shared
hops, events and the progress line, the threaded and asyncio entry points.
The hundred-host run over ssh is in test_fleet_scale.py.
"""
import asyncio
import io
import os
import subprocess
import sys
import time

import pytest

import aioloops
import mitogen.aio
import mitogen.core
import mitogen.fleet
import mitogen.master
import waiting
from support.fleet_funcs import pid_sleeping_if_named, work

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LOCAL = {'method': 'local'}
MISSING_PYTHON = {'method': 'local', 'python_path': ['/nonexistent/python']}


def run(targets, fn=work, args=(0,), **options):
    options.setdefault('progress', False)
    options.setdefault('timeout', 30)
    return mitogen.fleet.run(targets, fn, args=args, **options)


def test_results_come_in_the_order_of_the_targets():
    results = run([LOCAL, MISSING_PYTHON, LOCAL])
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.ok for r in results] == [True, False, True]
    assert results[0].value != results[2].value
    assert results[0].name == 'local.%d' % (results[0].value,)
    assert results[1].target is MISSING_PYTHON


def test_a_host_that_cannot_start_fails_alone():
    results = run([MISSING_PYTHON, LOCAL])
    failed, good = results
    assert isinstance(failed.error, mitogen.core.StreamError)
    assert 'could not start /nonexistent/python' in str(failed.error)
    assert failed.phase == 'connect'
    assert failed.name == 'local'
    assert good.ok


def test_an_exception_in_the_function_is_a_call_error_of_its_host():
    results = run([LOCAL, LOCAL], kwargs={'fail': True}, args=(0,))
    for result in results:
        assert isinstance(result.error, mitogen.core.CallError)
        assert 'failed on purpose' in str(result.error)
        assert result.phase == 'call'
        with pytest.raises(mitogen.core.CallError):
            result.result()


def test_a_slow_host_times_out_without_holding_up_the_others():
    started = time.monotonic()
    results = run([{'method': 'local', 'name': 'slow'}, LOCAL, LOCAL],
                  fn=pid_sleeping_if_named, args=('slow', 60), timeout=2)
    elapsed = time.monotonic() - started
    slow, fast1, fast2 = results
    assert fast1.ok and fast2.ok
    assert fast1.elapsed < 2 and fast2.elapsed < 2
    assert isinstance(slow.error, mitogen.core.TimeoutError)
    assert str(slow.error) == 'slow: no result within 2.0 s (while calling)'
    assert 1.9 < slow.elapsed < 5
    assert elapsed < 15


def test_a_host_out_of_time_is_disconnected_ending_its_function():
    with mitogen.master.Router() as router:
        results = run([{'method': 'local', 'name': 'slow'}], router=router,
                      fn=pid_sleeping_if_named, args=('slow', 60), timeout=1)
        context = results[0].context.context
        assert waiting.wait_for(
            lambda: router.stream_by_id(context.context_id) is None)


def test_no_more_hosts_than_the_concurrency_limit_at_once():
    running = []
    most = []

    def on_event(event):
        if event.kind == 'start':
            running.append(event.result.index)
        elif event.kind in ('done', 'failed'):
            running.remove(event.result.index)
        most.append(len(running))
    results = run([LOCAL] * 6, args=(0.2,), concurrency=2,
                  on_event=on_event)
    assert all(r.ok for r in results)
    assert max(most) == 2


def test_events_of_each_host_in_order():
    events = []
    run([LOCAL, MISSING_PYTHON], on_event=events.append)
    kinds = {0: [], 1: []}
    for event in events:
        assert event.total == 2
        kinds[event.result.index].append(event.kind)
    assert kinds == {0: ['start', 'connected', 'done'],
                     1: ['start', 'failed']}


def test_targets_through_one_hop_share_it():
    hop = {'method': 'local', 'name': 'hop'}
    results = run([{'method': 'local', 'via': hop},
                   [hop, LOCAL],
                   [hop, MISSING_PYTHON]], fn=os.getppid, args=())
    first, second, failed = results
    assert first.ok and second.ok
    assert first.value == second.value        # the same middle process
    assert first.name.startswith('hop.local.')
    assert first.name != second.name          # each target its own context
    assert isinstance(failed.error, mitogen.core.StreamError)


def test_a_failed_hop_fails_every_target_behind_it():
    results = run([[MISSING_PYTHON, LOCAL], [MISSING_PYTHON, LOCAL], LOCAL])
    for result in results[:2]:
        assert 'could not start /nonexistent/python' in str(result.error)
    assert results[2].ok


def test_a_failing_event_callback_is_logged_and_the_run_goes_on(caplog):
    def on_event(event):
        raise RuntimeError('callback bug')
    results = run([LOCAL, LOCAL], on_event=on_event)
    assert all(r.ok for r in results)
    assert 'callback bug' in caplog.text


def test_a_target_is_a_dict_with_a_method():
    with pytest.raises(ValueError, match='"method"'):
        run([{'hostname': 'web1'}])


def test_describe_names_each_hop():
    assert mitogen.fleet.describe(
        [{'method': 'ssh', 'hostname': 'bastion'},
         {'method': 'sudo', 'username': 'root'}, {'method': 'local'}]) == \
        'ssh:bastion -> sudo:root -> local'


def test_own_router_ends_every_context():
    results = run([LOCAL, LOCAL])
    pids = [r.value for r in results]
    assert all(r.context is None for r in results)
    assert waiting.wait_for(lambda: not [p for p in pids
                                         if os.path.exists('/proc/%d' % p)])


def test_given_router_keeps_the_contexts_connected():
    with mitogen.master.Router() as router:
        results = run([LOCAL, LOCAL], router=router)
        for result in results:
            assert result.context.context.call(os.getpid) == result.value


@pytest.mark.parametrize('kind', aioloops.params())
def test_arun_on_an_aio_router(kind):
    async def main():
        async with mitogen.aio.Router() as router:
            results = await mitogen.fleet.arun(
                [LOCAL, LOCAL], os.getpid, router=router, progress=False)
            return [await r.context.call(os.getpid) == r.value
                    for r in results]
    assert aioloops.run(kind, main()) == [True, True]


def test_run_inside_a_running_loop_says_to_use_arun():
    async def main():
        with pytest.raises(RuntimeError, match='running event loop'):
            mitogen.fleet.run([LOCAL], os.getpid)
    asyncio.run(main())


def test_progress_line_counts_hosts():
    out = io.StringIO()
    run([LOCAL, MISSING_PYTHON], on_event=mitogen.fleet.ProgressLine(out))
    updates = out.getvalue().split('\r')[1:]
    assert len(updates) == 5                  # one per event
    assert updates[0].startswith('fleet: 0/2 done, 0 failed, 1 running, ')
    assert updates[-1].startswith('fleet: 2/2 done, 1 failed, 0 running, ')
    assert updates[-1].endswith(' s\x1b[K\n')


def test_progress_line_only_on_a_terminal(capsys):
    run([LOCAL], progress=None)
    assert capsys.readouterr().err == ''


def test_progress_line_when_stderr_is_a_tty():
    out = subprocess.check_output(
        ['script', '-qec', '%s -c "import sys; sys.path.insert(0, %r); '
         'import support.fleet_funcs as f, mitogen.fleet; '
         'mitogen.fleet.run([{\'method\': \'local\'}], f.work, args=(0,))"'
         % (sys.executable, os.path.join(ROOT, 'tests')), '/dev/null'],
        stdin=subprocess.DEVNULL, timeout=60).decode()
    assert 'fleet: 1/1 done, 0 failed, 0 running' in out


def test_example_in_the_docs_runs():
    out = subprocess.check_output(
        [sys.executable, os.path.join(ROOT, 'examples', 'fleet_local.py')],
        stderr=subprocess.STDOUT, timeout=120).decode()
    assert 'ok   local.' in out, out
    assert 'FAIL local: could not start' in out, out
    assert '5 of 6 hosts answered' in out, out
