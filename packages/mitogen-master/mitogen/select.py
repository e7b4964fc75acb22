# Copyright the mitogen contributors. BSD-3-Clause.
"""
Waiting on many sources at once: :class:`Select` gathers
:class:`mitogen.core.Receiver`, :class:`mitogen.core.Latch` and other
:class:`Select` objects, and returns whatever any of them receives first.
The usual use is scatter/gather: start calls in many contexts with
``call_async()``, then handle each result as it arrives::

    recvs = [ctx.call_async(check_disk) for ctx in contexts]
    for msg in mitogen.select.Select(recvs):
        print(msg.receiver, msg.unpickle())

This module runs in children too (Python 2.7 and 3.6+).
"""

# As in every child-side module of the package: without it, Python 2 would
# take a plain "import select" here for this module, not the standard one.
from __future__ import absolute_import

__all__ = ['Error', 'Event', 'Select', 'SelectError']

import threading

import mitogen.core


class Error(mitogen.core.Error):
    """Raised when a :class:`Select` is misused: adding a member that is
    already in a select, adding a select that would make a cycle, removing
    an object that is not a member, or :meth:`Select.get` on a select that
    has no members (which could otherwise never return)."""


#: Another name for :class:`Error`.
SelectError = Error


class Event(object):
    """One result returned by :meth:`Select.get_event`."""

    #: The :class:`mitogen.core.Receiver` or :class:`mitogen.core.Latch`
    #: that received :attr:`data`. For a result that passed through nested
    #: selects, this is the innermost member, never a :class:`Select`.
    source = None

    #: What was received: a :class:`mitogen.core.Message` from a receiver,
    #: or the object put on a latch.
    data = None

    def __init__(self, source=None, data=None):
        self.source = source
        self.data = data

    def __repr__(self):
        return 'Event(source=%r, data=%r)' % (self.source, self.data)


# A token that only asks waiters to look again (the select lost its last
# member); it is never returned to a caller.
_WAKE = object()


class Select(object):
    """Wait on many receivers, latches and nested selects at once.

    :param receivers: initial members: any mix of
        :class:`mitogen.core.Receiver` (a channel or the receiver
        ``call_async()`` returns), :class:`mitogen.core.Latch` and
        :class:`Select`; each is added with :meth:`add`.
    :param bool oneshot: when true, a receiver or latch is removed from the
        select once it produced a result, so iteration ends after one result
        from each; a nested select is removed once it has no members left.
        When false, members stay until :meth:`remove` or :meth:`close`.

    How it works: a member is hooked up by setting its ``notify`` attribute,
    which the member calls after each arrival (on the broker thread for a
    receiver, on the putting thread for a latch). The select then queues the
    member on an internal :class:`mitogen.core.Latch`; :meth:`get_event`
    waits on that latch and takes the result from the member without
    blocking. An object can belong to one select at a time.

    Whatever the mode, a member that can never deliver again is removed when
    that shows: a receiver that got a dead message (the context at the other
    end disconnected, or the sender closed the channel) or was closed, a
    closed latch, a closed select. The error is then raised by
    :meth:`get_event` (:class:`mitogen.core.ChannelError` for a receiver,
    :class:`mitogen.core.LatchError` for a latch), so a caller waiting on a
    context that died fails promptly instead of hanging. Closing a receiver
    or latch yourself announces nothing to the select: :meth:`remove` it
    first.

    Close a select when done with it (or use it as a context manager), so
    members that outlive it no longer call into it::

        with mitogen.select.Select(oneshot=False) as select:
            select.add(recv1)
            select.add(latch)
            event = select.get_event(timeout=30)
    """

    #: Called with this select after a result becomes available from any
    #: member: set by an enclosing :class:`Select`, None otherwise.
    notify = None

    owned_msg = 'Cannot add %r: it is already in a Select'
    loop_msg = 'Adding this item would create a Select cycle'
    not_present_msg = 'Cannot remove %r: it is not in this Select'
    empty_msg = 'Cannot get(): this Select has no members'

    def __init__(self, receivers=(), oneshot=True):
        self._oneshot = oneshot
        self._members = []
        # Serializes membership changes and the take-then-remove of oneshot
        # mode, so two threads in get() never both take from one member.
        # Re-entrant: remove() may run inside get_event() of this select.
        self._lock = threading.RLock()
        self._latch = mitogen.core.Latch()
        try:
            for recv in receivers:
                self.add(recv)
        except Exception:
            self.close()
            raise

    def __repr__(self):
        return 'Select(%#x, %d members)' % (id(self), len(self._members))

    @classmethod
    def all(cls, receivers):
        """Wait for one result from each of `receivers` and return them in
        the order they arrived.

        A receiver's message is unpickled; a latch's item is returned as it
        is. Equivalent to ``[msg.unpickle() for msg in Select(receivers)]``::

            recvs = [ctx.call_async(os.getpid) for ctx in contexts]
            pids = mitogen.select.Select.all(recvs)

        :raises mitogen.core.CallError: a call failed (the first failure to
            arrive is raised; the select is closed).
        :raises mitogen.core.ChannelError: a receiver's context disconnected.
        """
        results = []
        with cls(receivers, oneshot=True) as select:
            for event in select.iter_events():
                if isinstance(event.source, mitogen.core.Receiver):
                    results.append(event.data.unpickle())
                else:
                    results.append(event.data)
        return results

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __bool__(self):
        """True while the select has members."""
        return bool(self._members)

    __nonzero__ = __bool__

    def __len__(self):
        """Number of members."""
        return len(self._members)

    def __iter__(self):
        """Same as :meth:`iter_data`: ``for msg in select`` yields each
        result as it arrives, until no members remain."""
        return self.iter_data()

    def iter_data(self):
        """Yield :attr:`Event.data` of each result, as :meth:`get` would,
        until the select has no members left: in oneshot mode, once each
        member produced its result; otherwise once every member was removed.
        """
        for event in self.iter_events():
            yield event.data

    def iter_events(self):
        """Yield an :class:`Event` for each result, as :meth:`get_event`
        would, until the select has no members left."""
        while True:
            event = self._next_event(None, True)
            if event is None:
                return
            yield event

    def _put(self, member):
        # Installed as each member's notify hook; runs on whichever thread
        # delivered to the member, often the broker, so it must not raise.
        try:
            self._latch.put(member)
        except mitogen.core.LatchError:
            return
        notify = self.notify
        if notify is not None:
            notify(self)

    def _put_wake(self):
        try:
            self._latch.put(_WAKE)
        except mitogen.core.LatchError:
            pass

    def __contains__(self, obj):
        """True if `obj` is a direct member of this select."""
        with self._lock:
            return self._has(obj)

    def _has(self, obj):
        for member in self._members:
            if member is obj:
                return True
        return False

    def _reaches(self, obj):
        """True if `obj` is this select or inside it at any depth."""
        if obj is self:
            return True
        for member in list(self._members):
            if isinstance(member, Select) and member._reaches(obj):
                return True
        return False

    def add(self, recv):
        """Add a member.

        :param recv: a :class:`mitogen.core.Receiver`,
            :class:`mitogen.core.Latch` or :class:`Select`. Results it
            already holds are available at once.
        :raises Error: `recv` is already in a select (this one or another),
            or it is a select that contains this one (a cycle).
        :raises TypeError: `recv` is none of the supported types.
        """
        if not isinstance(recv, (mitogen.core.Receiver, mitogen.core.Latch,
                                 Select)):
            raise TypeError('Select members are Receiver, Latch or Select, '
                            'not %r' % (type(recv),))
        with self._lock:
            if isinstance(recv, Select) and recv._reaches(self):
                raise Error(self.loop_msg)
            if recv.notify is not None:
                raise Error(self.owned_msg % (recv,))
            # Hook up first, then count what is already buffered: an arrival
            # in between is queued twice, which get_event() tolerates, while
            # the other order could miss it.
            recv.notify = self._put
            self._members.append(recv)
        try:
            buffered = recv.size()
        except mitogen.core.LatchError:
            # Closed: queue it once so that get() reports the closure.
            buffered = 1
        for _ in range(buffered):
            self._put(recv)

    def remove(self, recv):
        """Remove a member; results it holds stay with it.

        :raises Error: `recv` is not a member of this select.
        """
        with self._lock:
            if not self._discard(recv):
                raise Error(self.not_present_msg % (recv,))

    def _discard(self, recv):
        with self._lock:
            for i, member in enumerate(self._members):
                if member is recv:
                    del self._members[i]
                    recv.notify = None
                    if not self._members:
                        # Wake get() callers (and an enclosing select), who
                        # could otherwise wait forever on an empty select.
                        self._put(_WAKE)
                    return True
            return False

    def close(self):
        """Remove every member and close the select: threads waiting in
        :meth:`get` wake with :class:`mitogen.core.LatchError`, as do later
        calls. Called on leaving a ``with`` block. An enclosing select drops
        a closed select the next time it looks at it."""
        with self._lock:
            members = self._members
            self._members = []
            for member in members:
                member.notify = None
            self._latch.close()
        notify = self.notify
        if notify is not None:
            notify(self)

    def size(self):
        """Number of results :meth:`get` could return now without blocking
        (a snapshot: other threads may change it at any moment).

        :raises mitogen.core.LatchError: the select was closed.
        """
        with self._lock:
            if self._latch.closed:
                raise mitogen.core.LatchError()
            total = 0
            for member in self._members:
                try:
                    n = member.size()
                except mitogen.core.LatchError:
                    n = 1  # closed: get() would raise rather than block
                if self._oneshot and not isinstance(member, Select):
                    n = min(n, 1)
                total += n
            return total

    def empty(self):
        """True when :meth:`get` would block (a snapshot, as for
        :meth:`size`)."""
        return self.size() == 0

    def get(self, timeout=None, block=True):
        """Return the next result: :attr:`Event.data` of
        :meth:`get_event`, so a :class:`mitogen.core.Message` (its
        ``receiver`` attribute names the receiver it came from) or a latch's
        item. Raises as :meth:`get_event` does."""
        return self.get_event(timeout, block).data

    def get_event(self, timeout=None, block=True):
        """Return an :class:`Event` for the next result from any member,
        waiting for one if needed.

        :param float timeout: seconds to wait; None waits until a result
            arrives or the select loses its last member.
        :param bool block: when false, raise
            :class:`mitogen.core.TimeoutError` at once if nothing is ready.
        :raises mitogen.core.TimeoutError: nothing arrived in time.
        :raises mitogen.core.ChannelError: a receiver got a dead message
            (its context disconnected) or was closed; it was removed.
        :raises mitogen.core.LatchError: this select, or a member latch, was
            closed.
        :raises Error: the select has no members (or lost the last one
            while waiting).
        """
        event = self._next_event(timeout, block)
        if event is None:
            raise Error(self.empty_msg)
        return event

    def _next_event(self, timeout, block):
        """The next event, or None once no member is left."""
        deadline = None
        if timeout is not None:
            deadline = mitogen.core.now() + timeout
        while True:
            with self._lock:
                if not self._members and not self._latch.closed:
                    return None
            remaining = None
            if deadline is not None:
                remaining = max(0, deadline - mitogen.core.now())
            token = self._latch.get(timeout=remaining, block=block)
            if token is _WAKE:
                with self._lock:
                    if not self._members:
                        # A put wakes one waiter: pass the wake-up on, so
                        # every thread waiting on the empty select returns.
                        self._put_wake()
                        return None
                continue
            event = self._take(token)
            if event is not None:
                return event

    def _take(self, token):
        """Take the result that `token` announced, or None when there is
        none: tokens can be stale (the member was removed) or duplicated
        (see :meth:`add`), and another thread may have raced us to it."""
        with self._lock:
            if not self._has(token):
                return None
            if isinstance(token, Select):
                return self._take_from_select(token)
            try:
                if isinstance(token, mitogen.core.Receiver):
                    data = token.get(block=False, throw_dead=False)
                else:
                    data = token.get(block=False)
            except mitogen.core.TimeoutError:
                return None
            except (mitogen.core.ChannelError, mitogen.core.LatchError):
                self._discard(token)  # closed: it can never deliver again
                raise
            if isinstance(token, mitogen.core.Receiver):
                data.receiver = token
                if data.is_dead:
                    self._discard(token)
                    data.unpickle()  # raises ChannelError with the reason
            if self._oneshot:
                self._discard(token)
            return Event(source=token, data=data)

    def _take_from_select(self, sub):
        event = None
        try:
            event = sub._next_event(0, False)
        except mitogen.core.TimeoutError:
            pass
        except mitogen.core.LatchError:
            if not sub._latch.closed:
                raise  # a latch inside it was closed
        finally:
            if sub._latch.closed or (self._oneshot and not sub._members):
                self._discard(sub)
        return event
