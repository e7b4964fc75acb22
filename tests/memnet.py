"""
An in-memory network of routers, in the manner of h11's paired-endpoint
tests: real :class:`mitogen.core.Router`, :class:`mitogen.core.Stream`,
:class:`mitogen.core.MitogenProtocol` and frame decoder, joined by streams
whose sides are byte queues instead of file descriptors.

There is no process, no descriptor and no broker thread: every router
shares a :class:`StubBroker` that runs on the test's thread, and bytes move
only when the test calls :meth:`Network.pump`. A test is therefore exactly
reproducible, a trust rule is checked in microseconds, and a fuzzer can
push hundreds of thousands of frames a second through the real routing
code.

Each router has its own identity (``context_id``, ``parent_ids``) given to
its constructor, which is what lets a whole tree live in one process. The
master is a :class:`mitogen.parent.Router`, which hands out context IDs and
so knows which child owns each (:meth:`mitogen.parent.Router.route_owner`);
the other contexts are :class:`BranchRouter` objects. IDs are handed out
as ALLOCATE_ID does: a context's children get IDs from a block its parent
obtained from the master, and every hop on the way notes which child each
block went to.

Every router records what reaches the handlers that act with authority
(:data:`~mitogen.core.CALL_FUNCTION`, :data:`~mitogen.core.SHUTDOWN`,
:data:`~mitogen.core.LOAD_MODULE`, guarded by the policy the real ones use,
:func:`mitogen.core.has_parent_authority`) and by an open handle
(:data:`OPEN_HANDLE`, no policy) in :attr:`Node.delivered`.
"""
import collections
import logging

import mitogen.core
import mitogen.parent
from mitogen.core import CALL_FUNCTION, LOAD_MODULE, SHUTDOWN

#: The handles guarded by :func:`mitogen.core.has_parent_authority`.
PRIVILEGED_HANDLES = (CALL_FUNCTION, SHUTDOWN, LOAD_MODULE)

#: A handle every node listens on without a policy, as a service or a
#: receiver a program opened would.
OPEN_HANDLE = 4242


class StubTimers(object):
    """The broker's timer list, keeping what is scheduled and running
    nothing: no test waits for wall-clock time."""

    def __init__(self):
        self.scheduled = []

    def schedule(self, delay, func, *args):
        self.scheduled.append((delay, func, args))


class StubBroker(object):
    """What a :class:`mitogen.core.Router` and its streams need of a
    :class:`mitogen.core.Broker`, on the caller's thread: the test's thread
    counts as the broker thread, functions deferred to it run at the next
    :meth:`Network.pump`, and there is nothing to poll."""

    _exitted = False

    def __init__(self):
        self.deferred = collections.deque()
        self.timers = StubTimers()
        #: Number of :meth:`shutdown` calls (a router asks for one when its
        #: parent stream disconnects).
        self.shutdowns = 0

    def __repr__(self):
        return 'StubBroker()'

    def on_thread(self):
        return True

    def defer(self, func, *args, **kwargs):
        self.deferred.append((func, args, kwargs))

    def run_deferred(self):
        ran = bool(self.deferred)
        while self.deferred:
            func, args, kwargs = self.deferred.popleft()
            func(*args, **kwargs)
        return ran

    def start_receive(self, stream):
        pass

    def start_transmit(self, stream):
        pass

    def stop_transmit(self, stream):
        pass

    def stop_polling(self, stream):
        pass

    def shutdown(self):
        self.shutdowns += 1


class Pipe(object):
    """One direction of a link: byte strings written and not yet read, and
    whether the writer closed its end."""

    def __init__(self):
        self.chunks = collections.deque()
        self.writer_closed = False
        self.reader_closed = False

    @property
    def readable(self):
        return bool(self.chunks) or self.writer_closed


class QueueSide(object):
    """A :class:`mitogen.core.Side` reading from one :class:`Pipe` and
    writing to another."""

    fd = None
    keep_alive = True

    def __init__(self, stream, inbox, outbox):
        self.stream = stream
        self.inbox = inbox
        self.outbox = outbox
        self.closed = False

    def read(self, n=mitogen.core.CHUNK_SIZE):
        # Only called when the inbox is readable: an empty read is EOF.
        if self.closed or not self.inbox.chunks:
            return b''
        return self.inbox.chunks.popleft()

    def write(self, s):
        if self.closed or self.outbox.reader_closed:
            return None
        self.outbox.chunks.append(bytes(s))
        return len(s)

    def close(self):
        if not self.closed:
            self.closed = True
            self.outbox.writer_closed = True
            self.inbox.reader_closed = True


class BranchRouter(mitogen.core.Router):
    """The router of a child context, with what
    :meth:`mitogen.parent.Router.route_owner` knows in a child (which of
    its children each block of IDs was passed down to). That one decides
    between its master and child behaviour by the process-wide
    :data:`mitogen.is_master`, which is true for every router of the test
    process, so the child behaviour is stated here."""

    def __init__(self, *args, **kwargs):
        super(BranchRouter, self).__init__(*args, **kwargs)
        #: (start, end, owner ID) of every block passed to a child.
        self.given_blocks = []

    def route_owner(self, target_id):
        for start, end, owner in self.given_blocks:
            if start <= target_id < end:
                return owner
        return 0


class Node(object):
    """One context of the network: its router and the stream to its parent,
    and what its recording handlers received."""

    def __init__(self, network, router, parent):
        self.network = network
        self.router = router
        self.parent = parent
        #: The stream to the parent (None for the master).
        self.up = None
        #: The parent's stream to this context (None for the master).
        self.down = None
        #: (handle, Message) for every message a recording handler got.
        self.delivered = []
        #: IDs left for this context's children.
        self.ids = []
        for handle in PRIVILEGED_HANDLES:
            router.add_handler(self._record, handle, overwrite=True,
                               policy=mitogen.core.has_parent_authority)
        router.add_handler(self._record, OPEN_HANDLE)

    def _record(self, msg):
        self.delivered.append((msg.handle, msg))

    @property
    def context_id(self):
        return self.router.context_id

    def __repr__(self):
        return 'Node(%d)' % (self.context_id,)

    def delivered_to(self, handle):
        """Messages delivered to `handle`'s recording handler."""
        return [msg for h, msg in self.delivered if h == handle]

    def ancestors(self):
        node, out = self.parent, []
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def write_up(self, data):
        """Put raw bytes on the stream to the parent, as a compromised
        context could: the parent's router reads them at the next pump."""
        self.up.receive_side.outbox.chunks.append(bytes(data))

    def send_up(self, msg):
        """Write `msg`'s frame as it is, header fields included, onto the
        stream to the parent, bypassing this context's router."""
        self.write_up(b''.join(msg.encode()))


class Network(object):
    """Contexts joined by in-memory streams; see the module docstring."""

    def __init__(self):
        self.broker = StubBroker()
        self.streams = []
        self.nodes = {}
        router = mitogen.parent.Router(self.broker)
        router.context_id = 0
        router.parent_ids = []
        self.master = self._add(router, None)

    def _add(self, router, parent):
        node = Node(self, router, parent)
        self.nodes[router.context_id] = node
        return node

    def request_block(self, node):
        """Return `(start, end)`, a block of IDs for `node`'s children,
        obtained as ALLOCATE_ID does: `node` asks its parent, which asks
        its own, up to the master; each hop notes which child it went to."""
        if node.parent is self.master:
            return self.master.router.id_allocator.allocate_block(
                node.context_id)
        start, end = self.request_block(node.parent)
        node.parent.router.given_blocks.append((start, end, node.context_id))
        return start, end

    def _new_id(self, parent):
        if parent is self.master:
            return self.master.router.id_allocator.allocate()
        if not parent.ids:
            parent.ids.extend(range(*self.request_block(parent)))
        return parent.ids.pop(0)

    def child(self, parent, unidirectional=False):
        """Start a context below `parent` (a :class:`Node`); its parent
        announces it to every ancestor with ADD_ROUTE, and its loss with
        DEL_ROUTE, as a real parent does. Returns its :class:`Node`."""
        context_id = self._new_id(parent)
        parent_ids = [parent.context_id] + list(parent.router.parent_ids)
        router = BranchRouter(self.broker, context_id=context_id,
                              parent_ids=parent_ids)
        router.unidirectional = unidirectional
        node = self._add(router, parent)
        self.connect(parent, node)
        parent.router.propagate_route(context_id, None)
        self.pump()
        return node

    def connect(self, parent, node):
        """Join `node` to `parent` with a pair of streams."""
        down_pipe, up_pipe = Pipe(), Pipe()
        down = mitogen.core.Stream(
            mitogen.core.MitogenProtocol(parent.router, node.context_id),
            name=u'to-%d' % (node.context_id,))
        down.receive_side = down.transmit_side = \
            QueueSide(down, inbox=up_pipe, outbox=down_pipe)
        up = mitogen.core.Stream(
            mitogen.core.MitogenProtocol(node.router, parent.context_id),
            name=u'parent')
        up.protocol.is_privileged = True
        up.receive_side = up.transmit_side = \
            QueueSide(up, inbox=down_pipe, outbox=up_pipe)
        node.router.parent_stream = up
        node.router.register(node.router.context_by_id(parent.context_id),
                             up)
        parent.router.register(parent.router.context_by_id(node.context_id),
                               down)
        node.up, node.down = up, down
        self.streams.extend([up, down])
        # A real parent tells its ancestors when a child's stream is gone.
        mitogen.core.listen(
            down, 'disconnect',
            lambda: parent.router.propagate_del_route(node.context_id))

    def pump(self, limit=1000000):
        """Move bytes and run deferred calls until the network is idle.

        :raises AssertionError: when it is still busy after `limit` rounds
            (a message loop)."""
        for _ in range(limit):
            busy = self.broker.run_deferred()
            for stream in self.streams:
                if not stream.disconnected and \
                        stream.receive_side.inbox.readable:
                    stream.on_receive(self.broker)
                    busy = True
            if not busy:
                return
        raise AssertionError('the network did not settle in %d rounds'
                             % (limit,))

    def send(self, node, msg):
        """Route `msg` from `node`'s router, as its program would."""
        node.router.route(msg)
        self.pump()

    def call(self, node, dst, handle=OPEN_HANDLE, **kwargs):
        """Send a pickled message from `node` to `dst` (a node or an ID)
        with a reply handle; return the :class:`mitogen.core.Receiver` its
        reply lands in."""
        recv = mitogen.core.Receiver(node.router, persist=False)
        msg = mitogen.core.Message.pickled(
            kwargs.pop('obj', u'hello'),
            dst_id=getattr(dst, 'context_id', dst),
            handle=handle, reply_to=recv.handle, router=node.router,
            **kwargs)
        self.send(node, msg)
        return recv


#: The names of the contexts of :func:`tree`, in the order they start.
TREE = 'M P C D S N U K'.split()


def tree():
    """A network holding the tree the trust tests attack, the one
    :mod:`test_tree_trust` builds with processes (its docstring draws it),
    as `(network, {name: Node})`: the master M has children P and U; P's
    children are C (the compromised context) and S; C has D, S has N, U
    has K."""
    net = Network()
    nodes = {'M': net.master}
    for name, parent in zip(TREE[1:], 'M P C P S M U'.split()):
        nodes[name] = net.child(nodes[parent])
    return net, nodes


def reply_of(recv):
    """The reply `recv` holds: ('reply', value), ('dead', reason) or
    ('none', None)."""
    try:
        msg = recv.get(block=False, throw_dead=False)
    except mitogen.core.TimeoutError:
        return ('none', None)
    if msg.is_dead:
        return ('dead', msg._dead_reason())
    return ('reply', msg.unpickle())


class DropLog(logging.Handler):
    """Collects the ERROR records of the ``mitogen`` logger (drops and
    tracebacks) while installed; used as a context manager."""

    def __init__(self):
        logging.Handler.__init__(self, logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        logging.getLogger('mitogen').addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger('mitogen').removeHandler(self)

    def drops(self, *needles):
        """Texts of the drops logged, holding every one of `needles`."""
        out = []
        for record in self.records:
            text = record.getMessage()
            if record.levelno == logging.ERROR and 'dropped' in text and \
                    all(n in text for n in needles):
                out.append(text)
        return out

    def crashes(self):
        """Records logged with a traceback: a handler or callback failed."""
        return [r for r in self.records if r.exc_info]
