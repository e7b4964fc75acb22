"""
Specification of :mod:`mitogen.service`: pools built by hand in the master
and on demand in children, exposed methods and their policies, argument
specs, the three invokers, and the built-in FileService and
PushFileService, with real children of every supported Python.

The services under test live in :mod:`support.service_funcs`.
"""
import hashlib
import os
import sys
import threading

import pytest

import interpreters
import mitogen
import mitogen.core
import mitogen.master
import mitogen.service
from support import service_funcs as funcs
from waiting import REPLY_TIMEOUT, call, wait_for

COUNTER = 'support.service_funcs.Counter'


@pytest.fixture
def pool(router):
    pool = mitogen.service.Pool(router, size=4)
    yield pool
    pool.stop()


@pytest.fixture
def counter(pool):
    service = funcs.Counter(pool.router)
    pool.add(service)
    return service


@pytest.fixture
def child(router):
    return router.local(python_path=sys.executable)


def parent_call_error(child, name, method, kwargs):
    """Text of the CallError that `child` gets calling `method` of the
    master's service `name`."""
    with pytest.raises(mitogen.core.CallError) as info:
        call(child, funcs.call_parent_service, name, method, kwargs)
    return str(info.value)


def service_call(context, name, method, **kwargs):
    recv = context.call_service_async(name, method, **kwargs)
    return recv.get(timeout=REPLY_TIMEOUT).unpickle()


# --- calls into the master's pool -----------------------------------------

def test_child_calls_exposed_method_of_master_service(child, counter):
    assert call(child, funcs.call_parent_service, COUNTER, 'anyone',
                {'value': 41}) == 42
    assert counter.calls == [('anyone', 41)]


def test_method_receives_the_request_message(child, counter):
    assert call(child, funcs.call_parent_service, COUNTER, 'caller_id',
                {}) == child.context_id


def test_allow_parents_refuses_a_child_and_runs_nothing(child, counter):
    error = parent_call_error(child, COUNTER, 'parents_only', {'value': 1})
    assert (mitogen.service.Invoker.unauthorized_msg % ('parents_only', COUNTER)
            in error)
    assert counter.calls == []


def test_method_without_policy_is_not_callable(child, counter):
    error = parent_call_error(child, COUNTER, 'not_exposed', {})
    assert 'not authorized' in error
    assert counter.calls == []


def test_missing_method_is_refused_like_an_unexposed_one(child, counter):
    error = parent_call_error(child, COUNTER, 'no_such', {})
    assert 'not authorized' in error


def test_arg_spec_refuses_wrong_type_before_running(child, counter):
    error = parent_call_error(child, COUNTER, 'anyone', {'value': 'x'})
    assert "argument 'value' type incorrect" in error
    assert counter.calls == []


def test_arg_spec_refuses_missing_argument(child, counter):
    error = parent_call_error(child, COUNTER, 'anyone', {})
    assert "argument 'value' is required" in error


def test_exception_in_service_reaches_caller_as_call_error(child, counter):
    error = parent_call_error(child, COUNTER, 'fail', {})
    assert 'ValueError' in error
    assert 'service failed on purpose' in error


def test_child_cannot_activate_a_service_in_the_master(child, pool):
    error = parent_call_error(child, COUNTER, 'anyone', {'value': 1})
    assert (mitogen.service.Activator.not_active_msg % (COUNTER,)
            in error)
    with pytest.raises(mitogen.service.Error):
        pool.add(funcs.Counter(pool.router))  # still absent: add works once
        pool.add(funcs.Counter(pool.router))


def test_master_calls_its_own_pool_with_call(counter):
    assert mitogen.service.call(COUNTER, 'parents_only', value=4) == 8


def test_local_call_without_pool_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(mitogen.service, '_pool', None)
    with pytest.raises(mitogen.service.Error) as info:
        mitogen.service.call(COUNTER, 'anyone', value=1)
    assert 'no router' in str(info.value)


def test_service_name_is_module_and_class():
    assert funcs.Counter.name() == COUNTER
    assert mitogen.service.FileService.name() == 'mitogen.service.FileService'


# --- invokers ---------------------------------------------------------------

def _concurrent(router, pool, service, n, key=lambda i: i):
    pool.add(service)
    me = router.myself()
    recvs = [me.call_service_async(service.name(), 'work', key=key(i))
             for i in range(n)]
    return [r.get(timeout=REPLY_TIMEOUT).unpickle() for r in recvs]


def test_plain_invoker_runs_calls_concurrently(router, pool):
    service = funcs.Slow(router)
    assert _concurrent(router, pool, service, 4) == [0, 1, 2, 3]
    assert service.peak > 1


def test_serialized_invoker_runs_one_call_at_a_time(router, pool):
    service = funcs.SerializedSlow(router)
    assert _concurrent(router, pool, service, 6) == list(range(6))
    assert service.peak == 1
    assert service.runs == 6


def test_deduplicating_invoker_runs_identical_requests_once(router, pool):
    service = funcs.DedupSlow(router)
    assert _concurrent(router, pool, service, 5, key=lambda i: 'k') == ['k'] * 5
    assert service.runs == 1
    me = router.myself()
    assert service_call(me, service.name(), 'work', key='k') == 'k'
    assert service.runs == 1  # later requests get the cached response


# --- pool lifecycle ---------------------------------------------------------

def test_stop_runs_on_shutdown_after_threads_exit(router):
    pool = mitogen.service.Pool(router, size=3)
    service = funcs.ShutdownRecorder(router)
    service.latch = mitogen.core.Latch()
    pool.add(service)
    pool.stop()
    assert service.latch.get(timeout=5) == 'shut down'
    assert not [t for t in threading.enumerate()
                if t.name.startswith('mitogen.Pool.%04x' % (id(pool) & 0xffff))]


def test_stopped_pool_releases_call_service_handle(router):
    pool = mitogen.service.Pool(router)
    pool.stop()
    again = mitogen.service.Pool(router)
    again.stop()


def test_defer_runs_function_on_a_pool_thread(pool):
    latch = mitogen.core.Latch()
    pool.defer(lambda: latch.put(threading.current_thread().name))
    assert latch.get(timeout=5).startswith('mitogen.Pool')


def test_pool_stops_with_its_broker():
    router = mitogen.master.Router()
    pool = mitogen.service.Pool(router, size=2)
    router.broker.shutdown()
    router.broker.join()
    pool.join()
    assert pool.closed


# --- pools in children --------------------------------------------------------

def test_parent_call_starts_pool_and_activates_service_in_child(child):
    assert service_call(child, COUNTER, 'where') == child.context_id
    assert len(call(child, funcs.pool_threads)) == mitogen.service.DEFAULT_POOL_SIZE


def test_activated_service_keeps_its_state_in_child(child):
    assert service_call(child, COUNTER, 'parents_only', value=3) == 6
    assert service_call(child, COUNTER, 'history') == [('parents_only', 3)]


def test_child_refuses_service_call_from_a_sibling(router):
    a = router.local(python_path=sys.executable)
    b = router.local(python_path=sys.executable)
    service_call(b, COUNTER, 'where')  # b has a pool and the service
    with pytest.raises(mitogen.core.CallError) as info:
        call(a, _call_sibling, b.context_id)
    assert 'ChannelError' in str(info.value)
    assert 'refused by policy' in str(info.value)


@mitogen.core.takes_router
def _call_sibling(context_id, router):
    ctx = router.context_by_id(context_id)
    recv = ctx.call_service_async(COUNTER, 'anyone', value=1)
    return recv.get(timeout=10).unpickle()


def test_service_in_every_interpreter(router, interpreter):
    child = router.local(python_path=interpreter.path)
    assert service_call(child, COUNTER, 'parents_only', value=5) == 10
    assert service_call(child, COUNTER, 'history') == [('parents_only', 5)]


# --- FileService ------------------------------------------------------------

@pytest.fixture
def file_service(pool):
    service = mitogen.service.FileService(pool.router)
    pool.add(service)
    return service


def _random_file(path, size):
    data = os.urandom(size)
    with open(path, 'wb') as fp:
        fp.write(data)
    return hashlib.sha1(data).hexdigest()


def test_file_service_streams_registered_file_to_child(tmp_path, child,
                                                      file_service):
    src = str(tmp_path / 'src.bin')
    digest = _random_file(src, 9 * 1024 * 1024 + 17)
    os.chmod(src, 0o640)
    file_service.register(src)
    ok, metadata, got = call(child, funcs.fetch_from_parent, src,
                             str(tmp_path / 'dst.bin'))
    assert ok
    assert got == digest
    assert metadata['size'] == 9 * 1024 * 1024 + 17
    assert metadata['mode'] & 0o777 == 0o640
    assert metadata['owner'] == 'root' or metadata['owner'] is not None
    for key in ('mtime', 'atime', 'ctime'):
        assert isinstance(metadata[key], float)


def test_file_service_sends_empty_file(tmp_path, child, file_service):
    src = str(tmp_path / 'empty')
    open(src, 'wb').close()
    file_service.register(src)
    ok, metadata, got = call(child, funcs.fetch_from_parent, src,
                             str(tmp_path / 'out'))
    assert ok and metadata['size'] == 0
    assert got == hashlib.sha1(b'').hexdigest()


def test_file_service_refuses_unregistered_path(tmp_path, child, file_service):
    src = str(tmp_path / 'secret')
    _random_file(src, 10)
    with pytest.raises(mitogen.core.CallError) as info:
        call(child, funcs.fetch_from_parent, src, str(tmp_path / 'out'))
    assert mitogen.service.FileService.unregistered_msg % (src,) in str(info.value)


def test_file_service_prefix_covers_subpaths_but_not_escapes(tmp_path, child,
                                                            file_service):
    d = tmp_path / 'shared'
    d.mkdir()
    inside = str(d / 'a.txt')
    digest = _random_file(inside, 1000)
    outside = str(tmp_path / 'private.txt')
    _random_file(outside, 10)
    file_service.register_prefix(str(d))
    ok, _, got = call(child, funcs.fetch_from_parent, inside,
                      str(tmp_path / 'o1'))
    assert ok and got == digest
    with pytest.raises(mitogen.core.CallError) as info:
        call(child, funcs.fetch_from_parent, str(d) + '/../private.txt',
             str(tmp_path / 'o2'))
    assert 'is not registered' in str(info.value)


def test_child_cannot_register_paths(tmp_path, child, file_service):
    error = parent_call_error(child, 'mitogen.service.FileService',
                              'register', {'path': '/etc/shadow'})
    assert 'not authorized' in error


def test_file_service_refuses_sender_of_another_context(tmp_path, router,
                                                       child, file_service):
    src = str(tmp_path / 'f')
    _random_file(src, 10)
    file_service.register(src)
    with mitogen.core.Receiver(router) as recv:
        with pytest.raises(mitogen.core.CallError) as info:
            call(child, funcs.call_parent_service,
                 'mitogen.service.FileService', 'fetch',
                 {'path': src, 'sender': recv.to_sender()})
    assert mitogen.service.FileService.context_mismatch_msg in str(info.value)


class _WindowWatcher(mitogen.service.FileService):
    """Records the most bytes ever unacknowledged on a stream."""
    peak = 0

    def _pump(self, state):
        mitogen.service.FileService._pump(self, state)
        self.peak = max(self.peak, state.unacked)


def test_file_service_never_has_more_than_a_window_in_flight(tmp_path, router,
                                                            child):
    pool = mitogen.service.Pool(router, size=2)
    try:
        service = _WindowWatcher(router)
        service.window_size_bytes = 512 * 1024
        # Registered under the built-in name so FileService.get() finds it.
        service.name = mitogen.service.FileService.name
        pool.add(service)
        src = str(tmp_path / 'big')
        digest = _random_file(src, 6 * 1024 * 1024)
        service.register(src)
        ok, _, got = call(child, funcs.fetch_from_parent, src,
                          str(tmp_path / 'out'))
        assert ok and got == digest
        assert 0 < service.peak <= 512 * 1024 + service.IO_SIZE
    finally:
        pool.stop()


def test_file_service_in_every_interpreter(tmp_path, router, interpreter,
                                           file_service):
    child = router.local(python_path=interpreter.path)
    src = str(tmp_path / 'src')
    digest = _random_file(src, 300 * 1000)
    file_service.register(src)
    ok, metadata, got = call(child, funcs.fetch_from_parent, src,
                             str(tmp_path / 'dst'))
    assert ok and got == digest and metadata['size'] == 300 * 1000


def test_pool_stop_cuts_transfers_short(tmp_path, router, child):
    pool = mitogen.service.Pool(router, size=2)
    service = mitogen.service.FileService(router)
    service.window_size_bytes = 256 * 1024
    pool.add(service)
    src = str(tmp_path / 'big')
    _random_file(src, 64 * 1024 * 1024)
    service.register(src)
    recv = child.call_async(funcs.fetch_from_parent, src, str(tmp_path / 'o'))
    wait_for(lambda: service._state_by_stream)
    pool.stop()
    ok, metadata, _ = recv.get(timeout=REPLY_TIMEOUT).unpickle()
    assert not ok


# --- PushFileService ----------------------------------------------------------

@pytest.fixture
def push_service(pool):
    service = mitogen.service.PushFileService(router=pool.router)
    pool.add(service)
    return service


def test_push_file_reaches_grandchild_through_middle(tmp_path, router,
                                                    push_service):
    src = str(tmp_path / 'module.py')
    with open(src, 'wb') as fp:
        fp.write(b'print("hello")\n')
    middle = router.local(python_path=sys.executable)
    leaf = router.local(via=middle, python_path=sys.executable)
    waiting = leaf.call_async(funcs.pushed_file, src)
    push_service.propagate_paths_and_modules(leaf, [src])
    assert waiting.get(timeout=REPLY_TIMEOUT).unpickle() == b'print("hello")\n'
    # The middle context kept a copy on the way.
    assert call(middle, funcs.pushed_file, src) == b'print("hello")\n'


def test_push_file_overridden_source_replaces_contents(tmp_path, router,
                                                      push_service):
    src = str(tmp_path / 'x.py')
    with open(src, 'wb') as fp:
        fp.write(b'original')
    child = router.local(python_path=sys.executable)
    push_service.propagate_paths_and_modules(child, [src],
                                             overridden_sources={src: 'new'})
    assert call(child, funcs.pushed_file, src) == b'new'


def test_push_file_service_is_callable_by_name(tmp_path, router, push_service):
    src = str(tmp_path / 'y')
    with open(src, 'wb') as fp:
        fp.write(b'by name')
    child = router.local(python_path=sys.executable)
    mitogen.service.call('mitogen.service.PushFileService',
                         'propagate_paths_and_modules', context=child,
                         paths=[src], extra_sys_paths=[str(tmp_path)])
    assert str(tmp_path) in sys.path
    sys.path.remove(str(tmp_path))
    assert call(child, funcs.pushed_file, src) == b'by name'


@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.6', '3.13']),
                         indirect=True)
def test_push_file_in_old_and_new_interpreters(tmp_path, router, interpreter,
                                               push_service):
    src = str(tmp_path / 'z')
    with open(src, 'wb') as fp:
        fp.write(b'\x00\xffdata')
    child = router.local(python_path=interpreter.path)
    push_service.propagate_to(child, src)
    assert call(child, funcs.pushed_file, src) == b'\x00\xffdata'


def test_push_file_to_second_leaf_behind_a_middle_that_has_it(tmp_path, router,
                                                            push_service):
    src = str(tmp_path / 'shared.py')
    with open(src, 'wb') as fp:
        fp.write(b'shared')
    middle = router.local(python_path=sys.executable)
    first = router.local(via=middle, python_path=sys.executable)
    push_service.propagate_to(first, src)
    assert call(first, funcs.pushed_file, src) == b'shared'
    # The middle already holds the file: it is asked to pass it on.
    second = router.local(via=middle, python_path=sys.executable)
    waiting = second.call_async(funcs.pushed_file, src)
    push_service.propagate_to(second, src)
    assert waiting.get(timeout=REPLY_TIMEOUT).unpickle() == b'shared'


def test_parent_may_fetch_an_unregistered_file_from_child(tmp_path, router,
                                                         child):
    src = str(tmp_path / 'on-target')
    digest = _random_file(src, 200 * 1000)
    out = tmp_path / 'fetched'
    with open(str(out), 'wb') as fp:
        ok, metadata = mitogen.service.FileService.get(child, src, fp)
    assert ok and metadata['size'] == 200 * 1000
    assert hashlib.sha1(out.read_bytes()).hexdigest() == digest
