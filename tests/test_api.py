"""
Specification of the public API around calls: :class:`mitogen.core.Receiver`,
:class:`~mitogen.core.Sender`, :class:`~mitogen.core.Channel`,
:class:`~mitogen.core.Latch`, signals (``listen``/``fire``), the
``takes_econtext``/``takes_router`` decorators, the value types ``Blob``,
``Secret`` and ``Kwargs``, the ``mitogen`` package globals, the helpers of
:mod:`mitogen.utils` and :func:`mitogen.main`, forwarding of children's
logs and output, and the router's lifetime as a context manager.

The functions children run live in :mod:`support.calls_funcs`.
"""
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import mitogen
import mitogen.core
import mitogen.master
import mitogen.parent
import mitogen.utils
from support import calls_funcs as funcs
from waiting import REPLY_TIMEOUT, call, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(ROOT, '.venv', 'bin', 'python')


@pytest.fixture(scope='module')
def router():
    with mitogen.master.Router() as router:
        yield router


@pytest.fixture(scope='module')
def context(router):
    return router.local(python_path=sys.executable)


def process_gone(pid):
    """True once `pid` no longer exists (a zombie still exists)."""
    return not os.path.exists('/proc/%d' % (pid,))


# ---------------------------------------------------------------------------
# Receiver and Sender
# ---------------------------------------------------------------------------

def test_child_sends_several_values_to_a_receivers_sender(router, context):
    with mitogen.core.Receiver(router) as recv:
        sent = call(context, funcs.send_values, recv.to_sender(),
                    [1, u'two', b'three'], close=False)
        got = [recv.get(timeout=REPLY_TIMEOUT).unpickle() for _ in range(3)]
    assert sent == 3
    assert got == [1, u'two', b'three']


def test_receiver_iteration_yields_messages_and_ends_when_sender_closes(
        router, context):
    with mitogen.core.Receiver(router) as recv:
        context.call_no_reply(funcs.send_values, recv.to_sender(),
                              list(range(5)))
        values = [msg.unpickle() for msg in recv]
    assert values == [0, 1, 2, 3, 4]


def test_receiver_get_with_timeout_raises_timeout_error(router):
    with mitogen.core.Receiver(router) as recv:
        started = time.monotonic()
        with pytest.raises(mitogen.core.TimeoutError):
            recv.get(timeout=0.2)
    assert time.monotonic() - started >= 0.2


def test_receiver_get_without_blocking_raises_timeout_error(router):
    with mitogen.core.Receiver(router) as recv:
        with pytest.raises(mitogen.core.TimeoutError):
            recv.get(block=False)


def test_dead_message_from_closed_sender_raises_channel_error(router,
                                                              context):
    with mitogen.core.Receiver(router) as recv:
        call(context, funcs.send_and_close, recv.to_sender())
        with pytest.raises(mitogen.core.ChannelError) as info:
            recv.get(timeout=REPLY_TIMEOUT)
    assert str(info.value) == mitogen.core.ChannelError.remote_msg


def test_dead_message_is_returned_when_throw_dead_is_false(router, context):
    with mitogen.core.Receiver(router) as recv:
        call(context, funcs.send_and_close, recv.to_sender())
        msg = recv.get(timeout=REPLY_TIMEOUT, throw_dead=False)
    assert msg.is_dead
    with pytest.raises(mitogen.core.ChannelError):
        msg.unpickle()


class _InspectingReceiver(mitogen.core.Receiver):
    raise_channelerror = False


def test_receiver_without_raise_channelerror_returns_dead_messages(router,
                                                                   context):
    with _InspectingReceiver(router) as recv:
        call(context, funcs.send_and_close, recv.to_sender())
        msg = recv.get(timeout=REPLY_TIMEOUT)
    assert msg.is_dead
    with pytest.raises(mitogen.core.ChannelError):
        msg.unpickle()


def test_receiver_iteration_ends_at_a_dead_message_without_raising(router,
                                                                    context):
    recv = mitogen.core.Receiver(router)
    recv.raise_channelerror = False
    with recv:
        context.call_no_reply(funcs.send_values, recv.to_sender(), [1, 2])
        call(context, funcs.send_and_close, recv.to_sender())
        values = [msg.unpickle() for msg in recv]
    assert values == [1, 2]


def test_closed_receiver_get_raises_channel_error(router):
    recv = mitogen.core.Receiver(router)
    recv.close()
    with pytest.raises(mitogen.core.ChannelError) as info:
        recv.get(timeout=1)
    assert str(info.value) == mitogen.core.ChannelError.local_msg


def test_receiver_close_wakes_a_waiting_thread_with_channel_error(router):
    recv = mitogen.core.Receiver(router)
    errors = []

    def waiter():
        try:
            recv.get(timeout=REPLY_TIMEOUT)
        except mitogen.core.ChannelError as e:
            errors.append(e)
    t = threading.Thread(target=waiter)
    t.start()
    wait_for(lambda: recv._latch._waiters)
    recv.close()
    t.join(REPLY_TIMEOUT)
    assert len(errors) == 1


def test_sender_delivers_within_the_same_process(router):
    with mitogen.core.Receiver(router) as recv:
        recv.to_sender().send({u'k': [1, 2]})
        assert recv.get(timeout=REPLY_TIMEOUT).unpickle() == {u'k': [1, 2]}


def test_receiver_with_respondent_gets_dead_message_when_it_disconnects():
    with mitogen.master.Router() as router:
        child = router.local(python_path=sys.executable)
        recv = mitogen.core.Receiver(router, respondent=child)
        child.shutdown(wait=True)
        with pytest.raises(mitogen.core.ChannelError) as info:
            recv.get(timeout=REPLY_TIMEOUT)
    assert child.name in str(info.value)


def test_call_to_a_shut_down_context_raises_channel_error():
    with mitogen.master.Router() as router:
        child = router.local(python_path=sys.executable)
        child.shutdown(wait=True)
        with pytest.raises(mitogen.core.ChannelError):
            call(child, os.getpid)


def test_channel_carries_values_both_ways_until_closed(router, context):
    boot = mitogen.core.Receiver(router)
    result = context.call_async(funcs.channel_echo, boot.to_sender())
    remote = boot.get(timeout=REPLY_TIMEOUT).unpickle()
    boot.close()
    assert isinstance(remote, mitogen.core.Sender)
    chan = mitogen.core.Channel(router, remote.context, remote.dst_handle)
    chan.send(chan.to_sender())
    answers = []
    for value in (1, 21, u'ab'):
        chan.send(value)
        answers.append(chan.get(timeout=REPLY_TIMEOUT).unpickle())
    chan.close()
    assert answers == [2, 42, u'abab']
    # Closing the channel sent a dead message that ended the child's loop.
    assert result.get(timeout=REPLY_TIMEOUT).unpickle() == 3


# ---------------------------------------------------------------------------
# Latch
# ---------------------------------------------------------------------------

def test_latch_returns_items_in_order():
    latch = mitogen.core.Latch()
    for i in range(3):
        latch.put(i)
    assert latch.size() == 3
    assert [latch.get() for _ in range(3)] == [0, 1, 2]
    assert latch.empty()


def test_latch_get_with_timeout_raises_timeout_error():
    latch = mitogen.core.Latch()
    started = time.monotonic()
    with pytest.raises(mitogen.core.TimeoutError):
        latch.get(timeout=0.2)
    assert time.monotonic() - started >= 0.2


def test_latch_get_without_blocking_raises_timeout_error():
    with pytest.raises(mitogen.core.TimeoutError):
        mitogen.core.Latch().get(block=False)


def test_closed_latch_raises_latch_error_on_get_and_put():
    latch = mitogen.core.Latch()
    latch.put(1)
    latch.close()
    with pytest.raises(mitogen.core.LatchError):
        latch.get()
    with pytest.raises(mitogen.core.LatchError):
        latch.put(2)


def test_latch_close_wakes_every_waiting_thread_with_latch_error():
    latch = mitogen.core.Latch()
    errors = []

    def waiter():
        try:
            latch.get(timeout=REPLY_TIMEOUT)
        except mitogen.core.LatchError as e:
            errors.append(e)
    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(latch._waiters) == 4)
    latch.close()
    for t in threads:
        t.join(REPLY_TIMEOUT)
    assert len(errors) == 4


def test_latch_delivers_each_item_to_exactly_one_of_several_waiters():
    latch = mitogen.core.Latch()
    got = []
    lock = threading.Lock()

    def waiter():
        for _ in range(25):
            item = latch.get(timeout=REPLY_TIMEOUT)
            with lock:
                got.append(item)
    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(100):
        latch.put(i)
    for t in threads:
        t.join(REPLY_TIMEOUT)
    assert sorted(got) == list(range(100))


def test_latch_put_wakes_a_thread_already_waiting():
    latch = mitogen.core.Latch()
    got = []
    t = threading.Thread(target=lambda: got.append(
        latch.get(timeout=REPLY_TIMEOUT)))
    t.start()
    wait_for(lambda: latch._waiters)
    latch.put('item')
    t.join(REPLY_TIMEOUT)
    assert got == ['item']


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------

class _Emitter(object):
    pass


def test_fire_calls_every_listener_with_the_arguments_in_order():
    obj = _Emitter()
    calls = []
    mitogen.core.listen(obj, 'ping', lambda *a, **kw: calls.append(
        ('first', a, kw)))
    mitogen.core.listen(obj, 'ping', lambda *a, **kw: calls.append(
        ('second', a, kw)))
    mitogen.core.fire(obj, 'ping', 1, x=2)
    assert calls == [('first', (1,), {'x': 2}), ('second', (1,), {'x': 2})]


def test_fire_calls_only_listeners_of_that_signal():
    obj = _Emitter()
    calls = []
    mitogen.core.listen(obj, 'a', lambda: calls.append('a'))
    mitogen.core.listen(obj, 'b', lambda: calls.append('b'))
    mitogen.core.fire(obj, 'b')
    assert calls == ['b']


def test_fire_without_listeners_does_nothing():
    mitogen.core.fire(_Emitter(), 'nobody-listens', 1)


def test_unlisten_removes_a_listener():
    obj = _Emitter()
    calls = []

    def listener():
        calls.append(1)
    mitogen.core.listen(obj, 'ping', listener)
    mitogen.core.unlisten(obj, 'ping', listener)
    mitogen.core.fire(obj, 'ping')
    assert calls == []


def test_context_fires_disconnect_when_it_shuts_down():
    with mitogen.master.Router() as router:
        child = router.local(python_path=sys.executable)
        latch = mitogen.core.Latch()
        mitogen.core.listen(child, 'disconnect', lambda: latch.put('gone'))
        child.shutdown()
        assert latch.get(timeout=REPLY_TIMEOUT) == 'gone'


# ---------------------------------------------------------------------------
# takes_econtext / takes_router
# ---------------------------------------------------------------------------

def test_takes_econtext_injects_the_childs_external_context(context):
    assert call(context, funcs.econtext_facts) == ('ExternalContext', True)


def test_takes_router_injects_the_childs_router(context):
    assert call(context, funcs.router_facts) == \
        (True, context.context_id, context.context_id)


# ---------------------------------------------------------------------------
# Blob, Secret, Kwargs
# ---------------------------------------------------------------------------

def test_blob_repr_shows_only_the_length():
    blob = mitogen.core.Blob(b'secret bytes')
    assert repr(blob) == '[blob: 12 bytes]'
    assert blob == b'secret bytes'


def test_secret_repr_hides_the_value():
    secret = mitogen.core.Secret(u'hunter2')
    assert repr(secret) == '[secret]'
    assert 'hunter2' not in repr([secret, {u'password': secret}])
    assert secret == u'hunter2'


def test_kwargs_is_a_dict_with_its_own_repr():
    kw = mitogen.core.Kwargs({'a': 1})
    assert isinstance(kw, dict)
    assert kw == {'a': 1}
    assert repr(kw) == "Kwargs({'a': 1})"


def test_blob_and_secret_keep_their_type_in_the_child(context):
    assert call(context, funcs.type_name_of, mitogen.core.Blob(b'x')) == \
        'mitogen.core.Blob'
    assert call(context, funcs.type_name_of, mitogen.core.Secret(u'x')) == \
        'mitogen.core.Secret'


# ---------------------------------------------------------------------------
# Package globals
# ---------------------------------------------------------------------------

def test_package_globals_in_the_master():
    assert mitogen.is_master is True
    assert mitogen.context_id == 0
    assert mitogen.parent_id is None
    assert mitogen.parent_ids == []


def test_package_globals_in_a_child(context):
    assert call(context, funcs.package_globals) == {
        'context_id': context.context_id,
        'parent_id': 0,
        'parent_ids': [0],
        'is_master': False,
    }


def test_each_child_gets_its_own_context_id(router, context):
    other = router.local(python_path=sys.executable)
    try:
        ids = call(other, funcs.package_globals)['context_id']
        assert ids == other.context_id != context.context_id
    finally:
        other.shutdown(wait=True)


def test_mitogen_master_imports_in_a_child_but_its_router_refuses(context):
    imported, error_type, text = call(context, funcs.use_master_router)
    assert imported
    assert error_type == 'Error'
    assert 'master' in text


# ---------------------------------------------------------------------------
# Router lifetime
# ---------------------------------------------------------------------------

def test_router_context_manager_ends_broker_thread_and_children():
    threads_before = set(threading.enumerate())
    with mitogen.master.Router() as router:
        pids = [router.local(python_path=sys.executable).call(os.getpid)
                for _ in range(2)]
        assert [t for t in set(threading.enumerate()) - threads_before
                if t.name == 'mitogen.broker']
    assert not [t for t in set(threading.enumerate()) - threads_before
                if t.is_alive()]
    for pid in pids:
        wait_for(lambda: process_gone(pid))


def test_router_context_manager_shuts_down_on_exception():
    with pytest.raises(KeyError):
        with mitogen.master.Router() as router:
            pid = router.local(python_path=sys.executable).call(os.getpid)
            raise KeyError('boom')
    wait_for(lambda: process_gone(pid))


# ---------------------------------------------------------------------------
# mitogen.utils
# ---------------------------------------------------------------------------

def _broker_threads():
    return [t for t in threading.enumerate()
            if t.name == 'mitogen.broker' and t.is_alive()]


def test_run_with_router_passes_a_router_and_arguments_and_returns():
    def body(router, a, b=None):
        assert isinstance(router, mitogen.master.Router)
        return a, b, router.local(python_path=sys.executable).call(
            funcs.add, a, b)
    assert mitogen.utils.run_with_router(body, 2, b=3) == (2, 3, 5)


def test_run_with_router_shuts_the_router_down_afterwards():
    before = _broker_threads()
    seen = []
    mitogen.utils.run_with_router(lambda router: seen.append(router))
    assert not seen[0].broker._thread.is_alive()
    assert _broker_threads() == before


def test_run_with_router_shuts_down_when_the_function_raises():
    def body(router):
        raise ValueError('x')
    before = _broker_threads()
    with pytest.raises(ValueError):
        mitogen.utils.run_with_router(body)
    assert _broker_threads() == before


def test_with_router_decorator_supplies_the_router():
    @mitogen.utils.with_router
    def body(router, x):
        return x * 2, isinstance(router, mitogen.master.Router)
    assert body.__name__ == 'body'
    assert body(21) == (42, True)


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers = list(root.handlers)
    levels = [(logging.getLogger(name), logging.getLogger(name).level)
              for name in mitogen.core.LOGGERS]
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            if handler.stream not in (sys.stderr, sys.stdout):
                handler.stream.close()
    for logger, level in levels:
        logger.setLevel(level)


def test_log_to_file_writes_records_to_the_file(tmp_path, monkeypatch,
                                                restore_root_logger):
    monkeypatch.delenv('MITOGEN_LOG_LEVEL', raising=False)
    path = tmp_path / 'log.txt'
    mitogen.utils.log_to_file(str(path), level='INFO')
    logging.getLogger('test_api.file').info('written %d', 42)
    logging.getLogger('test_api.file').debug('not written')
    text = path.read_text()
    assert 'test_api.file' in text
    assert 'written 42' in text
    assert 'not written' not in text


def test_log_to_file_receives_child_records(tmp_path, monkeypatch,
                                            restore_root_logger):
    monkeypatch.delenv('MITOGEN_LOG_LEVEL', raising=False)
    path = tmp_path / 'log.txt'
    mitogen.utils.log_to_file(str(path))
    with mitogen.master.Router() as router:
        child = router.local(python_path=sys.executable)
        call(child, funcs.log_warning, 'remote.logger', 'from the child')
        name = child.name
    text = path.read_text()
    assert 'mitogen.ctx.%s' % (name,) in text
    assert 'from the child' in text


def test_log_to_file_level_comes_from_the_environment(tmp_path, monkeypatch,
                                                      restore_root_logger):
    monkeypatch.setenv('MITOGEN_LOG_LEVEL', 'debug')
    path = tmp_path / 'log.txt'
    mitogen.utils.log_to_file(str(path), level='WARNING')
    logging.getLogger('test_api.env').debug('debug record')
    assert 'debug record' in path.read_text()


def test_log_to_file_with_io_logs_every_message(tmp_path, monkeypatch,
                                                restore_root_logger):
    monkeypatch.delenv('MITOGEN_LOG_LEVEL', raising=False)
    io_logger = logging.getLogger('mitogen.io')
    monkeypatch.setattr(io_logger, 'level', io_logger.level)
    path = tmp_path / 'log.txt'
    mitogen.utils.log_to_file(str(path), io=True, level='DEBUG')
    with mitogen.master.Router() as router:
        child = router.local(python_path=sys.executable)
        assert child.call(os.getpid) != os.getpid()
    text = path.read_text()
    assert 'mitogen.io' in text
    assert 'sending Message(%d' % (child.context_id,) in text
    assert 'received Message(0, %d' % (child.context_id,) in text


class _MyDict(dict):
    pass


class _MyList(list):
    pass


class _MyText(str):
    pass


class _MyBytes(bytes):
    pass


def test_cast_replaces_subclasses_by_built_in_types():
    value = _MyDict({
        _MyText(u'k'): _MyList([_MyBytes(b'b'), _MyText(u't'), (1, 2.5)]),
    })
    result = mitogen.utils.cast(value)
    assert result == {u'k': [b'b', u't', [1, 2.5]]}
    assert type(result) is dict
    key, = result
    assert type(key) is str
    items = result[u'k']
    assert type(items) is list
    assert [type(v) for v in items] == [bytes, str, list]


def test_cast_keeps_secrets_and_blobs():
    # Both serialize as they are, and a Secret must stay hidden in logs.
    value = [mitogen.core.Secret(u's'), mitogen.core.Blob(b'blob')]
    result = mitogen.utils.cast(value)
    assert [type(v) for v in result] == [mitogen.core.Secret,
                                         mitogen.core.Blob]


def test_cast_keeps_simple_values():
    values = [None, True, 3, 2 ** 70, 1.5]
    assert mitogen.utils.cast(values) == values


def test_cast_refuses_other_objects():
    with pytest.raises(TypeError):
        mitogen.utils.cast(object())


# ---------------------------------------------------------------------------
# mitogen.main
# ---------------------------------------------------------------------------

def test_main_decorator_runs_a_script_with_a_router(tmp_path):
    script = tmp_path / 'prog.py'
    script.write_text(textwrap.dedent('''
        import os
        import sys

        import mitogen


        def describe():
            return os.getpid(), os.getppid(), mitogen.is_master


        @mitogen.main()
        def main(router):
            child = router.local()
            pid, ppid, is_master = child.call(describe)
            sys.stdout.write('master=%d child=%d parent=%d is_master=%s\\n'
                             % (os.getpid(), pid, ppid, is_master))
    '''))
    proc = subprocess.run(
        [VENV_PYTHON, str(script)], cwd=str(tmp_path),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, timeout=60,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    fields = dict(f.split('=') for f in out.split())
    assert fields['parent'] == fields['master']
    assert fields['child'] != fields['master']
    assert fields['is_master'] == 'False'


def test_main_decorator_leaves_imported_functions_alone():
    # Outside __main__ the decorator returns the function without running
    # it, so a module using it can be imported (as children do).
    calls = []

    def program(router):
        calls.append(router)
    program.__module__ = 'some_module'
    assert mitogen.main()(program) is program
    assert calls == []


# ---------------------------------------------------------------------------
# Logging and output of children
# ---------------------------------------------------------------------------

@pytest.fixture
def log_router(caplog):
    """A router whose child starts after caplog captures INFO (children
    take their log level from the master's at start)."""
    caplog.set_level(logging.INFO)
    with mitogen.master.Router() as router:
        yield router


def _child_records(caplog, context, mitogen_name):
    return [r for r in caplog.records
            if r.name == 'mitogen.ctx.%s' % (context.name,)
            and getattr(r, 'mitogen_name', None) == mitogen_name]


def test_child_log_record_arrives_on_the_context_logger(log_router, caplog):
    child = log_router.local(python_path=sys.executable)
    call(child, funcs.log_warning, 'x', 'a warning from the child')
    records = wait_for(lambda: _child_records(caplog, child, 'x'))
    assert [r.getMessage() for r in records] == ['a warning from the child']
    assert records[0].levelno == logging.WARNING
    assert child.name == 'local.%d' % (call(child, os.getpid),)


def test_child_print_arrives_as_info_record_named_stdout(log_router, caplog):
    child = log_router.local(python_path=sys.executable)
    call(child, funcs.print_line, 'printed by the child')
    records = wait_for(lambda: _child_records(caplog, child, 'stdout'))
    assert [r.getMessage() for r in records] == ['printed by the child']
    assert records[0].levelno == logging.INFO


def test_child_stderr_lines_arrive_as_records_named_stderr(log_router,
                                                           caplog):
    child = log_router.local(python_path=sys.executable)
    call(child, funcs.write_stderr, 'written to stderr')
    records = wait_for(lambda: _child_records(caplog, child, 'stderr'))
    assert [r.getMessage() for r in records] == ['written to stderr']
    assert records[0].levelno == logging.INFO
