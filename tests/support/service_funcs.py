"""
Services and functions that tests/test_service.py runs in the master and in
children.  Everything here may run in a child of any supported Python, so it
stays Python 2.7 compatible.
"""
import hashlib
import threading
import time

import mitogen
import mitogen.core
import mitogen.service


class Counter(mitogen.service.Service):
    """Records what ran, so a refused call can be shown to run nothing."""

    def __init__(self, router):
        super(Counter, self).__init__(router)
        self.calls = []

    @mitogen.service.expose(policy=mitogen.service.AllowParents())
    def parents_only(self, value):
        self.calls.append((u'parents_only', value))
        return value * 2

    @mitogen.service.expose(policy=mitogen.service.AllowAny())
    @mitogen.service.arg_spec({'value': int})
    def anyone(self, value):
        self.calls.append((u'anyone', value))
        return value + 1

    @mitogen.service.expose(policy=mitogen.service.AllowAny())
    def caller_id(self, msg):
        return msg.src_id

    @mitogen.service.expose(policy=mitogen.service.AllowAny())
    def fail(self):
        raise ValueError('service failed on purpose')

    def not_exposed(self):
        self.calls.append((u'not_exposed', None))

    @mitogen.service.expose(policy=mitogen.service.AllowParents())
    def where(self):
        return mitogen.context_id

    @mitogen.service.expose(policy=mitogen.service.AllowParents())
    def history(self):
        return list(self.calls)


class Slow(mitogen.service.Service):
    """Sleeps in each call and records how many calls overlap."""
    delay = 0.05

    def __init__(self, router):
        super(Slow, self).__init__(router)
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.runs = 0

    @mitogen.service.expose(policy=mitogen.service.AllowAny())
    def work(self, key):
        with self.lock:
            self.active += 1
            self.runs += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.delay)
        with self.lock:
            self.active -= 1
        return key


class SerializedSlow(Slow):
    invoker_class = mitogen.service.SerializedInvoker


class DedupSlow(Slow):
    invoker_class = mitogen.service.DeduplicatingInvoker
    delay = 0.3


class ShutdownRecorder(mitogen.service.Service):
    """Puts on a latch when its pool shut down."""
    latch = None

    def on_shutdown(self):
        self.latch.put('shut down')


# --- functions children run ------------------------------------------------

@mitogen.core.takes_econtext
def call_parent_service(service_name, method_name, kwargs, econtext):
    """Call a service of this child's parent, returning the result."""
    return mitogen.service.call(service_name, method_name,
                                call_context=econtext.parent, **kwargs)


@mitogen.core.takes_econtext
def fetch_from_parent(path, out_path, econtext):
    """FileService.get() of `path` from the parent into `out_path`; return
    (ok, metadata, sha1 of what was written)."""
    with open(out_path, 'wb') as fp:
        ok, metadata = mitogen.service.FileService.get(
            context=econtext.parent, path=path, out_fp=fp)
    with open(out_path, 'rb') as fp:
        digest = mitogen.core.to_text(hashlib.sha1(fp.read()).hexdigest())
    return ok, metadata, digest


@mitogen.core.takes_router
def pushed_file(path, router):
    """Wait for PushFileService to deliver `path` here; return its bytes."""
    pool = mitogen.service.get_or_create_pool(router=router)
    service = pool.get_service(u'mitogen.service.PushFileService')
    return service.get(path)


@mitogen.core.takes_router
def pool_threads(router):
    """Names of this child's service pool threads."""
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith('mitogen.Pool'))


def python_version():
    import sys
    return tuple(sys.version_info[:2])


@mitogen.core.takes_econtext
def detach_then_write(path, delay, econtext):
    """Detach from the parent, outlive the connection by `delay` seconds,
    write `path`, then end this context."""
    econtext.detach()
    time.sleep(delay)
    with open(path, 'w') as fp:
        fp.write('still running after detach')
    econtext.broker.shutdown()
