"""
Specification of :class:`mitogen.select.Select`: waiting on many receivers,
latches and nested selects at once; oneshot and persistent membership;
:meth:`~mitogen.select.Select.get_event` and its source; iteration;
:meth:`~mitogen.select.Select.all`; timeouts; cycles and misuse refused;
and no hang when a member's context dies or the select runs out of members.

Latch cases run in this process; receiver cases use real children (a module
fixture starts three).  The functions children run are in
:mod:`support.select_funcs`.
"""
import os
import signal
import sys
import threading
import time

import pytest

import interpreters
import mitogen.core
import mitogen.master
import mitogen.select
from mitogen.core import Latch
from mitogen.select import Select
from support import select_funcs as funcs
from waiting import start_thread, wait_until

# Seconds a result may take before a test calls it a hang.
PROMPTLY = 30.0


@pytest.fixture(scope='module')
def router():
    with mitogen.master.Router() as router:
        yield router


@pytest.fixture(scope='module')
def children(router):
    return [router.local(python_path=sys.executable) for _ in range(3)]


@pytest.fixture
def own_router():
    with mitogen.master.Router() as router:
        yield router


def waiting_count(select):
    # Threads blocked in the select's get(): lets a test act only once a
    # thread really waits, instead of sleeping and hoping.
    latch = select._latch
    with latch._lock:
        return len(latch._waiters)


def get_in_thread(select, timeout=PROMPTLY):
    """Start a thread blocked in ``select.get()``; return ``(thread,
    outcome)``, outcome receiving ``('ok', value)`` or ``('raised', exc)``
    once get() returns."""
    outcome = []

    def run():
        try:
            outcome.append(('ok', select.get(timeout=timeout)))
        except Exception as e:
            outcome.append(('raised', e))
    t = start_thread(run)
    wait_until(lambda: waiting_count(select) == 1)
    return t, outcome


def touch(path):
    open(path, 'w').close()


# ---------------------------------------------------------------------------
# Latches as members
# ---------------------------------------------------------------------------

def test_get_returns_an_item_put_on_a_member_latch_by_another_thread():
    latches = [Latch(), Latch()]
    with Select(latches) as select:
        t, outcome = get_in_thread(select)
        latches[1].put('late')
        t.join(PROMPTLY)
    assert outcome == [('ok', 'late')]


def test_items_queued_before_the_latch_was_added_are_returned():
    latch = Latch()
    latch.put('early')
    with Select([latch]) as select:
        assert select.get(block=False) == 'early'


def test_oneshot_select_takes_one_item_from_a_latch_then_drops_it():
    latch = Latch()
    latch.put(1)
    latch.put(2)
    with Select([latch]) as select:
        assert select.get(block=False) == 1
        assert not select
        with pytest.raises(mitogen.select.Error):
            select.get(block=False)
    assert latch.get(block=False) == 2
    assert latch.notify is None


def test_persistent_select_returns_every_item_a_latch_holds():
    latch = Latch()
    for i in range(3):
        latch.put(i)
    with Select([latch], oneshot=False) as select:
        assert [select.get(block=False) for _ in range(3)] == [0, 1, 2]
        assert len(select) == 1
        with pytest.raises(mitogen.core.TimeoutError):
            select.get(block=False)


def test_iteration_ends_once_every_oneshot_member_produced_its_item():
    latches = [Latch() for _ in range(4)]
    for i, latch in enumerate(latches):
        latch.put(i)
        latch.put('never')
    with Select(latches) as select:
        assert sorted(select) == [0, 1, 2, 3]
        assert len(select) == 0


def test_get_event_source_is_the_latch_that_received_the_item():
    latches = [Latch(), Latch(), Latch()]
    latches[2].put('x')
    with Select(latches) as select:
        event = select.get_event(timeout=PROMPTLY)
    assert event.source is latches[2]
    assert event.data == 'x'


def test_get_with_timeout_raises_timeout_error_when_nothing_arrives():
    with Select([Latch()]) as select:
        start = time.monotonic()
        with pytest.raises(mitogen.core.TimeoutError):
            select.get(timeout=0.2)
        elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 5


def test_get_without_block_raises_timeout_error_when_nothing_is_ready():
    with Select([Latch()]) as select:
        with pytest.raises(mitogen.core.TimeoutError):
            select.get(block=False)


def test_get_on_a_select_without_members_raises_select_error():
    with Select() as select:
        with pytest.raises(mitogen.select.Error) as info:
            select.get(timeout=PROMPTLY)
    assert isinstance(info.value, mitogen.core.Error)
    assert mitogen.select.SelectError is mitogen.select.Error


def test_removing_the_last_member_wakes_a_waiting_get_with_select_error():
    latch = Latch()
    with Select([latch]) as select:
        t, outcome = get_in_thread(select)
        select.remove(latch)
        t.join(PROMPTLY)
    assert outcome[0][0] == 'raised'
    assert isinstance(outcome[0][1], mitogen.select.Error)


def test_removing_the_last_member_wakes_every_waiting_get():
    latch = Latch()
    with Select([latch]) as select:
        outcomes = []

        def run():
            try:
                outcomes.append(select.get(timeout=PROMPTLY))
            except Exception as e:
                outcomes.append(e)
        threads = [start_thread(run) for _ in range(3)]
        wait_until(lambda: waiting_count(select) == 3)
        select.remove(latch)
        for t in threads:
            t.join(PROMPTLY)
    assert len(outcomes) == 3
    assert all(isinstance(e, mitogen.select.Error) for e in outcomes)


def test_a_closed_member_latch_raises_latch_error_and_is_removed():
    closed, kept = Latch(), Latch()
    closed.close()
    with Select([kept, closed]) as select:
        with pytest.raises(mitogen.core.LatchError):
            select.get(timeout=PROMPTLY)
        assert len(select) == 1
        kept.put('kept')
        assert select.get(timeout=PROMPTLY) == 'kept'


def test_many_threads_feeding_many_latches_deliver_every_item_once():
    latches = [Latch() for _ in range(8)]
    per_latch = 200

    def feed(latch, n):
        for i in range(per_latch):
            latch.put((n, i))
    with Select(latches, oneshot=False) as select:
        threads = [start_thread(feed, latch, n)
                   for n, latch in enumerate(latches)]
        got = [select.get(timeout=PROMPTLY) for _ in range(8 * per_latch)]
        for t in threads:
            t.join(PROMPTLY)
        with pytest.raises(mitogen.core.TimeoutError):
            select.get(block=False)
    assert sorted(got) == sorted((n, i) for n in range(8)
                                 for i in range(per_latch))
    for n in range(8):
        mine = [i for (m, i) in got if m == n]
        assert mine == sorted(mine), 'items of one latch came out of order'


def test_concurrent_getters_take_at_most_one_item_per_oneshot_member():
    latches = [Latch() for _ in range(50)]
    for latch in latches:
        latch.put('first')
        latch.put('second')
    got = []
    lock = threading.Lock()
    with Select(latches) as select:
        def drain():
            for item in select:
                with lock:
                    got.append(item)
        threads = [start_thread(drain) for _ in range(4)]
        for t in threads:
            t.join(PROMPTLY)
    assert got == ['first'] * 50


# ---------------------------------------------------------------------------
# Membership: add, remove, close, misuse
# ---------------------------------------------------------------------------

def test_bool_and_len_follow_membership():
    latches = [Latch(), Latch()]
    with Select() as select:
        assert not select and len(select) == 0
        select.add(latches[0])
        select.add(latches[1])
        assert select and len(select) == 2
        select.remove(latches[0])
        assert len(select) == 1


def test_size_and_empty_count_what_get_could_return_now():
    latches = [Latch(), Latch()]
    with Select(latches) as select:
        assert select.empty() and select.size() == 0
        latches[0].put(1)
        latches[0].put(2)
        latches[1].put(3)
        # Oneshot: one item per member.
        assert select.size() == 2 and not select.empty()
    with Select(latches, oneshot=False) as select:
        assert select.size() == 3


def test_removed_member_no_longer_delivers_to_the_select():
    kept, removed = Latch(), Latch()
    with Select([kept, removed]) as select:
        select.remove(removed)
        removed.put('lost')
        with pytest.raises(mitogen.core.TimeoutError):
            select.get(timeout=0.05)
    assert removed.notify is None
    assert removed.get(block=False) == 'lost'


def test_a_removed_member_can_join_another_select():
    latch = Latch()
    with Select([latch]) as first, Select() as second:
        first.remove(latch)
        second.add(latch)
        latch.put('moved')
        assert second.get(timeout=PROMPTLY) == 'moved'


def test_remove_of_an_object_that_is_not_a_member_raises_select_error():
    with Select([Latch()]) as select:
        with pytest.raises(mitogen.select.Error):
            select.remove(Latch())


def test_adding_a_member_of_another_select_raises_select_error():
    latch = Latch()
    with Select([latch]) as first, Select() as second:
        with pytest.raises(mitogen.select.Error):
            second.add(latch)
        assert len(first) == 1
        assert len(second) == 0


def test_adding_the_same_member_twice_raises_select_error():
    latch = Latch()
    with Select([latch]) as select:
        with pytest.raises(mitogen.select.Error):
            select.add(latch)
        assert len(select) == 1


def test_adding_an_unsupported_object_raises_type_error():
    with Select() as select:
        with pytest.raises(TypeError):
            select.add(object())


def test_a_constructor_that_fails_leaves_no_member_hooked():
    latch = Latch()
    with Select([latch]) as owner:
        fresh = Latch()
        with pytest.raises(mitogen.select.Error):
            Select([fresh, latch])
        assert fresh.notify is None
        assert latch.notify is not None and len(owner) == 1


def test_close_wakes_a_waiting_get_with_latch_error():
    select = Select([Latch()])
    t, outcome = get_in_thread(select)
    select.close()
    t.join(PROMPTLY)
    assert outcome[0][0] == 'raised'
    assert isinstance(outcome[0][1], mitogen.core.LatchError)


def test_get_after_close_raises_latch_error():
    select = Select([Latch()])
    select.close()
    with pytest.raises(mitogen.core.LatchError):
        select.get(block=False)


def test_close_unhooks_every_member():
    latches = [Latch(), Latch()]
    with Select(latches) as select:
        pass
    assert not select
    assert [latch.notify for latch in latches] == [None, None]
    latches[0].put('after close')  # must not reach the closed select
    assert latches[0].get(block=False) == 'after close'


# ---------------------------------------------------------------------------
# Nested selects
# ---------------------------------------------------------------------------

def test_nested_select_result_reaches_the_outer_select():
    latch = Latch()
    inner = Select([latch])
    with Select([inner]) as outer:
        t, outcome = get_in_thread(outer)
        latch.put('deep')
        t.join(PROMPTLY)
    assert outcome == [('ok', 'deep')]


def test_get_event_source_through_nested_selects_is_the_innermost_latch():
    latch = Latch()
    innermost = Select([latch])
    middle = Select([Latch(), innermost])
    with Select([Latch(), middle]) as outer:
        latch.put('x')
        event = outer.get_event(timeout=PROMPTLY)
    assert event.source is latch
    assert event.data == 'x'


def test_oneshot_outer_select_drains_a_nested_select_until_it_is_empty():
    inner_latches = [Latch() for _ in range(3)]
    inner = Select(inner_latches)
    direct = Latch()
    with Select([inner, direct]) as outer:
        for i, latch in enumerate(inner_latches):
            latch.put(i)
        direct.put('direct')
        assert sorted(outer, key=str) == [0, 1, 2, 'direct']
        assert not outer and not inner


def test_items_queued_inside_a_nested_select_before_it_was_added_are_returned():
    latch = Latch()
    latch.put('early')
    inner = Select([latch])
    with Select([inner]) as outer:
        assert outer.get(block=False) == 'early'


def test_an_inner_select_that_loses_its_last_member_is_dropped_by_the_outer():
    latch = Latch()
    inner = Select([latch])
    with Select([inner]) as outer:
        t, outcome = get_in_thread(outer)
        inner.remove(latch)
        t.join(PROMPTLY)
    assert isinstance(outcome[0][1], mitogen.select.Error)
    assert inner.notify is None


def test_closing_an_inner_select_drops_it_from_the_outer():
    kept = Latch()
    inner = Select([Latch()])
    with Select([inner, kept], oneshot=False) as outer:
        inner.close()
        kept.put('still works')
        assert outer.get(timeout=PROMPTLY) == 'still works'
        assert len(outer) == 1


def test_adding_a_select_to_itself_is_a_cycle():
    with Select() as select:
        with pytest.raises(mitogen.select.Error) as info:
            select.add(select)
    assert 'cycle' in str(info.value)


def test_adding_an_enclosing_select_is_a_cycle():
    c = Select()
    b = Select([c])
    with Select([b]) as a:
        for inner, outer in [(b, a), (c, a), (c, b)]:
            with pytest.raises(mitogen.select.Error) as info:
                inner.add(outer)
            assert 'cycle' in str(info.value)
        assert len(a) == 1 and len(b) == 1 and len(c) == 0


def test_a_select_may_hold_two_selects_that_share_no_member():
    inner_a, inner_b = Select([Latch()]), Select([Latch()])
    with Select([inner_a, inner_b]) as outer:
        assert len(outer) == 2


# ---------------------------------------------------------------------------
# Receivers: local channels
# ---------------------------------------------------------------------------

def test_message_sent_to_a_member_receiver_is_returned_with_its_receiver(
        router):
    recv = mitogen.core.Receiver(router)
    try:
        with Select([recv]) as select:
            recv.to_sender().send({'k': 1})
            msg = select.get(timeout=PROMPTLY)
        assert msg.unpickle() == {'k': 1}
        assert msg.receiver is recv
    finally:
        recv.close()


def test_a_closed_channel_raises_channel_error_and_leaves_a_persistent_select(
        router):
    closed, kept = mitogen.core.Receiver(router), mitogen.core.Receiver(router)
    try:
        with Select([closed, kept], oneshot=False) as select:
            closed.to_sender().close()
            with pytest.raises(mitogen.core.ChannelError):
                select.get(timeout=PROMPTLY)
            assert len(select) == 1
            kept.to_sender().send('alive')
            assert select.get(timeout=PROMPTLY).unpickle() == 'alive'
    finally:
        closed.close()
        kept.close()


# ---------------------------------------------------------------------------
# Receivers: calls into children
# ---------------------------------------------------------------------------

def test_select_returns_call_async_results_from_several_children(children):
    recvs = [ctx.call_async(funcs.add, i, 100)
             for i, ctx in enumerate(children)]
    with Select(recvs) as select:
        msgs = list(select)
    assert sorted(msg.unpickle() for msg in msgs) == [100, 101, 102]
    assert sorted(id(m.receiver) for m in msgs) == sorted(map(id, recvs))


def test_results_come_out_in_completion_order(children, tmp_path):
    gate = str(tmp_path / 'gate')
    slow = children[0].call_async(funcs.return_when, gate, 'slow')
    fast = children[1].call_async(funcs.add, 1, 1)
    with Select([slow, fast]) as select:
        first = select.get_event(timeout=PROMPTLY)
        touch(gate)
        second = select.get_event(timeout=PROMPTLY)
    assert (first.source, first.data.unpickle()) == (fast, 2)
    assert (second.source, second.data.unpickle()) == (slow, 'slow')


def test_get_event_source_is_the_call_async_receiver(children):
    recvs = [ctx.call_async(os.getpid) for ctx in children]
    pids = dict((id(recv), ctx.call(os.getpid))
                for recv, ctx in zip(recvs, children))
    with Select(recvs) as select:
        for event in select.iter_events():
            assert event.data.unpickle() == pids[id(event.source)]


def test_select_all_returns_every_result_in_completion_order(
        children, tmp_path):
    gate = str(tmp_path / 'gate')
    slow = children[0].call_async(funcs.return_when, gate, 'last')
    fast = children[1].call_async(funcs.add, 2, 3)
    wait_until(lambda: not fast.empty(), timeout=PROMPTLY)

    def open_gate_once_the_fast_result_was_taken():
        wait_until(fast.empty, timeout=PROMPTLY)
        touch(gate)
    t = start_thread(open_gate_once_the_fast_result_was_taken)
    results = Select.all([slow, fast])
    t.join(PROMPTLY)
    assert results == [5, 'last']


def test_select_all_raises_call_error_of_a_failed_call(children):
    recvs = [children[0].call_async(funcs.add, 1, 2),
             children[1].call_async(funcs.fail, 'boom')]
    with pytest.raises(mitogen.core.CallError) as info:
        Select.all(recvs)
    assert 'boom' in str(info.value)
    assert all(recv.notify is None for recv in recvs)


def test_nested_selects_gather_results_from_several_children(children):
    inner_a = Select([children[0].call_async(funcs.add, 1, 0),
                      children[1].call_async(funcs.add, 2, 0)])
    inner_b = Select([children[2].call_async(funcs.add, 3, 0)])
    with Select([inner_a, inner_b]) as outer:
        assert sorted(msg.unpickle() for msg in outer) == [1, 2, 3]


def test_killed_child_surfaces_as_channel_error_through_the_select(
        own_router, children, tmp_path):
    doomed = own_router.local(python_path=sys.executable)
    pid = doomed.call(os.getpid)
    marker = str(tmp_path / 'stuck')
    stuck = doomed.call_async(funcs.block_forever, marker)
    wait_until(lambda: os.path.exists(marker), timeout=PROMPTLY)
    gate = str(tmp_path / 'gate')
    healthy = children[0].call_async(funcs.return_when, gate, 'ok')
    with Select([stuck, healthy]) as select:
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(mitogen.core.ChannelError):
            select.get(timeout=PROMPTLY)
        assert time.monotonic() - start < PROMPTLY
        assert len(select) == 1
        touch(gate)
        assert select.get(timeout=PROMPTLY).unpickle() == 'ok'


def test_shut_down_child_surfaces_as_channel_error_through_iteration(
        own_router, tmp_path):
    ctx = own_router.local(python_path=sys.executable)
    marker = str(tmp_path / 'stuck')
    stuck = ctx.call_async(funcs.block_forever, marker)
    wait_until(lambda: os.path.exists(marker), timeout=PROMPTLY)
    with Select([stuck]) as select:
        ctx.shutdown()
        with pytest.raises(mitogen.core.ChannelError):
            for _ in select:
                pass
        assert not select


# ---------------------------------------------------------------------------
# In children
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.6']),
                         indirect=True)
def test_select_over_threaded_latches_works_in_a_child(router, interpreter):
    ctx = router.local(python_path=interpreter.path)
    try:
        version, got, remaining = ctx.call(funcs.select_over_threaded_latches)
    finally:
        ctx.shutdown(wait=True)
    assert '%d.%d' % tuple(version) == interpreter.version
    assert sorted(got) == [(0, 'item-0'), (1, 'item-1')]
    assert remaining == 0
