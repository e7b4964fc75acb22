"""
Specification of how contexts end: gracefully, while user code is stuck,
when the master is killed, and when a child dies with calls pending.  None
of these may hang or leave a process behind.

Every wait is bounded: results are fetched with ``get(timeout=...)``, so a
hang shows up as :class:`mitogen.core.TimeoutError` rather than a stuck
test, and processes are watched through ``/proc`` with a deadline.
"""
import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

import interpreters
import leakcheck
import mitogen.core
import mitogen.master
import procs
from support import life_helpers

HERE = os.path.dirname(os.path.abspath(__file__))

#: Child versions the behaviours that depend on the child's Python run on.
SPREAD = ['2.7', '3.6', '3.13']

#: Seconds within which a failure must be reported or a process must end.
PROMPTLY = 10.0


def wait_gone(pid, timeout=PROMPTLY):
    """Poll until `pid` has exited; return whether it did in time."""
    deadline = time.monotonic() + timeout
    while not procs.is_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_for_file(path, timeout=PROMPTLY):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, 'the child never created %s' % (
            path,)
        time.sleep(0.01)


def start_stuck_call(context, tmp_path):
    """Start a call that never returns in `context`; return its receiver
    once the child is running it."""
    marker = str(tmp_path / 'stuck')
    recv = context.call_async(life_helpers.block_forever, marker)
    wait_for_file(marker)
    return recv


def spread(versions=SPREAD):
    return pytest.mark.parametrize(
        'interpreter', interpreters.params(versions), indirect=True)


def failure_of(recv, timeout=PROMPTLY):
    """Return ``(exception, seconds)`` of a result expected to fail."""
    start = time.monotonic()
    with pytest.raises((mitogen.core.ChannelError,
                        mitogen.core.CallError)) as info:
        recv.get(timeout=timeout).unpickle()
    return info.value, time.monotonic() - start


# -- Shutting down -----------------------------------------------------------

def test_shutdown_with_wait_returns_after_the_child_process_exited(router):
    context = router.local()
    pid = context.call(os.getpid)
    context.shutdown(wait=True)
    assert leakcheck.process_status(pid) is None


def test_shutdown_without_wait_returns_a_latch_set_on_disconnect(router):
    context = router.local()
    pid = context.call(os.getpid)
    latch = context.shutdown()
    assert latch.get(timeout=PROMPTLY) is None
    assert wait_gone(pid)


@spread()
def test_shutdown_ends_a_child_whose_user_code_is_stuck(
        router, tmp_path, interpreter):
    context = router.local(python_path=interpreter.path)
    pid = context.call(os.getpid)
    start_stuck_call(context, tmp_path)
    start = time.monotonic()
    context.shutdown(wait=True)
    assert time.monotonic() - start < PROMPTLY
    assert wait_gone(pid, timeout=0)


def test_stuck_call_fails_when_its_context_is_shut_down(router, tmp_path):
    context = router.local()
    recv = start_stuck_call(context, tmp_path)
    context.shutdown()
    error, elapsed = failure_of(recv)
    assert isinstance(error, mitogen.core.ChannelError)
    assert elapsed < PROMPTLY


def test_router_exit_ends_a_child_whose_user_code_is_stuck(tmp_path):
    with mitogen.master.Router() as router:
        context = router.local()
        pid = context.call(os.getpid)
        start_stuck_call(context, tmp_path)
        start = time.monotonic()
    assert time.monotonic() - start < PROMPTLY
    assert wait_gone(pid)
    assert not router.broker._thread.is_alive()


def test_call_to_a_context_after_it_shut_down_fails_promptly(router):
    context = router.local()
    context.shutdown(wait=True)
    error, elapsed = failure_of(context.call_async(os.getpid))
    assert isinstance(error, mitogen.core.ChannelError)
    assert elapsed < PROMPTLY


# -- Deaths ------------------------------------------------------------------

def test_pending_call_fails_when_the_child_exits_from_another_call(
        router, tmp_path):
    context = router.local()
    pid = context.call(os.getpid)
    trigger = str(tmp_path / 'exit-now')
    context.call_no_reply(life_helpers.exit_when, trigger, 1)
    pending = context.call_async(os.getpid)
    open(trigger, 'w').close()
    error, elapsed = failure_of(pending)
    assert isinstance(error, mitogen.core.ChannelError)
    assert elapsed < PROMPTLY
    assert wait_gone(pid)


@spread()
def test_pending_call_fails_when_the_child_is_killed(
        router, tmp_path, interpreter):
    context = router.local(python_path=interpreter.path)
    pid = context.call(os.getpid)
    recv = start_stuck_call(context, tmp_path)
    os.kill(pid, signal.SIGKILL)
    error, elapsed = failure_of(recv)
    assert isinstance(error, mitogen.core.ChannelError)
    assert elapsed < PROMPTLY


def test_call_to_a_killed_child_fails_promptly(router):
    context = router.local()
    pid = context.call(os.getpid)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    error, elapsed = failure_of(context.call_async(os.getpid))
    assert isinstance(error, mitogen.core.ChannelError)
    assert elapsed < PROMPTLY


def read_line(proc, timeout):
    """Read one line of `proc`'s stdout, waiting at most `timeout`
    seconds."""
    deadline = time.monotonic() + timeout
    data = b''
    fd = proc.stdout.fileno()
    while not data.endswith(b'\n'):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AssertionError('no line from %r within %s s; got %r'
                                 % (proc.args, timeout, data))
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError('%r exited early; output %r'
                                 % (proc.args, data))
        data += chunk
    return data.decode()


@spread()
def test_sigkill_of_the_master_ends_every_child(interpreter):
    script = os.path.join(HERE, 'support', 'life_orphan_master.py')
    proc = subprocess.Popen([sys.executable, script, interpreter.path],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    pids = []
    try:
        pids = [int(pid) for pid in read_line(proc, 60).split()]
        assert len(pids) == 2
        assert not any(procs.is_gone(pid) for pid in pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert [pid for pid in pids if not wait_gone(pid)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        for pid in pids:
            if not procs.is_gone(pid):
                os.kill(pid, signal.SIGKILL)


# -- Terminals and terminal signals ------------------------------------------

def start_terminal_master(interpreter, terminal):
    """Run support/life_terminal_master.py in a new session, with a pseudo
    terminal as its controlling terminal if `terminal`; return the process,
    its first JSON line and the pty master (or None)."""
    script = os.path.join(HERE, 'support', 'life_terminal_master.py')
    master_fd = slave_fd = None
    kwargs = dict(start_new_session=True)
    if terminal:
        import fcntl
        import termios
        master_fd, slave_fd = os.openpty()

        def take_terminal():
            os.setsid()
            fcntl.ioctl(2, termios.TIOCSCTTY, 0)
        kwargs = dict(stderr=slave_fd, preexec_fn=take_terminal)
    proc = subprocess.Popen([sys.executable, script, interpreter.path],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            **kwargs)
    if slave_fd is not None:
        os.close(slave_fd)
    return proc, json.loads(read_line(proc, 60)), master_fd


def stop_terminal_master(proc, info, master_fd):
    proc.stdin.close()
    try:
        proc.wait(timeout=PROMPTLY)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()
    if master_fd is not None:
        os.close(master_fd)
    for child in (info or {}).get('children', []):
        assert wait_gone(child['pid'])


@spread(['3.13'])
def test_sigint_to_the_masters_process_group_does_not_reach_children(
        interpreter):
    proc, info, master_fd = start_terminal_master(interpreter, False)
    try:
        assert [c['pgid'] == info['master']['pgid']
                for c in info['children']] == [False, False]
        os.killpg(info['master']['pgid'], signal.SIGINT)
        proc.stdin.write(b'\n')
        proc.stdin.flush()
        after = json.loads(read_line(proc, PROMPTLY))
        assert after == {'interrupts': 1, 'answers': [
            c['pid'] for c in info['children']]}
    finally:
        stop_terminal_master(proc, info, master_fd)


@spread(['2.7', '3.13'])
def test_children_never_share_the_masters_controlling_terminal(interpreter):
    proc, info, master_fd = start_terminal_master(interpreter, True)
    try:
        assert info['master']['tty'] is True
        assert [(c['tty'], c['sid'] == c['pid']) for c in info['children']] \
            == [(False, True), (False, True)]
    finally:
        stop_terminal_master(proc, info, master_fd)


@spread(['3.13'])
def test_children_of_a_master_without_terminal_have_no_terminal_either(
        interpreter):
    proc, info, master_fd = start_terminal_master(interpreter, False)
    try:
        assert info['master']['tty'] is False
        assert [c['tty'] for c in info['children']] == [False, False]
        assert [c['pgid'] == c['pid'] for c in info['children']] \
            == [True, True]
    finally:
        stop_terminal_master(proc, info, master_fd)
