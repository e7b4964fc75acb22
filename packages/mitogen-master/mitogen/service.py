# Copyright the mitogen contributors. BSD-3-Clause.
"""
The service framework: objects living in one context whose exposed methods
other contexts call by name, served by a pool of threads.

A *service* is a class deriving from :class:`Service`. Only methods carrying
at least one :func:`expose` policy can be called from another context, and
only by a context that one of their policies authorises. Calls arrive as
:data:`mitogen.core.CALL_SERVICE` messages whose body is ``(service name,
method name, kwargs)``, made with :meth:`mitogen.core.Context.call_service`
or :func:`call`.

A :class:`Pool` owns the threads that run the calls. A program builds one by
hand in the master; in a child, the first service call from a parent starts
one (see :func:`get_or_create_pool`), and a parent may *activate* a service
there simply by calling it: its class is imported and constructed on
demand. A call that is not authorised is answered with a
:class:`mitogen.core.CallError` and runs nothing.

Two services are built in: :class:`FileService` streams registered files
of any size to children with a bounded window, and
:class:`PushFileService` pushes small files down the tree, caching them in
every context on the way.

This module runs in children too: it is written for Python 2.7 and 3.6+.
"""

__all__ = [
    'Activator', 'AllowAny', 'AllowParents', 'DEFAULT_POOL_SIZE',
    'DeduplicatingInvoker', 'Error', 'FileService', 'FileStreamState',
    'Invoker', 'Policy', 'Pool', 'PushFileService', 'SerializedInvoker',
    'Service', 'arg_spec', 'call', 'expose', 'func_code', 'func_name',
    'get_or_create_pool', 'get_thread_name', 'no_reply',
    'validate_arg_spec',
]

import grp
import logging
import os
import pwd
import stat
import sys
import threading

import mitogen
import mitogen.core
import mitogen.select

LOG = logging.getLogger(__name__)

#: Threads of a pool that :func:`get_or_create_pool` builds without a size.
DEFAULT_POOL_SIZE = 2

_pool = None
_pool_pid = None
_pool_lock = threading.RLock()


class Error(Exception):
    """Raised when an error occurs configuring a service or pool, or when a
    request to a service is malformed."""


# ---------------------------------------------------------------------------
# Policies and method annotations
# ---------------------------------------------------------------------------

class Policy(object):
    """Base security policy: authorises nothing. Subclasses decide, per
    message, whether its sender may call an exposed method."""

    def is_authorized(self, service, msg):
        """Return true if `msg` may invoke a method of `service`."""
        return False


class AllowAny(Policy):
    """Any context may call the method."""

    def is_authorized(self, service, msg):
        return True


class AllowParents(Policy):
    """Only an ancestor of this context (or this context itself, which
    includes a process attached to it through :mod:`mitogen.unix`) may call
    the method. Authority is the message's ``auth_id``, which the router
    verified on arrival, against the identity of the router that received
    it (:func:`mitogen.core.has_parent_authority`)."""

    def is_authorized(self, service, msg):
        return mitogen.core.has_parent_authority(msg)


def expose(policy):
    """Annotate a method to permit access to contexts matching `policy`. The
    annotation may be repeated: any one policy that authorises a message
    suffices. Methods lacking any policy are not accessible::

        @mitogen.service.expose(policy=mitogen.service.AllowParents())
        def unsafe_operation(self):
            ...

    :param Policy policy: the policy to require.
    """
    def wrapper(func):
        func.mitogen_service__policies = (
            [policy] + getattr(func, 'mitogen_service__policies', [])
        )
        return func
    return wrapper


def arg_spec(spec):
    """Annotate a method as requiring arguments of given types. Only
    required arguments are checked; a call missing one, or passing one of
    another type, is refused before the method runs::

        @mitogen.service.arg_spec({'path': str})
        def fetch_path(self, path, optional=None):
            ...

    :param dict spec: mapping from argument name to expected type (or tuple
        of types).
    """
    def wrapper(func):
        func.mitogen_service__arg_spec = spec
        return func
    return wrapper


def no_reply():
    """Annotate a method as one that never answers its caller: whatever it
    sends, it sends explicitly. For fire-and-forget endpoints."""
    def wrapper(func):
        func.mitogen_service__no_reply = True
        return func
    return wrapper


def validate_arg_spec(spec, args):
    """Check `args` (a dict) against `spec` (see :func:`arg_spec`).

    :raises Error: an argument is missing or has the wrong type.
    """
    for name in spec:
        if name not in args:
            raise Error('argument %r is required' % (name,))
        if not isinstance(args[name], spec[name]):
            raise Error('argument %r type incorrect, got %r, expected %r' % (
                name, type(args[name]), spec[name]))


def func_code(func):
    """The code object of a function or method."""
    func = getattr(func, '__func__', func)
    return func.__code__


def func_name(func):
    """The name of a function or method."""
    return func.__name__


def get_thread_name():
    """The name of the calling thread."""
    return threading.current_thread().name


def _takes_msg(method):
    code = func_code(method)
    return 'msg' in code.co_varnames[:code.co_argcount]


# ---------------------------------------------------------------------------
# Invokers: how an authorised call runs on the pool
# ---------------------------------------------------------------------------

class Invoker(object):
    """Checks and runs calls to one service; the base class runs each call
    at once on the pool thread that received it, so calls run
    concurrently."""

    #: Text of the :class:`mitogen.core.CallError` a refused call gets.
    unauthorized_msg = 'Caller is not authorized to invoke %r of service %r'

    def __init__(self, service):
        self.service = service

    def __repr__(self):
        return '%s(%s)' % (type(self).__name__, self.service.name())

    def _validate(self, method_name, kwargs, msg):
        method = getattr(self.service, method_name, None)
        policies = getattr(method, 'mitogen_service__policies', None)
        if method is None or not policies:
            raise mitogen.core.CallError(
                self.unauthorized_msg % (method_name, self.service.name()))
        if msg is not None and not any(p.is_authorized(self.service, msg)
                                       for p in policies):
            raise mitogen.core.CallError(
                self.unauthorized_msg % (method_name, self.service.name()))
        spec = getattr(method, 'mitogen_service__arg_spec', {})
        validate_arg_spec(spec, kwargs)
        return method

    def _invoke(self, method_name, kwargs, msg):
        """Validate and run one call; return its result (an exception is
        returned as a :class:`mitogen.core.CallError`)."""
        try:
            method = self._validate(method_name, kwargs, msg)
            if _takes_msg(method):
                kwargs['msg'] = msg
            response = method(**kwargs)
            if getattr(method, 'mitogen_service__no_reply', False):
                return Service.NO_REPLY
            return response
        except Exception:
            e = sys.exc_info()[1]
            if isinstance(e, mitogen.core.CallError):
                return e
            return mitogen.core.CallError(e)

    def _reply(self, msg, response):
        if response is Service.NO_REPLY:
            return
        if msg.reply_to:
            msg.reply(response)
        elif isinstance(response, mitogen.core.CallError):
            LOG.error('%r: call without reply failed: %s', self, response)

    def invoke(self, method_name, kwargs, msg):
        """Run `method_name` with `kwargs` for the request `msg` and send
        the reply."""
        self._reply(msg, self._invoke(method_name, kwargs, msg))


class SerializedInvoker(Invoker):
    """Runs one call at a time: while any request is pending, a single pool
    thread is borrowed to run them all in arrival order."""

    def __init__(self, **kwargs):
        super(SerializedInvoker, self).__init__(**kwargs)
        self._lock = threading.Lock()
        self._queue = []
        self._running = False

    def invoke(self, method_name, kwargs, msg):
        with self._lock:
            self._queue.append((method_name, kwargs, msg))
            if self._running:
                return
            self._running = True
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                method_name, kwargs, msg = self._queue.pop(0)
            Invoker.invoke(self, method_name, kwargs, msg)


class DeduplicatingInvoker(Invoker):
    """A service that deduplicates and caches expensive responses. Requests
    are grouped by :meth:`key_from_request`; only the first of a group runs,
    its response is sent to every requester and kept for later ones. Only
    one pool thread is blocked while it is produced, however many wait.
    A failure is sent to the waiters but not kept."""

    def __init__(self, service):
        super(DeduplicatingInvoker, self).__init__(service)
        self._lock = threading.Lock()
        self._responses = {}
        self._waiters = {}

    def key_from_request(self, method_name, kwargs):
        """The deduplication key of a request: by default a stable text form
        of the method name and arguments (``pprint.pformat()``)."""
        # Imported here: Debian's python3-minimal has no pprint, and a child
        # that never deduplicates must still import this module.
        import pprint
        return pprint.pformat((method_name, kwargs))

    def get_response(self, args):
        """Produce the response for `args`, a ``(method_name, kwargs, msg)``
        tuple."""
        method_name, kwargs, msg = args
        return self._invoke(method_name, kwargs, msg)

    def invoke(self, method_name, kwargs, msg):
        key = self.key_from_request(method_name, kwargs)
        with self._lock:
            if key in self._responses:
                response = self._responses[key]
                first = None
            elif key in self._waiters:
                self._waiters[key].append(msg)
                return
            else:
                self._waiters[key] = [msg]
                first = True
        if not first:
            self._reply(msg, response)
            return
        response = self.get_response((method_name, kwargs, msg))
        with self._lock:
            waiters = self._waiters.pop(key)
            if not isinstance(response, mitogen.core.CallError):
                self._responses[key] = response
        for waiter in waiters:
            self._reply(waiter, response)


# ---------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------

class Service(object):
    """Base class of services. A service is named after its class
    (``pkg.mod.Class``); its exposed methods are called by that name.

    Its ``select`` attribute is a :class:`mitogen.select.Select` the service
    may add receivers to at any time: when one becomes ready, a pool thread
    calls :meth:`on_message`.
    """
    #: Return this from a method to send no reply.
    NO_REPLY = object()
    #: The :class:`Invoker` subclass that runs this service's calls.
    invoker_class = Invoker

    @classmethod
    def name(cls):
        """The service's name: ``module.ClassName``."""
        return u'%s.%s' % (cls.__module__, cls.__name__)

    def __init__(self, router):
        self.router = router
        self.select = mitogen.select.Select(oneshot=False)

    def __repr__(self):
        return '%s()' % (type(self).__name__,)

    def on_message(self, event):
        """Called on a pool thread when a message arrives on any receiver
        of the service's ``select``.

        :param mitogen.select.Event event: the message and its receiver.
        """

    def on_shutdown(self):
        """Called once the pool's last thread has exited."""


class Activator(object):
    """Decides whether a service may be started on demand, and starts it:
    the service named ``pkg.mod.Class`` is imported and constructed with
    the pool's router. Only a parent (or this context itself) may activate
    a service."""

    #: Text of the :class:`mitogen.core.CallError` a caller gets that may not
    #: activate the service it called.
    not_active_msg = (
        'Service %r is not yet activated in this context, and the '
        'caller is not privileged, therefore autoactivation is disabled.'
    )

    def is_permitted(self, mod_name, class_name, msg):
        """True if `msg` may activate ``mod_name.class_name``."""
        return msg is None or AllowParents().is_authorized(None, msg)

    def activate(self, pool, service_name, msg):
        """Import, construct and add the service `service_name` to `pool`;
        return it.

        :raises mitogen.core.CallError: the caller may not activate it.
        """
        mod_name, _, class_name = service_name.rpartition('.')
        if not (mod_name and self.is_permitted(mod_name, class_name, msg)):
            raise mitogen.core.CallError(self.not_active_msg % (service_name,))
        module = mitogen.core.import_module(mod_name)
        klass = getattr(module, class_name)
        if not (isinstance(klass, type) and issubclass(klass, Service)):
            raise mitogen.core.CallError('%r is not a service' % (service_name,))
        service = klass(router=pool.router)
        pool.add(service)
        return service


# ---------------------------------------------------------------------------
# The pool
# ---------------------------------------------------------------------------

def _is_live(msg, stream):
    # A dead message on CALL_SERVICE would retire the receiver from the
    # pool's select: refuse them, whoever sends them.
    return not msg.is_dead


class Pool(object):
    """A pool of at least one thread that runs the calls of a collection of
    services.

    Every service's receivers and the :data:`mitogen.core.CALL_SERVICE`
    receiver are watched by one :class:`mitogen.select.Select`, and every
    thread takes work from it, so threads are shared fairly by all services
    and an idle service costs nothing.

    :param mitogen.core.Router router: router to listen on for
        :data:`mitogen.core.CALL_SERVICE` messages.
    :param list services: services to add at once.
    :param int size: number of threads.
    :param bool overwrite: replace an existing CALL_SERVICE handler.
    :param mitogen.core.Receiver recv: a CALL_SERVICE receiver to take over
        with the messages it holds (used by :func:`get_or_create_pool` for
        the receiver a child's core sets up).

    The pool stops by itself when its router's broker shuts down.
    """
    activator_class = Activator
    closed = False

    def __init__(self, router, services=(), size=1, overwrite=False,
                 recv=None):
        self.router = router
        self._activator = self.activator_class()
        self._lock = threading.RLock()
        self._invoker_by_name = {}
        self._shutdown_done = False
        self._ipc_latch = mitogen.core.Latch()
        self._select = mitogen.select.Select(oneshot=False)
        if recv is None:
            recv = mitogen.core.Receiver(
                router=router, handle=mitogen.core.CALL_SERVICE,
                overwrite=overwrite, policy=_is_live)
        else:
            recv.notify = None
        self._receiver = recv
        self._select.add(self._receiver)
        self._select.add(self._ipc_latch)
        for service in services:
            self.add(service)
        mitogen.core.listen(router.broker, 'shutdown', self._on_broker_shutdown)
        self._threads = []
        self._running = size
        for i in range(size):
            t = threading.Thread(target=self._worker_main,
                                 name='mitogen.Pool.%04x.%d' % (id(self) & 0xffff, i))
            t.daemon = True
            self._threads.append(t)
        for t in self._threads:
            t.start()
        _adopt(self)

    def __repr__(self):
        return 'Pool(%04x, size=%d, th=%r)' % (
            id(self) & 0xffff, len(self._threads), get_thread_name())

    @property
    def size(self):
        """Number of threads."""
        return len(self._threads)

    def add(self, service):
        """Add `service`; its exposed methods become callable.

        :raises Error: a service of the same name is already present.
        """
        name = service.name()
        with self._lock:
            if name in self._invoker_by_name:
                raise Error('service named %s already present' % (name,))
            self._invoker_by_name[name] = service.invoker_class(service=service)
        self._select.add(service.select)

    def _invoker(self, name, msg):
        with self._lock:
            invoker = self._invoker_by_name.get(name)
            if invoker is None:
                self._activator.activate(self, name, msg)
                invoker = self._invoker_by_name[name]
            return invoker

    def get_invoker(self, name, msg):
        """Return the :class:`Invoker` of service `name`, activating the
        service if `msg` (None for this context itself) may do so."""
        return self._invoker(mitogen.core.to_text(name), msg)

    def get_service(self, name):
        """Return the service `name`, activating it in this context if it
        is not running yet."""
        return self.get_invoker(name, None).service

    def defer(self, func, *args, **kwargs):
        """Arrange for ``func(*args, **kwargs)`` to run on a pool thread."""
        self._ipc_latch.put((func, args, kwargs))

    def _on_broker_shutdown(self):
        self.stop(join=False)

    def stop(self, join=True):
        """Stop serving: the CALL_SERVICE handle is released, threads exit
        after their current call, and each service's
        :meth:`Service.on_shutdown` runs once the last one has. With
        `join`, wait for all of that."""
        with self._lock:
            if self.closed:
                already = True
            else:
                already = False
                self.closed = True
        if not already:
            self._receiver.close()
            self._select.close()
            self._ipc_latch.close()
        if join:
            self.join()

    def join(self):
        """Wait for every thread (and the shutdown hooks) to finish."""
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join()

    def _unpack(self, msg):
        tup = msg.unpickle(throw=False)
        if not (isinstance(tup, tuple) and len(tup) == 3 and
                isinstance(tup[0], mitogen.core.FsPathTypes) and
                isinstance(tup[1], mitogen.core.FsPathTypes) and
                isinstance(tup[2], dict)):
            raise Error('Invalid service request: %r' % (msg,))
        service_name = mitogen.core.to_text(tup[0])
        method_name = str(mitogen.core.to_text(tup[1]))
        return service_name, method_name, mitogen.core.Kwargs(tup[2])

    def _on_service_call(self, msg):
        try:
            service_name, method_name, kwargs = self._unpack(msg)
            invoker = self.get_invoker(service_name, msg)
        except Exception:
            e = sys.exc_info()[1]
            self.router._refuse(msg, self.router.stream_by_id(msg.src_id),
                                '%r: call refused: %s', self, e)
            if msg.reply_to:
                msg.reply(e if isinstance(e, mitogen.core.CallError)
                          else mitogen.core.CallError(e))
            return
        invoker.invoke(method_name, kwargs, msg)

    def _service_of(self, source):
        with self._lock:
            invokers = list(self._invoker_by_name.values())
        for invoker in invokers:
            if source in invoker.service.select:
                return invoker.service
        return None

    def _dispatch(self, event):
        if event.source is self._receiver:
            self._on_service_call(event.data)
        elif event.source is self._ipc_latch:
            func, args, kwargs = event.data
            func(*args, **kwargs)
        else:
            service = self._service_of(event.source)
            if service is not None:
                service.on_message(event)

    def _worker_run(self):
        while not self.closed:
            try:
                event = self._select.get_event()
            except mitogen.core.LatchError:
                break
            except (mitogen.core.ChannelError, mitogen.select.Error):
                if self.closed:
                    break
                LOG.debug('%r: a receiver closed: %s', self, sys.exc_info()[1])
                continue
            try:
                self._dispatch(event)
            except Exception:
                LOG.exception('%r: %r failed', self, event)
            event = None

    def _worker_main(self):
        try:
            self._worker_run()
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0 and not self._shutdown_done
                if last:
                    self._shutdown_done = True
                invokers = list(self._invoker_by_name.values())
            if last:
                for invoker in invokers:
                    try:
                        invoker.service.on_shutdown()
                    except Exception:
                        LOG.exception('%r: %r.on_shutdown() failed', self,
                                      invoker.service)


def _have_pool():
    # Call with _pool_lock held. A pool inherited through fork has no
    # threads in this process.
    return _pool is not None and not _pool.closed and _pool_pid == os.getpid()


def _adopt(pool):
    # The first pool of a process, built by hand or not, is the one that
    # get_or_create_pool() and call() use.
    global _pool, _pool_pid
    with _pool_lock:
        if not _have_pool():
            _pool = pool
            _pool_pid = os.getpid()


def get_or_create_pool(size=None, router=None, context=None):
    """Return this process's service pool (the first :class:`Pool` built in
    it and not yet stopped), creating one if there is none (and again in a
    forked child). In a child, the pool takes over the
    :data:`mitogen.core.CALL_SERVICE` receiver the core set up, with any
    calls it holds; this happens by itself on the first service call from a
    parent.

    :param int size: threads of a new pool (default
        :data:`DEFAULT_POOL_SIZE`).
    :param mitogen.core.Router router: router of a new pool.
    :param mitogen.core.Context context: when `router` is None, a context
        whose router to use.
    :raises Error: no pool exists and no router was given.
    """
    global _pool, _pool_pid
    with _pool_lock:
        if not _have_pool():
            if router is None and context is not None:
                router = context.router
            if router is None:
                raise Error('no service pool exists in this process, and no '
                            'router was given to create one')
            stub = router.service_stub_recv
            if stub is not None and stub.handle is None:
                stub = None
            _pool = Pool(router, size=size or DEFAULT_POOL_SIZE, recv=stub,
                         overwrite=True)
            _pool_pid = os.getpid()
        return _pool


def call(service_name, method_name, call_context=None, **kwargs):
    """Call `method_name` of service `service_name` with `kwargs`.

    With `call_context`, the call is sent to that context's pool and the
    reply awaited (:meth:`mitogen.core.Context.call_service`). Without, it
    runs in this process's pool (which must exist), on the calling thread.

    :raises mitogen.core.CallError: the method failed or was refused.
    """
    if call_context is not None:
        return call_context.call_service(service_name, method_name, **kwargs)
    name = getattr(service_name, 'name', None)
    if callable(name):
        service_name = name()
    pool = get_or_create_pool()
    invoker = pool.get_invoker(service_name, None)
    response = invoker._invoke(str(method_name), mitogen.core.Kwargs(kwargs),
                               None)
    if isinstance(response, mitogen.core.CallError):
        raise response
    return None if response is Service.NO_REPLY else response


def _call_no_reply(target, service_name, method_name, kwargs):
    # A service call whose caller wants no reply (reply_to stays 0), so no
    # receiver is opened for it. `kwargs` is a dict: services take
    # arguments called `context`.
    tup = (service_name, method_name, mitogen.core.Kwargs(kwargs))
    target.send(mitogen.core.Message.pickled(
        tup, handle=mitogen.core.CALL_SERVICE))


# ---------------------------------------------------------------------------
# PushFileService
# ---------------------------------------------------------------------------

def _next_hop(router, context_id):
    """ID of the directly connected context through which `context_id` is
    reached, or None when it is this context or unreachable downwards."""
    if context_id == mitogen.context_id:
        return None
    stream = router.stream_by_id(context_id)
    if stream is None or stream is router.parent_stream:
        return None
    return stream.protocol.remote_id


class PushFileService(Service):
    """Push-based file service. Files are read once where they live, cached
    in RAM and sent down the tree, each intermediate context caching and
    forwarding them, so a file crosses each connection once however many
    contexts below it need it. A context that asks for a file with
    :meth:`get` waits until a parent has delivered it.
    """
    invoker_class = SerializedInvoker

    def __init__(self, **kwargs):
        super(PushFileService, self).__init__(**kwargs)
        self._lock = threading.Lock()
        self._cache = {}
        self._waiters = {}
        self._sent = set()

    def get(self, path):
        """Return the bytes of `path` from the cache, waiting until a parent
        delivers them.

        :raises mitogen.core.LatchError: the context shut down first.
        """
        path = mitogen.core.to_text(path)
        with self._lock:
            if path in self._cache:
                return self._cache[path]
            latch = mitogen.core.Latch()
            self._waiters.setdefault(path, []).append(latch)
        return latch.get()

    def _store(self, path, data):
        with self._lock:
            self._cache[path] = data
            waiters = self._waiters.pop(path, [])
        for latch in waiters:
            latch.put(data)

    def _forward(self, context, path):
        hop = _next_hop(self.router, context.context_id)
        if hop is None:
            return
        with self._lock:
            already = (hop, path) in self._sent
            self._sent.add((hop, path))
            data = self._cache[path]
        if already and hop == context.context_id:
            return
        if already:
            # The next hop holds it: it only needs to pass it on.
            kwargs = {'path': path, 'context': context}
            method = u'forward'
        else:
            kwargs = {'path': path, 'data': data, 'context': context}
            method = u'store_and_forward'
        # A failure is logged where it happens. Both go through this
        # service's SerializedInvoker there, in order.
        _call_no_reply(self.router.context_by_id(hop), self.name(), method,
                       kwargs)

    @expose(policy=AllowParents())
    @arg_spec({'path': mitogen.core.FsPathTypes,
               'context': mitogen.core.Context})
    def forward(self, path, context):
        """Send the cached `path` towards `context`.

        :raises Error: `path` is not in this context's cache."""
        path = mitogen.core.to_text(path)
        with self._lock:
            if path not in self._cache:
                raise Error('%r is not in the cache of %r' % (path, self))
        self._forward(context, path)

    @expose(policy=AllowParents())
    @arg_spec({'path': mitogen.core.FsPathTypes,
               'data': mitogen.core.BytesType,
               'context': mitogen.core.Context})
    @no_reply()
    def store_and_forward(self, path, data, context):
        """Cache `data` as the contents of `path` here, then send it on
        towards `context` unless that is this context."""
        path = mitogen.core.to_text(path)
        self._store(path, mitogen.core.Blob(data))
        self._forward(context, path)

    @expose(policy=AllowParents())
    @arg_spec({'context': mitogen.core.Context})
    def propagate_to(self, context, path, overridden_source=None):
        """Read `path` (once; later calls use the cache) and send it towards
        `context`. With `overridden_source`, send those bytes instead of
        the file's."""
        path = mitogen.core.to_text(path)
        with self._lock:
            cached = path in self._cache
        if overridden_source is not None:
            if not isinstance(overridden_source, mitogen.core.BytesType):
                overridden_source = overridden_source.encode('utf-8')
            self._store(path, mitogen.core.Blob(overridden_source))
        elif not cached:
            with open(path, 'rb') as fp:
                self._store(path, mitogen.core.Blob(fp.read()))
        self._forward(context, path)

    @expose(policy=AllowParents())
    @arg_spec({'context': mitogen.core.Context, 'paths': list})
    def propagate_paths_and_modules(self, context, paths, overridden_sources=None,
                                    extra_sys_paths=None, modules=None):
        """Make sure `context` has been sent a set of small files and Python
        modules.

        :param list paths: files to push (:meth:`propagate_to`).
        :param dict overridden_sources: path to bytes to push instead of the
            file's contents.
        :param list extra_sys_paths: directories appended to this process's
            ``sys.path``, so modules the target imports from them (Ansible
            collections, say) can be served.
        :param list modules: names of modules to send ahead of time
            (:meth:`mitogen.master.ModuleResponder.forward_modules`).
        """
        for p in extra_sys_paths or ():
            if p not in sys.path:
                sys.path.append(p)
        overridden_sources = overridden_sources or {}
        for path in paths:
            self.propagate_to(context, path, overridden_sources.get(path))
        responder = getattr(self.router, 'responder', None)
        if modules and responder is not None:
            responder.forward_modules(context, modules)

    def on_shutdown(self):
        with self._lock:
            waiters, self._waiters = self._waiters, {}
        for latches in waiters.values():
            for latch in latches:
                latch.close()


# ---------------------------------------------------------------------------
# FileService
# ---------------------------------------------------------------------------

class FileStreamState(object):
    """Transfers queued on one stream: they run one at a time, and at most
    :attr:`FileService.window_size_bytes` are unacknowledged at once."""

    def __init__(self):
        #: ``(sender, file object)`` pairs, the running one first.
        self.jobs = []
        #: Bytes sent on the stream and not yet acknowledged.
        self.unacked = 0
        #: Guards both, and the reading of the running file.
        self.lock = threading.Lock()


def _name_or_none(func, n, attr):
    try:
        return getattr(func(n), attr)
    except KeyError:
        return None


class FileService(Service):
    """Streaming file server, for small and huge files alike. A path is
    served to a child only once a trusted context (a parent, or the process
    itself) registered it, or a directory above it; a parent may fetch any
    file.

    Theory of operation:

    1. A trusted context calls :meth:`register` or :meth:`register_prefix`.
    2. The requester makes a :class:`mitogen.core.Receiver` and calls
       :meth:`fetch` with the path and the receiver's sender
       (:meth:`get` does all of this on the requester's side).
    3. :meth:`fetch` replies with the file's metadata, then sends chunks of
       :attr:`IO_SIZE` bytes until :attr:`window_size_bytes` are in flight.
    4. The requester writes each chunk out and calls :meth:`acknowledge`
       with its size; each acknowledgement lets the service send more, so
       neither side ever holds more than a window in memory.
    5. After the last chunk the sender is closed; the requester compares
       the bytes it received with the size in the metadata.

    Transfers that share a stream (say, to an ssh account and to a sudo
    account behind it) run one after the other, so a contended link
    completes files instead of spreading itself over many partial ones.
    When the pool stops, every running transfer is closed early; its
    requester sees a short file and discards it.
    """
    invoker_class = Invoker

    # Every chunk costs a message each way and a hand-over between the
    # broker and a pool thread on both sides, so chunks are as large as the
    # broker's read size. On 2 cores, over ssh and ssh -> sudo (see
    # bench/bench_fileservice.py), 256 KiB chunks with an 8 MiB window
    # moved 256 MiB about 15 % faster with a fifth less Python CPU time
    # than 128 KiB and 4 MiB; larger chunks or windows gained nothing more.

    #: Bytes per chunk.
    IO_SIZE = 256 * 1024
    #: Bytes one stream may have sent but not yet acknowledged.
    window_size_bytes = 8 * 1024 * 1024

    #: Error text for a path nobody registered.
    unregistered_msg = 'Path %r is not registered with FileService.'
    #: Error text for a sender that is not in the requesting context.
    context_mismatch_msg = 'sender= kwarg context must match requestee context'

    def __init__(self, router):
        super(FileService, self).__init__(router)
        self._lock = threading.Lock()
        self._paths = set()
        self._prefixes = set()
        self._state_by_stream = {}

    @expose(policy=AllowParents())
    @arg_spec({'path': mitogen.core.FsPathTypes})
    def register(self, path):
        """Authorise `path` to be fetched by any context. Registering a
        path again has no effect."""
        path = os.path.abspath(mitogen.core.to_text(path))
        with self._lock:
            if path not in self._paths:
                LOG.debug('%r: registering %r', self, path)
                self._paths.add(path)

    @expose(policy=AllowParents())
    @arg_spec({'path': mitogen.core.FsPathTypes})
    def register_prefix(self, path):
        """Authorise `path` and every path below it."""
        path = os.path.abspath(mitogen.core.to_text(path))
        with self._lock:
            if path not in self._prefixes:
                LOG.debug('%r: registering prefix %r', self, path)
                self._prefixes.add(path)

    def _is_authorized(self, path):
        with self._lock:
            if path in self._paths:
                return True
            while True:
                if path in self._prefixes:
                    return True
                parent = os.path.dirname(path)
                if parent == path:
                    return False
                path = parent

    def _generate_stat(self, path, fp):
        st = os.fstat(fp.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IOError('%r is not a regular file.' % (path,))
        return {
            u'size': st.st_size,
            u'mode': st.st_mode,
            u'owner': _name_or_none(pwd.getpwuid, st.st_uid, 'pw_name'),
            u'group': _name_or_none(grp.getgrgid, st.st_gid, 'gr_name'),
            u'mtime': float(st.st_mtime),
            u'atime': float(st.st_atime),
            u'ctime': float(st.st_ctime),
        }

    def _state_for(self, stream):
        state = self._state_by_stream.get(stream)
        if state is None:
            state = self._state_by_stream[stream] = FileStreamState()
            mitogen.core.listen(stream, 'disconnect',
                                lambda: self._on_stream_disconnect(stream))
        return state

    def _on_stream_disconnect(self, stream):
        with self._lock:
            state = self._state_by_stream.pop(stream, None)
        if state is not None:
            with state.lock:
                jobs, state.jobs = state.jobs, []
            for _, fp in jobs:
                fp.close()

    def _pump(self, state):
        """Send chunks until the window is full or the queue is empty."""
        while True:
            with state.lock:
                if not state.jobs or state.unacked >= self.window_size_bytes:
                    return
                sender, fp = state.jobs[0]
                chunk = fp.read(self.IO_SIZE)
                # Sent under the lock: two pool threads pumping at once
                # must not reorder chunks.
                if chunk:
                    state.unacked += len(chunk)
                    sender.send(mitogen.core.Blob(chunk))
                else:
                    state.jobs.pop(0)
                    fp.close()
                    sender.close()

    @expose(policy=AllowAny())
    @arg_spec({'path': mitogen.core.FsPathTypes,
               'sender': mitogen.core.Sender})
    def fetch(self, path, sender, msg):
        """Start a transfer of a registered path.

        :param str path: file path.
        :param mitogen.core.Sender sender: where to send the data; its
            context must be the requester.
        :returns: dict of the file's metadata: ``size``, ``mode``,
            ``owner``, ``group`` (names, or None), ``mtime``, ``atime``,
            ``ctime`` (floats).
        :raises Error: unregistered path, or a sender in another context.
        """
        path = os.path.abspath(mitogen.core.to_text(path))
        # A parent could read any file here by running code anyway.
        if not (self._is_authorized(path) or
                AllowParents().is_authorized(self, msg)):
            raise Error(self.unregistered_msg % (path,))
        if msg.src_id != sender.context.context_id:
            raise Error(self.context_mismatch_msg)
        fp = open(path, 'rb', 0)
        try:
            metadata = self._generate_stat(path, fp)
        except Exception:
            fp.close()
            raise
        stream = self.router.stream_by_id(sender.context.context_id)
        if stream is None:
            fp.close()
            raise Error('no route to %r' % (sender.context,))
        # The metadata goes first, so the requester knows the size before
        # the first chunk is written.
        msg.reply(metadata)
        with self._lock:
            state = self._state_for(stream)
        with state.lock:
            state.jobs.append((sender, fp))
        self._pump(state)
        return self.NO_REPLY

    @expose(policy=AllowAny())
    @arg_spec({'size': mitogen.core.integer_types})
    @no_reply()
    def acknowledge(self, size, msg):
        """Record that the requester received `size` bytes, and send more
        to refill the window. Called for every chunk received."""
        stream = self.router.stream_by_id(msg.src_id)
        with self._lock:
            state = self._state_by_stream.get(stream)
        if state is None:
            return
        with state.lock:
            state.unacked = max(0, state.unacked - size)
        self._pump(state)

    def on_shutdown(self):
        """Close every running transfer, so requesters stop waiting."""
        with self._lock:
            states, self._state_by_stream = self._state_by_stream, {}
        for state in states.values():
            with state.lock:
                jobs, state.jobs = state.jobs, []
            for sender, fp in jobs:
                fp.close()
                try:
                    sender.close()
                except Exception:
                    LOG.debug('%r: closing %r failed', self, sender)

    @classmethod
    def get(cls, context, path, out_fp):
        """Stream the file registered as `path` from the FileService of
        `context` into `out_fp`.

        :param mitogen.core.Context context: context running the service.
        :param str path: the registered path.
        :param out_fp: file object to write to.
        :returns: ``(ok, metadata)``: `ok` is False when the transfer was
            cut short and the output should be discarded; `metadata` is
            :meth:`fetch`'s dict.
        """
        name = cls.name()
        recv = mitogen.core.Receiver(router=context.router, respondent=context)
        try:
            metadata = context.call_service(
                service_name=name, method_name='fetch',
                path=path, sender=recv.to_sender(),
            )
            received = 0
            for msg in recv:
                chunk = msg.unpickle()
                out_fp.write(chunk)
                received += len(chunk)
                _call_no_reply(context, name, u'acknowledge',
                               {'size': len(chunk)})
        finally:
            recv.close()
        ok = received == metadata['size']
        if not ok:
            LOG.error('get(%r): got %d bytes of %d', path, received,
                      metadata['size'])
        return ok, metadata
