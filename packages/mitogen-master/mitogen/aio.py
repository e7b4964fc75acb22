# Copyright the mitogen contributors. BSD-3-Clause.
"""
An ``asyncio`` face over the master's router and broker::

    async with mitogen.aio.Router() as router:
        ctx = await router.local()
        print(await ctx.call(os.getpid))

The same broker thread does all the I/O as for threaded programs; what
changes is how a result reaches the caller. A :class:`mitogen.core.Receiver`
calls its ``notify`` hook on the broker thread when a message is queued:
here that hook schedules a wake-up on the event loop
(``loop.call_soon_threadsafe``), and the waiting coroutine takes the message
without blocking. No thread is used per call, per receiver or per select.

Starting a context is the exception: every transport bootstraps its child
with a blocking handshake (reading the child's first lines, answering
password prompts), so :meth:`Router.connect` runs it on a small pool of
threads owned by the router (`connect_threads`, 32 by default), which bounds
how many connections are being set up at once.

Cancelling a task that awaits a call (``task.cancel()``,
``asyncio.timeout()``, ``asyncio.wait_for()``) closes the call's receiver:
the context and the router stay usable, the function keeps running in the
child, and its late reply is dropped quietly by the router (logged at
debug level only). Cancelling a task that awaits a connection lets the
handshake finish on its thread and then disconnects the new context.

Works with any event loop that implements ``call_soon_threadsafe``,
uvloop's included.
"""
# master-only module

from __future__ import annotations

__all__ = ['Context', 'Receiver', 'Router', 'Select']

import asyncio
import concurrent.futures
import functools
import threading
import time
from typing import Any, Callable, Coroutine, Iterable, TypeVar

import mitogen.core
import mitogen.master
import mitogen.parent
import mitogen.select

_T = TypeVar('_T')
_SelectT = TypeVar('_SelectT', bound='Select')
_RouterT = TypeVar('_RouterT', bound='Router')


class _Wakeup:
    """Installed as the ``notify`` hook of a receiver or select: wakes the
    coroutines of one event loop that wait for the source to hold a
    result."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiters: set[asyncio.Future[None]] = set()

    def __call__(self, _source: object) -> None:
        # Runs on the broker thread (or whichever thread closed the source).
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _wake(self) -> None:
        for future in self._waiters:
            if not future.done():
                future.set_result(None)

    async def take(self, take: Callable[[], _T],
                   timeout: float | None) -> _T:
        """Return ``take()``, waiting for a wake-up each time it raises
        :class:`mitogen.core.TimeoutError` (nothing queued yet)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return take()
            except mitogen.core.TimeoutError:
                pass
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise mitogen.core.TimeoutError('no result within %.1f s'
                                                    % (timeout,))
            # Nothing can run on this loop between the failed take() and
            # creating the future, and a notify from another thread only
            # schedules _wake: no wake-up can be missed.
            future = self._loop.create_future()
            self._waiters.add(future)
            timer = None
            if remaining is not None:
                timer = self._loop.call_later(remaining, _resolve, future)
            try:
                await future
            finally:
                self._waiters.discard(future)
                if timer is not None:
                    timer.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Receiver:
    """Awaitable face of a :class:`mitogen.core.Receiver`, bound to the
    running event loop. Iterate it with ``async for`` to get each
    :class:`mitogen.core.Message` until the receiver is closed or a dead
    message arrives, as the receiver's own iterator does::

        recv = mitogen.core.Receiver(router.router)
        async for msg in mitogen.aio.Receiver(recv):
            print(msg.unpickle())

    :param mitogen.core.Receiver receiver: the receiver to wait on. It must
        not belong to a :class:`mitogen.select.Select` (both use its
        ``notify`` hook).
    """

    def __init__(self, receiver: mitogen.core.Receiver) -> None:
        if receiver.notify is not None:
            raise mitogen.core.Error('%r is already watched (by a Select?)'
                                     % (receiver,))
        #: The wrapped :class:`mitogen.core.Receiver`.
        self.receiver = receiver
        self._wakeup = _Wakeup(asyncio.get_running_loop())
        receiver.notify = self._wakeup

    def __repr__(self) -> str:
        return 'aio.Receiver(%r)' % (self.receiver,)

    @property
    def handle(self) -> int:
        """The handle of the wrapped receiver."""
        return self.receiver.handle

    def to_sender(self) -> mitogen.core.Sender:
        """See :meth:`mitogen.core.Receiver.to_sender`."""
        return self.receiver.to_sender()

    async def get(self, timeout: float | None = None,
                  throw_dead: bool = True) -> mitogen.core.Message:
        """Return the next :class:`mitogen.core.Message`, waiting without
        blocking the loop.

        :raises mitogen.core.TimeoutError: `timeout` seconds passed first.
        :raises mitogen.core.ChannelError: the receiver is closed, or a dead
            message arrived and `throw_dead` is true."""
        return await self._wakeup.take(
            functools.partial(self.receiver.get, block=False,
                              throw_dead=throw_dead),
            timeout)

    def close(self) -> None:
        """Close the wrapped receiver: waiters get
        :class:`mitogen.core.ChannelError`."""
        self.receiver.close()

    def __aiter__(self) -> Receiver:
        return self

    async def __anext__(self) -> mitogen.core.Message:
        try:
            return await self.get()
        except mitogen.core.ChannelError:
            raise StopAsyncIteration from None


async def _unpickled_reply(recv: mitogen.core.Receiver) -> Any:
    """The unpickled first reply arriving on `recv`; closes `recv` when the
    awaiting task is cancelled, so a late reply finds no handler."""
    try:
        msg = await Receiver(recv).get()
    except BaseException:
        recv.close()
        raise
    return msg.unpickle()


class Select:
    """Awaitable face of a :class:`mitogen.select.Select`: ``async for``
    yields each result (a :class:`mitogen.core.Message`, its ``receiver``
    attribute naming the receiver it came from, or a latch's item) as it
    arrives, until no member is left::

        recvs = [ctx.call_async(os.getpid) for ctx in contexts]
        async for msg in mitogen.aio.Select(recvs):
            print(msg.receiver, msg.unpickle())

    :param receivers: initial members, each given to :meth:`add`.
    :param bool oneshot: as for :class:`mitogen.select.Select`.
    """

    def __init__(self,
                 receivers: Iterable[mitogen.core.Receiver | mitogen.core.Latch
                                     | mitogen.select.Select | Receiver] = (),
                 oneshot: bool = True) -> None:
        #: The wrapped :class:`mitogen.select.Select`.
        self.select = mitogen.select.Select(oneshot=oneshot)
        self._wakeup = _Wakeup(asyncio.get_running_loop())
        self.select.notify = self._wakeup
        try:
            for recv in receivers:
                self.add(recv)
        except Exception:
            self.close()
            raise

    def __repr__(self) -> str:
        return 'aio.Select(%r)' % (self.select,)

    def add(self, recv: mitogen.core.Receiver | mitogen.core.Latch
            | mitogen.select.Select | Receiver) -> None:
        """Add a member: a :class:`mitogen.core.Receiver`,
        :class:`mitogen.core.Latch` or :class:`mitogen.select.Select`, or a
        :class:`Receiver` of this module (which from then on is awaited
        through this select only)."""
        if isinstance(recv, Receiver):
            recv = recv.receiver
            recv.notify = None
        self.select.add(recv)

    def remove(self, recv: mitogen.core.Receiver | mitogen.core.Latch
               | mitogen.select.Select | Receiver) -> None:
        """Remove a member; see :meth:`mitogen.select.Select.remove`."""
        if isinstance(recv, Receiver):
            recv = recv.receiver
        self.select.remove(recv)

    def __len__(self) -> int:
        return len(self.select)

    def __bool__(self) -> bool:
        return bool(self.select)

    async def get_event(
            self, timeout: float | None = None) -> mitogen.select.Event:
        """Return the next :class:`mitogen.select.Event`, raising as
        :meth:`mitogen.select.Select.get_event` does."""
        return await self._wakeup.take(
            functools.partial(self.select.get_event, block=False), timeout)

    async def get(self, timeout: float | None = None) -> Any:
        """Return :attr:`~mitogen.select.Event.data` of
        :meth:`get_event`."""
        return (await self.get_event(timeout)).data

    def close(self) -> None:
        """Close the wrapped select (see
        :meth:`mitogen.select.Select.close`)."""
        self.select.close()

    def __enter__(self: _SelectT) -> _SelectT:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __aiter__(self) -> Select:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.get()
        except mitogen.select.Error:
            raise StopAsyncIteration from None


class Context:
    """Awaitable face of a :class:`mitogen.parent.Context`, as returned by
    :meth:`Router.connect`.

    .. attribute:: context

       The wrapped :class:`mitogen.parent.Context`.

    .. attribute:: via

       The :class:`Context` this one was started through, or None.
    """

    def __init__(self, router: Router, context: mitogen.parent.Context,
                 via: Context | None = None) -> None:
        self.router = router
        self.context = context
        self.via = via

    @property
    def name(self) -> str:
        """The context's name, such as ``ssh.web1``."""
        return self.context.name

    @property
    def context_id(self) -> int:
        """The context's ID."""
        return self.context.context_id

    def __repr__(self) -> str:
        return 'aio.Context(%s, %r)' % (self.context_id, self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Context) and other.context == self.context

    def __hash__(self) -> int:
        return hash(self.context)

    async def call(self, fn: Callable[..., Any], *args: Any,
                   **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` in the context and return its result.

        :raises mitogen.core.CallError: the function raised.
        :raises mitogen.core.ChannelError: the context disconnected."""
        return await _unpickled_reply(self.context.call_async(
            fn, *args, **kwargs))

    def call_async(self, fn: Callable[..., Any], *args: Any,
                   **kwargs: Any) -> Receiver:
        """Start a call; return the :class:`Receiver` its reply arrives on
        (for :class:`Select`, or ``(await recv.get()).unpickle()``)."""
        return Receiver(self.context.call_async(fn, *args, **kwargs))

    def call_no_reply(self, fn: Callable[..., Any], *args: Any,
                      **kwargs: Any) -> None:
        """Start a call without waiting for, or receiving, a result."""
        self.context.call_no_reply(fn, *args, **kwargs)

    async def call_service(self, service_name: str | type[Any],
                           method_name: str, **kwargs: Any) -> Any:
        """See :meth:`mitogen.core.Context.call_service`."""
        return await _unpickled_reply(self.context.call_service_async(
            service_name, method_name, **kwargs))

    async def shutdown(self) -> None:
        """Ask the context to shut down and return once it disconnected
        and, for a child of this process, its process exited."""
        await asyncio.wrap_future(
            self.router._in_pool(self.context.shutdown, wait=True))

    def disconnect(self) -> None:
        """Disconnect the context at once (see
        :meth:`mitogen.parent.Router.disconnect`)."""
        self.router.router.disconnect(self.context)


class Router:
    """Awaitable face of a :class:`mitogen.master.Router`. Use it as an
    asynchronous context manager::

        async with mitogen.aio.Router() as router:
            host = await router.ssh(hostname='web1')
            root = await router.sudo(via=host)
            print(await root.call(os.getuid))

    Every installed connection method is a coroutine method of the same
    name (:meth:`local`, ``ssh``, ``sudo``, ...), taking the keyword
    arguments of the threaded API; ``via=`` takes a :class:`Context` of this
    module or a :class:`mitogen.parent.Context`.

    :param mitogen.master.Router router: the router to drive; a new one
        (with a new broker) when None. The ``async with`` block shuts down
        a router it created, and only closes this object otherwise.
    :param int connect_threads: most connections set up at once (see the
        module's introduction).
    :param kwargs: passed to :class:`mitogen.master.Router` when `router` is
        None.
    """

    def __init__(self, router: mitogen.master.Router | None = None,
                 connect_threads: int = 32, **kwargs: Any) -> None:
        self._owned = router is None
        #: The wrapped :class:`mitogen.master.Router`: the threaded API,
        #: usable at the same time (from other threads too).
        self.router = router or mitogen.master.Router(**kwargs)
        #: The router's :class:`mitogen.master.Broker`.
        self.broker = self.router.broker
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=connect_threads,
            thread_name_prefix='mitogen.aio.connect')
        self._pending: set[concurrent.futures.Future[Any]] = set()

    def __repr__(self) -> str:
        return 'aio.Router(%r)' % (self.router,)

    async def __aenter__(self: _RouterT) -> _RouterT:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._owned:
            await self.shutdown()
        else:
            await self.close()

    def _in_pool(self, func: Callable[..., _T], *args: Any,
                 **kwargs: Any) -> concurrent.futures.Future[_T]:
        future = self._pool.submit(func, *args, **kwargs)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    async def connect(self, method_name: str, name: str | None = None,
                      **kwargs: Any) -> Context:
        """Start a context with connection method `method_name` (see
        :meth:`mitogen.parent.Router.connect`) and return its
        :class:`Context`."""
        via = kwargs.get('via')
        if isinstance(via, Context):
            kwargs['via'] = via.context
        future = self._in_pool(self.router.connect, method_name, name=name,
                               **kwargs)
        try:
            context = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The handshake cannot be interrupted: let it end, then drop
            # the context nobody will use.
            future.add_done_callback(self._disconnect_unwanted)
            raise
        return Context(self, context, via if isinstance(via, Context)
                       else None)

    def _disconnect_unwanted(
            self, future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        self.router.disconnect(future.result())

    async def local(self, **kwargs: Any) -> Context:
        """Start a child Python on this machine; see
        :class:`mitogen.parent.Options`."""
        return await self.connect('local', **kwargs)

    async def fork(self, **kwargs: Any) -> Context:
        """Fork a new child context; see :class:`mitogen.fork.Options`."""
        return await self.connect('fork', **kwargs)

    def __getattr__(
            self, name: str) -> Callable[..., Coroutine[Any, Any, Context]]:
        # router.<method>(**kwargs) for every installed connection method.
        if name.startswith('_'):
            raise AttributeError(name)
        try:
            mitogen.parent.resolve_transport(name)
        except mitogen.core.Error:
            raise AttributeError('%r has no attribute %r and no connection '
                                 'method of that name is installed'
                                 % (type(self).__name__, name)) from None
        return functools.partial(self.connect, name)

    async def close(self) -> None:
        """Wait for connections being set up (each ends by its
        ``connect_timeout``), then stop the connection threads. The router
        is left running."""
        await self._settle()
        self._pool.shutdown(wait=True)

    async def _settle(self) -> None:
        while self._pending:
            # Their outcomes were given to whoever awaited them (or dropped
            # with the cancelled task): only their end matters here.
            await asyncio.gather(*[asyncio.wrap_future(f)
                                   for f in list(self._pending)],
                                 return_exceptions=True)

    async def shutdown(self) -> None:
        """:meth:`close`, then shut down the broker (ending every context)
        and wait for its thread to exit."""
        await self._settle()
        self.broker.shutdown()
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def join() -> None:
            self.broker.join()
            loop.call_soon_threadsafe(_resolve, exited)
        threading.Thread(target=join, name='mitogen.aio.join').start()
        await exited
        await self.close()
