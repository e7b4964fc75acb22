"""
Specification of function calls into children: :meth:`Context.call`,
``call_async``, ``call_no_reply``, :class:`mitogen.parent.CallChain`, which
functions may be called, how remote exceptions arrive as
:class:`mitogen.core.CallError`, which values survive the trip in each
direction (and which are refused, without ever running code), and
``max_message_size``.

Most tests share one local child (module fixture ``context``); tests that
need a router configured differently start their own.  The functions the
children run live in :mod:`support.calls_funcs`.
"""
import datetime
import decimal
import os
import sys
import threading
import uuid

import pytest

import interpreters
import mitogen
import mitogen.core
import mitogen.master
import mitogen.parent
from support import calls_funcs as funcs
from waiting import REPLY_TIMEOUT, call


@pytest.fixture(scope='module')
def router():
    with mitogen.master.Router() as router:
        yield router


@pytest.fixture(scope='module')
def context(router):
    return router.local(python_path=sys.executable)


# ---------------------------------------------------------------------------
# Context.call / call_async / call_no_reply
# ---------------------------------------------------------------------------

def test_call_returns_the_result_computed_in_the_child(context):
    child_pid = context.call(os.getpid)
    assert isinstance(child_pid, int)
    assert child_pid != os.getpid()


def test_call_passes_positional_and_keyword_arguments(context):
    assert context.call(funcs.add, 40, b=2) == 42


def test_call_async_returns_a_receiver_whose_message_unpickles_to_result(
        context):
    recv = context.call_async(funcs.add, 1, 2)
    assert isinstance(recv, mitogen.core.Receiver)
    msg = recv.get(timeout=REPLY_TIMEOUT)
    assert isinstance(msg, mitogen.core.Message)
    assert msg.unpickle() == 3


def test_many_call_async_results_arrive_on_their_own_receivers(context):
    receivers = [context.call_async(funcs.add, i, 1) for i in range(20)]
    results = [r.get(timeout=REPLY_TIMEOUT).unpickle() for r in receivers]
    assert results == [i + 1 for i in range(20)]


def test_call_async_error_is_raised_by_unpickle(context):
    recv = context.call_async(funcs.raise_value_error, 'async boom')
    msg = recv.get(timeout=REPLY_TIMEOUT)
    with pytest.raises(mitogen.core.CallError) as info:
        msg.unpickle()
    assert info.value.remote_message == 'async boom'


@pytest.mark.parametrize('interpreter', interpreters.params(['2.7']),
                         indirect=True)
def test_keyword_arguments_reach_a_python2_child(interpreter):
    # Keyword names travel as text; Python 2 needs native strings for **.
    with mitogen.master.Router() as router:
        context = router.local(python_path=interpreter.path)
        assert call(context, funcs.add, 40, b=2) == 42


def test_call_no_reply_runs_the_function_without_returning_anything(context):
    token = 'no-reply-%s' % uuid.uuid4()
    assert context.call_no_reply(funcs.record, token) is None
    # Calls on one context are served in order, so this call sees it.
    assert token in call(context, funcs.recorded)


def test_call_no_reply_failure_does_not_affect_later_calls(context):
    context.call_no_reply(funcs.raise_value_error, 'ignored')
    assert call(context, funcs.add, 2, 2) == 4


def test_builtin_function_is_callable(context):
    assert isinstance(context.call(os.getpid), int)


def test_classmethod_is_callable(context):
    assert context.call(funcs.Thing.double, 21) == ('Thing', 42)


def test_staticmethod_is_callable(context):
    assert context.call(funcs.Thing.triple, 3) == 9


def test_class_is_callable_and_its_instance_returned_when_registered():
    # Calling a class constructs an instance; returning it needs the type
    # registered, which is tested in the serialization section.  Here the
    # call itself must be accepted and reach the child.
    with mitogen.master.Router() as router:
        router.register_type(funcs.Point)
        context = router.local(python_path=sys.executable)
        assert call(context, funcs.Point, 1, 2) == funcs.Point(1, 2)


# ---------------------------------------------------------------------------
# Functions that cannot be called remotely are refused before sending
# ---------------------------------------------------------------------------
#
# call_no_reply() waits for nothing, so a TypeError out of it can only come
# from the check that runs before the message is sent.

def _nested_factory():
    def nested(x):
        return x
    return nested


def _closure_factory():
    captured = 5

    def closure(x):
        return x + captured
    return closure


@pytest.mark.parametrize('fn, words', [
    pytest.param(lambda: 1, 'lambda', id='lambda'),
    pytest.param(_nested_factory(), 'nested', id='nested-function'),
    pytest.param(_closure_factory(), 'closure', id='closure'),
    pytest.param(funcs.Thing(3).method, 'bound', id='bound-method'),
    pytest.param([].append, 'bound', id='bound-builtin-method'),
])
def test_uncallable_function_is_refused_with_type_error_before_sending(
        context, fn, words):
    with pytest.raises(TypeError) as info:
        context.call_no_reply(fn)
    assert words in str(info.value)
    assert 'remotely' in str(info.value)


def test_refused_function_leaves_the_context_usable(context):
    with pytest.raises(TypeError):
        context.call(lambda: 1)
    assert call(context, funcs.add, 1, 1) == 2


# ---------------------------------------------------------------------------
# CallChain
# ---------------------------------------------------------------------------

def test_call_chain_without_pipelining_is_not_poisoned_by_a_failure(context):
    chain = mitogen.parent.CallChain(context)
    chain.call_no_reply(funcs.raise_value_error, 'not pipelined')
    assert chain.call(funcs.add, 1, 2) == 3


def test_pipelined_chain_failure_poisons_later_calls_with_same_error(context):
    chain = mitogen.parent.CallChain(context, pipelined=True)
    try:
        chain.call_no_reply(funcs.raise_value_error, 'chain boom')
        with pytest.raises(mitogen.core.CallError) as first:
            chain.call(funcs.add, 1, 2)
        with pytest.raises(mitogen.core.CallError) as second:
            chain.call_async(funcs.add, 3, 4).get(
                timeout=REPLY_TIMEOUT).unpickle()
    finally:
        chain.reset()
    for info in first, second:
        assert info.value.type_name == 'builtins.ValueError'
        assert info.value.remote_message == 'chain boom'
        assert str(info.value) == str(first.value)


def test_pipelined_chain_does_not_run_calls_after_a_failure(context):
    token = 'poisoned-%s' % uuid.uuid4()
    chain = mitogen.parent.CallChain(context, pipelined=True)
    try:
        chain.call_no_reply(funcs.raise_value_error, 'stop here')
        chain.call_no_reply(funcs.record, token)
        with pytest.raises(mitogen.core.CallError):
            chain.call(funcs.recorded)
    finally:
        chain.reset()
    assert token not in call(context, funcs.recorded)


def test_pipelined_chain_reset_clears_the_error(context):
    chain = mitogen.parent.CallChain(context, pipelined=True)
    chain.call_no_reply(funcs.raise_value_error, 'before reset')
    with pytest.raises(mitogen.core.CallError):
        chain.call(funcs.add, 1, 1)
    chain.reset()
    assert chain.call(funcs.add, 1, 1) == 2


def test_pipelined_chain_as_context_manager_resets_on_exit(context):
    with mitogen.parent.CallChain(context, pipelined=True) as chain:
        chain.call_no_reply(funcs.raise_value_error, 'in with')
        with pytest.raises(mitogen.core.CallError):
            chain.call(funcs.add, 1, 1)
    assert chain.call(funcs.add, 2, 1) == 3


def test_pipelined_chain_error_does_not_leak_into_other_chains(context):
    poisoned = mitogen.parent.CallChain(context, pipelined=True)
    other = mitogen.parent.CallChain(context, pipelined=True)
    try:
        poisoned.call_no_reply(funcs.raise_value_error, 'mine only')
        with pytest.raises(mitogen.core.CallError):
            poisoned.call(funcs.add, 0, 0)
        assert other.call(funcs.add, 5, 5) == 10
        assert call(context, funcs.add, 6, 6) == 12
    finally:
        poisoned.reset()
        other.reset()


def test_pipelined_chain_successful_calls_return_results(context):
    with mitogen.parent.CallChain(context, pipelined=True) as chain:
        receivers = [chain.call_async(funcs.add, i, i) for i in range(5)]
        assert [r.get(timeout=REPLY_TIMEOUT).unpickle()
                for r in receivers] == [0, 2, 4, 6, 8]


# ---------------------------------------------------------------------------
# CallError
# ---------------------------------------------------------------------------

def _raise(context, fn, *args):
    with pytest.raises(mitogen.core.CallError) as info:
        call(context, fn, *args)
    return info.value


def test_call_error_keeps_the_remote_type_name(context):
    assert _raise(context, funcs.raise_value_error, 'x').type_name == \
        'builtins.ValueError'


def test_call_error_keeps_the_remote_message(context):
    assert _raise(context, funcs.raise_value_error, 'the message') \
        .remote_message == 'the message'


def test_call_error_keeps_the_remote_traceback(context):
    tb = _raise(context, funcs.raise_value_error, 'x').remote_traceback
    assert 'calls_funcs.py' in tb
    assert 'raise_value_error' in tb
    assert 'raise ValueError(text)' in tb


def test_call_error_text_is_type_message_then_traceback(context):
    e = _raise(context, funcs.raise_value_error, 'formatted')
    assert str(e) == 'builtins.ValueError: formatted\n' + e.remote_traceback
    assert str(e).splitlines()[1].lstrip().startswith('File ')


def test_call_error_names_a_custom_exception_class(context):
    e = _raise(context, funcs.raise_custom_error, 'custom')
    assert e.type_name == 'support.calls_funcs.CustomError'
    assert str(e).startswith('support.calls_funcs.CustomError: custom\n')


def test_call_error_is_a_mitogen_error(context):
    assert isinstance(_raise(context, funcs.raise_value_error, 'x'),
                      mitogen.core.Error)


@pytest.mark.parametrize('interpreter', interpreters.params(
    ['2.7', '3.6', '3.13']), indirect=True)
def test_call_error_type_name_follows_the_childs_python(interpreter):
    expected = ('exceptions.ValueError' if interpreter.version == '2.7'
                else 'builtins.ValueError')
    with mitogen.master.Router() as router:
        context = router.local(python_path=interpreter.path)
        e = _raise(context, funcs.raise_value_error, 'versioned')
    assert e.type_name == expected
    assert e.remote_message == 'versioned'
    assert str(e).startswith(expected + ': versioned\n')
    assert 'raise_value_error' in e.remote_traceback


# ---------------------------------------------------------------------------
# Serialization: allowed values round trip in both directions
# ---------------------------------------------------------------------------

BIG = b'\xab' * 200000
ALLOWED_VALUES = [
    pytest.param(None, id='None'),
    pytest.param(True, id='bool'),
    pytest.param(2 ** 100, id='long-int'),
    pytest.param(1.25, id='float'),
    pytest.param(u'text \xfc\u20ac', id='text'),
    pytest.param(set([1, 2, 3]), id='set'),
    pytest.param(frozenset([u'a', u'b']), id='frozenset'),
    pytest.param(complex(1.5, -2), id='complex'),
    pytest.param(bytearray(b'\x00\x01\xffabc'), id='bytearray'),
    pytest.param(datetime.datetime(2024, 2, 29, 23, 59, 58, 123456),
                 id='datetime'),
    pytest.param(datetime.datetime(2024, 1, 2, 3, 4, 5,
                                   tzinfo=datetime.timezone.utc),
                 id='datetime-utc'),
    pytest.param(datetime.date(1999, 12, 31), id='date'),
    pytest.param(datetime.time(13, 14, 15, 16), id='time'),
    pytest.param(datetime.timedelta(days=3, seconds=4, microseconds=5),
                 id='timedelta'),
    pytest.param(datetime.timezone.utc, id='timezone-utc'),
    pytest.param(datetime.timezone(datetime.timedelta(hours=-3), 'XYZ'),
                 id='timezone-named'),
    pytest.param(decimal.Decimal('3.14159265358979323846'), id='Decimal'),
    pytest.param(uuid.UUID('12345678-1234-5678-1234-567812345678'),
                 id='UUID'),
    pytest.param(b'', id='bytes-empty'),
    pytest.param(b'small', id='bytes-small'),
    pytest.param(bytes(bytearray(range(256))) * 4, id='bytes-binary'),
    pytest.param(BIG, id='bytes-large'),
    pytest.param(mitogen.core.Blob(b'blob' * 100), id='Blob'),
    pytest.param(mitogen.core.Secret(u'hunter2'), id='Secret'),
    pytest.param(mitogen.core.Kwargs({'a': 1, 'b': [2]}), id='Kwargs'),
    pytest.param({u'a': [1, (2, 3), {u'b': set([4, 5])}],
                  u'c': (b'y' * 100, u'\xfc'), 7: [None, 1.5]},
                 id='nested'),
    pytest.param([BIG, BIG, b'short', BIG], id='repeated-large-bytes'),
]


@pytest.mark.parametrize('value', ALLOWED_VALUES)
def test_allowed_value_round_trips_with_its_type(context, value):
    result = call(context, funcs.identity, value)
    assert result == value
    assert type(result) is type(value)


@pytest.mark.parametrize('value', ALLOWED_VALUES)
def test_allowed_value_arrives_in_the_child_with_its_type(context, value):
    t = type(value)
    assert call(context, funcs.type_name_of, value) == \
        '%s.%s' % (t.__module__, t.__name__)


def test_values_built_in_the_child_arrive_equal(context):
    expected = funcs.make_values()
    result = call(context, funcs.make_values)
    assert result == expected
    for key, value in expected.items():
        assert type(result[key]) is type(value), key


def test_aware_datetime_built_in_the_child_arrives_equal(context):
    assert call(context, funcs.make_aware_datetime) == \
        funcs.make_aware_datetime()


@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.6']),
                         indirect=True)
def test_values_round_trip_through_an_old_python_child(interpreter):
    values = funcs.make_values()
    with mitogen.master.Router() as router:
        context = router.local(python_path=interpreter.path)
        echoed = call(context, funcs.identity, values)
        built = call(context, funcs.make_values)
    for result in echoed, built:
        assert result == values
        assert dict((k, type(v)) for k, v in result.items()) == \
            dict((k, type(v)) for k, v in values.items())


def test_context_object_round_trips_as_the_same_context(router, context):
    result = call(context, funcs.identity, context)
    assert result == context
    assert result.name == context.name


def test_context_object_is_usable_in_the_child(router, context):
    assert call(context, funcs.describe_context, router.myself()) == \
        (0, 'master')
    assert call(context, funcs.describe_context, context) == \
        (context.context_id, context.name)


def test_sender_round_trips_to_the_same_handle(router, context):
    with mitogen.core.Receiver(router) as recv:
        sender = recv.to_sender()
        assert call(context, funcs.describe_sender, sender) == \
            ('Sender', 0, recv.handle)
        result = call(context, funcs.identity, sender)
    assert isinstance(result, mitogen.core.Sender)
    assert result.dst_handle == sender.dst_handle
    assert result.context.context_id == 0


# ---------------------------------------------------------------------------
# Serialization: refused values
# ---------------------------------------------------------------------------

def test_unregistered_class_as_argument_fails_naming_the_type(context):
    with pytest.raises((mitogen.core.CallError,
                        mitogen.core.StreamError)) as info:
        call(context, funcs.identity, funcs.Unregistered(1))
    assert 'support.calls_funcs.Unregistered' in str(info.value)
    assert 'not allowed' in str(info.value)


def test_unregistered_class_as_return_value_raises_stream_error(context):
    with pytest.raises(mitogen.core.StreamError) as info:
        call(context, funcs.make_unregistered, 1)
    assert 'support.calls_funcs.Unregistered' in str(info.value)
    assert 'register_type' in str(info.value)


def test_context_stays_usable_after_a_refused_value(context):
    with pytest.raises(mitogen.core.StreamError):
        call(context, funcs.make_unregistered, 1)
    assert call(context, funcs.add, 1, 2) == 3


def test_unpicklable_argument_raises_stream_error_in_the_caller(context):
    with pytest.raises(mitogen.core.StreamError) as info:
        context.call_no_reply(funcs.identity, threading.Lock())
    assert 'lock' in str(info.value)


def test_unpicklable_return_value_raises_call_error_naming_it(context):
    with pytest.raises(mitogen.core.CallError) as info:
        call(context, funcs.make_lock)
    assert info.value.type_name == 'mitogen.core.StreamError'
    assert 'lock' in str(info.value)


def _touch_path(tmp_path):
    path = tmp_path / 'pwned'
    assert not path.exists()
    return str(path)


@pytest.mark.parametrize('make_evil', [
    pytest.param(lambda p: funcs.Evil(os.system, ('touch %s' % p,)),
                 id='os.system'),
    pytest.param(lambda p: funcs.Evil(eval, (
        "__import__('os').system('touch %s')" % p,)), id='eval'),
    pytest.param(lambda p: funcs.Evil(exec, (
        "import os; os.system('touch %s')" % p,)), id='exec'),
    pytest.param(lambda p: funcs.Evil(open, (p, 'w')), id='open'),
    pytest.param(lambda p: funcs.Evil(getattr, (
        funcs.Evil(__import__, ('os',)), 'system')), id='getattr-import'),
])
def test_malicious_argument_is_refused_without_running_code(
        context, tmp_path, make_evil):
    path = _touch_path(tmp_path)
    with pytest.raises((mitogen.core.CallError,
                        mitogen.core.StreamError)) as info:
        call(context, funcs.identity, make_evil(path))
    assert 'not allowed' in str(info.value)
    assert not os.path.exists(path)
    assert call(context, funcs.add, 1, 1) == 2


def test_malicious_return_value_is_refused_without_running_code(
        context, tmp_path):
    path = _touch_path(tmp_path)
    with pytest.raises(mitogen.core.StreamError) as info:
        call(context, funcs.make_evil_touch, path)
    assert 'system' in str(info.value)
    assert 'not allowed' in str(info.value)
    assert not os.path.exists(path)


def test_registered_type_is_accepted_as_argument_in_the_child():
    with mitogen.master.Router() as router:
        router.register_type(funcs.Point)
        context = router.local(python_path=sys.executable)
        assert call(context, funcs.describe_point, funcs.Point(3, 4)) == \
            (True, 3, 4)


def test_registered_type_is_accepted_as_return_value():
    with mitogen.master.Router() as router:
        router.register_type(funcs.Point)
        context = router.local(python_path=sys.executable)
        result = call(context, funcs.make_point, 5, 6)
    assert type(result) is funcs.Point
    assert result == funcs.Point(5, 6)


def test_type_registered_after_the_child_started_is_refused_by_it():
    # Registration reaches children only when they start.
    with mitogen.master.Router() as other:
        child = other.local(python_path=sys.executable)
        other.register_type(funcs.Point)
        with pytest.raises(mitogen.core.CallError) as info:
            call(child, funcs.describe_point, funcs.Point(1, 1))
    assert 'support.calls_funcs.Point' in str(info.value)


def test_registered_type_is_refused_by_an_unregistering_router():
    with mitogen.master.Router() as router:
        context = router.local(python_path=sys.executable)
        with pytest.raises(mitogen.core.StreamError):
            call(context, funcs.make_point, 1, 2)


# ---------------------------------------------------------------------------
# max_message_size
# ---------------------------------------------------------------------------

LIMIT = 64 * 1024


@pytest.fixture(scope='module')
def small_context():
    with mitogen.master.Router(max_message_size=LIMIT) as router:
        yield router.local(python_path=sys.executable)


def test_small_messages_pass_under_max_message_size(small_context):
    data = b'a' * (LIMIT // 2)
    assert call(small_context, funcs.identity, data) == data


def test_oversized_argument_fails_with_a_clear_error(small_context):
    with pytest.raises(mitogen.core.ChannelError) as info:
        call(small_context, funcs.identity, b'a' * (LIMIT * 2))
    assert 'max_message_size' in str(info.value)
    assert str(LIMIT) in str(info.value)


def test_oversized_return_value_fails_with_a_clear_error(small_context):
    with pytest.raises(mitogen.core.ChannelError) as info:
        call(small_context, funcs.make_big_bytes, LIMIT * 2)
    assert 'max_message_size' in str(info.value)
    assert str(LIMIT) in str(info.value)


def test_context_stays_usable_after_an_oversized_message(small_context):
    with pytest.raises(mitogen.core.ChannelError):
        call(small_context, funcs.make_big_bytes, LIMIT * 2)
    with pytest.raises(mitogen.core.ChannelError):
        call(small_context, funcs.identity, b'a' * (LIMIT * 2))
    assert call(small_context, funcs.make_big_bytes, 100) == b'z' * 100


def test_max_message_size_reaches_the_child():
    limit = 256 * 1024
    with mitogen.master.Router(max_message_size=limit) as router:
        context = router.local(python_path=sys.executable)
        # Under the limit each way: the child's own limit is the master's.
        assert len(call(context, funcs.make_big_bytes, limit // 2)) == \
            limit // 2
        with pytest.raises(mitogen.core.ChannelError) as info:
            call(context, funcs.make_big_bytes, limit + 1)
    assert str(limit) in str(info.value)
