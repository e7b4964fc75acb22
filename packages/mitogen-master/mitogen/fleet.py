# Copyright the mitogen contributors. BSD-3-Clause.
"""
Run one function on many hosts: connect to every target (any mix of
connection methods and chains, given as data), call the function on each
with a limit on how many hosts are worked on at once and a time limit per
host, and get back one :class:`HostResult` per target, in the order given::

    targets = [{'method': 'ssh', 'hostname': 'web%d' % i} for i in range(100)]
    for result in mitogen.fleet.run(targets, platform.node):
        print(result.name, result.value if result.ok else result.error)

One host failing in any way -- refusing the connection, refusing a
password, hanging, crashing, or running the function for too long -- is
recorded in its own result and never holds up or fails the others.

:func:`run` is the threaded entry point, :func:`arun` the ``asyncio``
one; both are the same code (:func:`run` runs :func:`arun` on an event
loop of its own).

**Targets.** A target is a dict: ``method`` names a connection method
(``local``, ``ssh``, ``sudo``, ...), every other key is a keyword argument
of that method (``hostname``, ``username``, ``python_path``, ...), and
``via`` may hold another target dict, the context to start this one
through. A list of dicts is a chain, each started through the one before
it: ``[{'method': 'ssh', 'hostname': 'bastion'}, {'method': 'ssh',
'hostname': 'db1'}, {'method': 'sudo'}]``. Hops that several targets name
identically are connected once and shared; each target gets a context of
its own.

**Time limit.** `timeout` seconds cover everything done for one host:
connecting (hops included), and the call. A connection method whose
target dict gives no ``connect_timeout`` gets `timeout`, so that no
handshake outlives it. A host whose call runs too long is disconnected,
which ends the function in it.

**Progress.** `on_event` is called with an :class:`Event` each time a host
starts, connects, succeeds or fails. With `progress` true (by default:
when standard error is a terminal) a :class:`ProgressLine` also keeps one
line on standard error up to date.
"""
# master-only module

from __future__ import annotations

__all__ = [
    'DEFAULT_CONCURRENCY', 'DEFAULT_TIMEOUT', 'Event', 'HostResult',
    'ProgressLine', 'arun', 'describe', 'run',
]

import asyncio
import json
import logging
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

import mitogen.aio
import mitogen.core
import mitogen.master

LOG = logging.getLogger(__name__)

#: Default for the `concurrency` argument: hosts worked on at once.
DEFAULT_CONCURRENCY = 32

#: Default for the `timeout` argument, in seconds.
DEFAULT_TIMEOUT = 60.0


class HostResult:
    """What happened on one target.

    .. attribute:: index

       Position of the target in the list given.

    .. attribute:: target

       The target as given.

    .. attribute:: name

       The context's name (``ssh.web1``) once connected, else a
       description of the target.

    .. attribute:: ok

       True when the function returned.

    .. attribute:: value

       What the function returned (None when not :attr:`ok`).

    .. attribute:: error

       The exception when not :attr:`ok`: a connection error
       (:class:`mitogen.parent.EofError`, :data:`mitogen.ssh.PasswordError`,
       :class:`mitogen.ssh.HostKeyError`, ...), :class:`mitogen.core.CallError`
       for an exception raised by the function,
       :class:`mitogen.core.ChannelError` when the context disconnected
       during the call, :class:`mitogen.core.TimeoutError` when the host ran
       out of time.

    .. attribute:: phase

       ``'connect'`` or ``'call'``: what the host was doing when it
       finished or failed.

    .. attribute:: elapsed

       Seconds spent on the host, from the start of its connection.

    .. attribute:: context

       The :class:`mitogen.aio.Context` of the target while it is
       connected: when the router was passed in by the caller, contexts
       are left connected for further use (a threaded program calls
       through its :attr:`~mitogen.aio.Context.context`). None otherwise.
    """

    def __init__(self, index: int,
                 target: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        self.index = index
        self.target = target
        self.name = describe(target)
        self.ok = False
        self.value: Any = None
        self.error: Exception | None = None
        self.phase = 'connect'
        self.elapsed = 0.0
        self.context: mitogen.aio.Context | None = None

    def __repr__(self) -> str:
        if self.ok:
            outcome = 'value=%r' % (self.value,)
        else:
            outcome = 'error=%r' % (self.error,)
        return 'HostResult(%r, %s, %.2f s)' % (self.name, outcome,
                                               self.elapsed)

    def result(self) -> Any:
        """Return :attr:`value`, or raise :attr:`error`."""
        if self.ok:
            return self.value
        raise self.error


class Event:
    """One step of one host, given to the `on_event` callback.

    .. attribute:: kind

       ``'start'`` (the host got one of the `concurrency` slots),
       ``'connected'``, ``'done'`` (the function returned) or ``'failed'``.

    .. attribute:: result

       The host's :class:`HostResult`, complete for ``'done'`` and
       ``'failed'``.

    .. attribute:: total

       Number of targets in the run.
    """

    def __init__(self, kind: str, result: HostResult, total: int) -> None:
        self.kind = kind
        self.result = result
        self.total = total

    def __repr__(self) -> str:
        return 'Event(%r, %r)' % (self.kind, self.result.name)


class ProgressLine:
    """An `on_event` callback that keeps one line up to date on a terminal,
    such as ``fleet: 57/100 done, 2 failed, 32 running, 4.2 s``, and ends it
    with a newline when every host finished.

    :param stream: where to write; standard error when None.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.running = 0
        self.finished = 0
        self.failed = 0

    def __call__(self, event: Event) -> None:
        if event.kind == 'start':
            self.running += 1
        elif event.kind in ('done', 'failed'):
            self.running -= 1
            self.finished += 1
            self.failed += event.kind == 'failed'
        line = 'fleet: %d/%d done, %d failed, %d running, %.1f s' % (
            self.finished, event.total, self.failed, self.running,
            time.monotonic() - self.started)
        end = '\n' if self.finished == event.total else ''
        # \r and "erase to end of line": redraw in place.
        self.stream.write('\r' + line + '\x1b[K' + end)
        self.stream.flush()


def describe(target: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """A short text for a target: ``ssh:web1``, ``ssh:bastion -> sudo:root``."""
    hops = []
    for spec in _chain(target):
        what = spec.get('hostname') or spec.get('username') or ''
        hops.append('%s:%s' % (spec.get('method'), what) if what
                    else str(spec.get('method')))
    return ' -> '.join(hops)


def _chain(target: Any) -> list[dict[str, Any]]:
    """The target as a list of hop dicts, outermost first; each dict
    without its ``via``."""
    if isinstance(target, (list, tuple)):
        hops = []
        for spec in target:
            hops.extend(_chain(spec))
        return hops
    if not isinstance(target, dict) or 'method' not in target:
        raise ValueError('a target is a dict with a "method" key, or a '
                         'list of them; got %r' % (target,))
    spec = dict(target)
    via = spec.pop('via', None)
    return (_chain(via) if via is not None else []) + [spec]


class _Run:
    """The state of one :func:`arun`: the router, the connections of hops
    shared between targets, the limit on hosts worked on at once."""

    def __init__(self, router, targets, fn, args, kwargs, concurrency,
                 timeout, on_event):
        self.router = router
        self.targets = targets
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout
        self.on_event = on_event
        self.slots = asyncio.Semaphore(concurrency)
        #: Canonical text of a chain prefix -> task connecting it.
        self.hops = {}

    def _event(self, kind, result):
        if self.on_event is not None:
            self.on_event(Event(kind, result, len(self.targets)))

    def _connect_hop(self, hops):
        """The task connecting the chain `hops`, started on first need."""
        key = json.dumps(hops, sort_keys=True, default=repr)
        task = self.hops.get(key)
        if task is None:
            task = asyncio.ensure_future(self._connect_chain(hops))
            self.hops[key] = task
        return task

    async def _connect_chain(self, hops):
        via = None
        if len(hops) > 1:
            via = await asyncio.shield(self._connect_hop(hops[:-1]))
        spec = dict(hops[-1])
        spec.setdefault('connect_timeout', self.timeout)
        method = spec.pop('method')
        if via is not None:
            spec['via'] = via
        return await self.router.connect(method, **spec)

    async def _work(self, result):
        # The target's own connection is not shared (two identical targets
        # are two contexts), its hops are; cancelling it, on timeout,
        # disconnects the context should it still come up.
        context = await self._connect_chain(_chain(result.target))
        result.context = context
        result.name = context.name
        result.phase = 'call'
        self._event('connected', result)
        result.value = await context.call(self.fn, *self.args, **self.kwargs)
        result.ok = True

    async def host(self, index, target):
        result = HostResult(index, target)
        async with self.slots:
            started = time.monotonic()
            self._event('start', result)
            try:
                await asyncio.wait_for(self._work(result), self.timeout)
            except asyncio.TimeoutError:
                result.error = mitogen.core.TimeoutError(
                    '%s: no result within %.1f s (while %s)'
                    % (result.name, self.timeout,
                       'connecting' if result.phase == 'connect'
                       else 'calling'))
                if result.context is not None:
                    # The function may never return: end it.
                    result.context.disconnect()
            except Exception as e:
                result.error = e
            result.elapsed = time.monotonic() - started
        self._event('done' if result.ok else 'failed', result)
        return result

    async def settle_hops(self):
        """Wait for every connection started, so that none is left
        running unseen (each ends by its ``connect_timeout``)."""
        if self.hops:
            await asyncio.wait(list(self.hops.values()))
        for task in self.hops.values():
            if not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" warning


async def arun(targets: Iterable[Mapping[str, Any] | Sequence[Mapping[str, Any]]],
               fn: Callable[..., Any], args: Iterable[Any] = (),
               kwargs: Mapping[str, Any] | None = None,
               router: mitogen.aio.Router | None = None,
               concurrency: int = DEFAULT_CONCURRENCY,
               timeout: float = DEFAULT_TIMEOUT,
               on_event: Callable[[Event], object] | None = None,
               progress: bool | None = None) -> list[HostResult]:
    """Call ``fn(*args, **kwargs)`` on every target; return a list of
    :class:`HostResult`, one per target, in the order of `targets`. Never
    raises for a host: every failure is in its result.

    :param list targets: target dicts or chains (see the module's
        introduction).
    :param fn: a function the targets can import (one of the calling
        program's modules, or the standard library).
    :param mitogen.aio.Router router: router to connect with; its contexts
        are left connected (:attr:`HostResult.context`). When None, a
        router of the run's own is used and shut down at the end.
    :param int concurrency: most hosts worked on at once.
    :param float timeout: seconds allowed for each host (see the module's
        introduction).
    :param on_event: called with each :class:`Event`, on the event loop's
        thread; an exception it raises is logged, and the run goes on.
    :param progress: keep a :class:`ProgressLine` on standard error; None
        means "when standard error is a terminal".
    """
    targets = list(targets)
    callbacks = [on_event] if on_event is not None else []
    if progress is None:
        progress = sys.stderr.isatty()
    if progress:
        callbacks.append(ProgressLine())

    def fire(event):
        # A failing callback must not abandon the hosts still running.
        for callback in callbacks:
            try:
                callback(event)
            except Exception:
                LOG.exception('fleet: event callback %r failed on %r',
                              callback, event)

    owned = router is None
    if owned:
        router = mitogen.aio.Router(connect_threads=max(1, concurrency))
    run = _Run(router, targets, fn, tuple(args), dict(kwargs or {}),
               concurrency, timeout, fire)
    try:
        results = await asyncio.gather(*[
            run.host(i, target) for i, target in enumerate(targets)])
        await run.settle_hops()
    finally:
        if owned:
            await router.shutdown()
    if owned:
        for result in results:
            result.context = None
    return results


def run(targets: Iterable[Mapping[str, Any] | Sequence[Mapping[str, Any]]],
        fn: Callable[..., Any], args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        router: mitogen.master.Router | None = None,
        **options: Any) -> list[HostResult]:
    """The threaded entry point: :func:`arun` on an event loop of its own,
    in the calling thread, which must not be running an event loop already
    (use ``await arun(...)`` there).

    :param mitogen.master.Router router: router to connect with, left
        running with the targets' contexts connected; a new one, shut down
        at the end, when None.
    :param options: the other arguments of :func:`arun`.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError('mitogen.fleet.run() cannot be called from a '
                           'running event loop: await mitogen.fleet.arun()')

    async def main():
        if router is None:
            return await arun(targets, fn, args, kwargs, **options)
        async with mitogen.aio.Router(
                router, connect_threads=max(1, options.get(
                    'concurrency', DEFAULT_CONCURRENCY))) as aio_router:
            return await arun(targets, fn, args, kwargs, router=aio_router,
                              **options)
    return asyncio.run(main())
