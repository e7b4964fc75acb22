"""
:mod:`mitogen.aio`: awaiting contexts, calls, receivers and selects on an
event loop, on asyncio's own loop and on uvloop's; real children (local,
fork, sudo, ssh, chains) throughout.
"""
import asyncio
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

import aioloops
import waiting
import mitogen.aio
import mitogen.core
import mitogen.master
import mitogen.parent
import mitogen.ssh
import mitogen.sudo
from support import calls_funcs, select_funcs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=aioloops.params())
def run(request):
    """``run(coro_fn)``: runs ``coro_fn(router)`` with a fresh
    :class:`mitogen.aio.Router` on a new event loop of each kind, shuts
    the router down, and returns the result."""
    def run(coro_fn, **router_kwargs):
        async def main():
            async with mitogen.aio.Router(**router_kwargs) as router:
                return await coro_fn(router)
        return aioloops.run(request.param, main())
    return run


# --- connecting ---------------------------------------------------------

def test_local_context_runs_a_call(run):
    async def main(router):
        ctx = await router.local()
        return ctx, await ctx.call(os.getpid)
    ctx, pid = run(main)
    assert isinstance(ctx, mitogen.aio.Context)
    assert ctx.name == 'local.%d' % (pid,)
    assert pid != os.getpid()


def test_connections_started_together_run_concurrently(run):
    async def main(router):
        started = time.monotonic()
        contexts = await asyncio.gather(*[router.local() for _ in range(6)])
        pids = await asyncio.gather(*[c.call(os.getpid) for c in contexts])
        return time.monotonic() - started, pids
    _, pids = run(main)
    assert len(set(pids)) == 6


def test_via_takes_an_aio_context(run):
    async def main(router):
        parent = await router.local()
        child = await router.local(via=parent)
        return parent, child, await child.call(os.getppid), \
            await parent.call(os.getpid)
    parent, child, child_ppid, parent_pid = run(main)
    assert child.via is parent
    assert child.name.startswith(parent.name + '.local.')
    assert child_ppid == parent_pid


def test_fork_is_a_coroutine_method(run):
    async def main(router):
        ctx = await router.fork()
        return await ctx.call(os.getppid)
    assert run(main) == os.getpid()


def test_sudo_method_is_resolved_from_installed_transports(run, test_users):
    async def main(router):
        ctx = await router.sudo(username=test_users.nopass,
                                python_path=test_users.python)
        return await ctx.call(os.getuid)
    assert run(main) == test_users.uid(test_users.nopass)


def test_ssh_method_and_its_errors(run, sshd, wrong_known_hosts):
    async def main(router):
        ctx = await router.ssh(**sshd.ssh_kwargs())
        with pytest.raises(mitogen.ssh.HostKeyError):
            await router.ssh(**sshd.ssh_kwargs(known_hosts=wrong_known_hosts))
        return ctx.name, await ctx.call(os.getuid)
    name, uid = run(main)
    assert name == 'ssh.127.0.0.1:%d' % (sshd.port,)
    assert uid == 0


def test_unknown_method_is_an_attribute_error(run):
    async def main(router):
        with pytest.raises(AttributeError, match='no connection method'):
            router.no_such_method
    run(main)


def test_failed_connection_raises_the_transport_error(run):
    async def main(router):
        with pytest.raises(mitogen.core.StreamError, match='could not start'):
            await router.local(python_path=['/nonexistent/python'])
    run(main)


def test_cancelled_connection_disconnects_the_context_it_made(run):
    # sh holds the handshake for half a second before starting Python.
    slow_python = ['sh', '-c', 'sleep 0.5; exec "$0" "$@"', sys.executable]

    async def main(router):
        task = asyncio.ensure_future(router.local(python_path=slow_python))
        await asyncio.sleep(0.2)   # the handshake runs on its thread now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()
        await router.close()       # waits for the handshake to end
        return router.router, time.monotonic() - started
    sync_router, waited = run(main)
    assert waited > 0.1
    # Connected, then disconnected: nothing is left of it.
    assert waiting.wait_for(lambda: sync_router._conns == {})


# --- calls ------------------------------------------------------------

def test_exception_in_the_function_raises_call_error(run):
    async def main(router):
        ctx = await router.local()
        with pytest.raises(mitogen.core.CallError) as info:
            await ctx.call(calls_funcs.raise_value_error, 'bad value')
        return info.value
    error = run(main)
    assert error.type_name.endswith('ValueError')
    assert 'bad value' in str(error)


def test_call_to_a_context_that_dies_raises_channel_error(run):
    async def main(router):
        ctx = await router.local()
        call = asyncio.ensure_future(ctx.call(time.sleep, 60))
        await asyncio.sleep(0.2)
        ctx.disconnect()
        with pytest.raises(mitogen.core.ChannelError):
            await asyncio.wait_for(call, 10)
    run(main)


def test_calls_need_no_thread_each(run, tmp_path):
    release = str(tmp_path / 'release')

    async def main(router):
        ctx = await router.local()
        await ctx.call(os.getpid)
        before = threading.active_count()
        calls = [asyncio.ensure_future(ctx.call(select_funcs.return_when,
                                                release, i))
                 for i in range(20)]
        await asyncio.sleep(0.1)
        during = threading.active_count()
        open(release, 'w').close()
        return before, during, await asyncio.gather(*calls)
    before, during, results = run(main)
    assert during == before
    assert results == list(range(20))


def test_cancelled_call_leaves_the_context_usable_and_its_reply_dropped(
        run, caplog, tmp_path):
    release = str(tmp_path / 'release')

    async def main(router):
        ctx = await router.local()
        slow = [asyncio.ensure_future(ctx.call(select_funcs.return_when,
                                               release, 'late'))
                for _ in range(50)]
        await asyncio.sleep(0.2)
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        open(release, 'w').close()      # the 50 late replies come now
        # Calls queue behind the first one in the child: this one runs
        # once the late replies were sent.
        after = await ctx.call(os.getpid)
        await asyncio.sleep(0.2)
        return after
    with caplog.at_level(logging.DEBUG, logger='mitogen'):
        assert isinstance(run(main), int)
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []


@pytest.mark.skipif(not hasattr(asyncio, 'timeout'),
                    reason='asyncio.timeout() needs Python 3.11')
def test_asyncio_timeout_on_a_call_leaves_the_router_healthy(run):
    async def main(router):
        ctx = await router.local()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await ctx.call(time.sleep, 2)
        other = await router.local()
        return await other.call(calls_funcs.add, 1, 2)
    assert run(main) == 3


def test_calls_on_a_service(run):
    async def main(router):
        ctx = await router.local()
        with pytest.raises(mitogen.core.CallError):
            await ctx.call_service('no.such.Service', 'method')
    run(main)


def test_shutdown_waits_for_the_process_to_exit(run):
    async def main(router):
        ctx = await router.local()
        pid = await ctx.call(os.getpid)
        await ctx.shutdown()
        return pid
    pid = run(main)
    with pytest.raises(OSError):
        os.kill(pid, 0)


# --- receivers and selects ----------------------------------------------

def test_receiver_is_an_async_iterator_until_closed(run):
    async def main(router):
        ctx = await router.local()
        recv = mitogen.core.Receiver(router.router)
        sent = await ctx.call(calls_funcs.send_values, recv.to_sender(),
                              [1, 'two', 3.0])
        got = [msg.unpickle() async for msg in mitogen.aio.Receiver(recv)]
        return sent, got
    assert run(main) == (3, [1, 'two', 3.0])


def test_receiver_get_times_out(run):
    async def main(router):
        recv = mitogen.aio.Receiver(mitogen.core.Receiver(router.router))
        started = time.monotonic()
        with pytest.raises(mitogen.core.TimeoutError):
            await recv.get(timeout=0.2)
        recv.close()
        with pytest.raises(mitogen.core.ChannelError):
            await recv.get()
        return time.monotonic() - started
    assert run(main) < 5


def test_receiver_of_a_select_is_refused(run):
    async def main(router):
        recv = mitogen.core.Receiver(router.router)
        with mitogen.select.Select([recv]):
            with pytest.raises(mitogen.core.Error, match='already watched'):
                mitogen.aio.Receiver(recv)
    run(main)


def test_select_yields_results_as_they_arrive(run, tmp_path):
    release = str(tmp_path / 'release')

    async def main(router):
        fast, slow = await asyncio.gather(router.local(), router.local())
        recvs = [slow.call_async(select_funcs.return_when, release, 'slow'),
                 fast.call_async(select_funcs.add, 1, 2)]
        order = []
        async for msg in mitogen.aio.Select(recvs):
            order.append(msg.unpickle())
            if len(order) == 1:
                open(release, 'w').close()
        return order
    assert run(main) == [3, 'slow']


def test_select_over_a_latch_and_a_receiver_gives_events(run):
    async def main(router):
        ctx = await router.local()
        latch = mitogen.core.Latch()
        with mitogen.aio.Select([latch, ctx.call_async(os.getpid)]) as sel:
            threading.Thread(target=latch.put, args=('from a thread',)).start()
            events = [await sel.get_event(timeout=10) for _ in range(2)]
        return latch, [(e.source, e.data) for e in events]
    latch, events = run(main)
    sources = [source for source, _ in events]
    assert latch in sources
    assert 'from a thread' in [data for _, data in events]


def test_select_reports_a_dead_context(run):
    async def main(router):
        ctx = await router.local()
        sel = mitogen.aio.Select([ctx.call_async(time.sleep, 60)])
        await asyncio.sleep(0.2)
        ctx.disconnect()
        with pytest.raises(mitogen.core.ChannelError):
            await sel.get(timeout=10)
    run(main)


# --- the router ---------------------------------------------------------

def test_wrapped_router_is_left_running(run):
    with mitogen.master.Router() as sync_router:
        async def main(_):
            async with mitogen.aio.Router(sync_router) as router:
                ctx = await router.local()
                return ctx.context
        context = run(main)
        assert context.call(os.getpid) > 0


def test_example_in_the_docs_runs():
    out = subprocess.check_output(
        [sys.executable, os.path.join(ROOT, 'examples', 'aio_hello.py')],
        stderr=subprocess.STDOUT, timeout=120).decode()
    assert 'local.' in out and '2 other children still answer' in out, out
