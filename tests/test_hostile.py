"""
Specification of how a context stands up to hostile and slow peers.

- Every value that crosses the wire is range-checked before use: IDs and
  handles fit the 32-bit header fields, names and error texts have upper
  bounds (:data:`mitogen.core.MAX_NAME_LENGTH`,
  :data:`mitogen.core.MAX_CALL_ERROR_LENGTH`); a violation is a
  :class:`mitogen.core.StreamError`, never an exception from deep inside.
- Memory grows with the bytes that arrive, never with what a header
  claims.
- Flow control (``Receiver(window=)``) bounds what a receiver buffers, so a
  fast producer and a slow consumer both stay within a fixed memory bound.
- Dropped messages are counted per stream (``Router.drop_counts``) and
  logged with a rate limit; malformed control messages are refused without
  a traceback.
- Processes below a killed hop end within a second.

The hostile peer is a real child writing raw frames onto its stream to the
master (:mod:`support.hostile_funcs`). Every such case checks that nothing
ran (a marker file must not appear), that a healthy sibling still answers,
and that the master's memory and log volume stay within stated bounds.

The long runs (10**6 fuzzed frames, 1 GiB through a flow controlled
channel) run when ``MITOGEN_LONG_TESTS=1``; by default the same tests run a
short seeded version.
"""
import importlib
import logging
import os
import signal
import sys
import threading
import time
import tracemalloc
import uuid

import pytest

import mitogen.core
import mitogen.master
import waiting
from mitogen.core import (ALLOCATE_ID, CALL_FUNCTION, DEL_ROUTE, GET_MODULE,
                          FORWARD_MODULE, LOAD_MODULE, MAX_ID, StreamError)

from support import hostile_funcs as hf

LONG = os.environ.get('MITOGEN_LONG_TESTS') == '1'

#: Frames of the fuzz run.
FUZZ_FRAMES = 10 ** 6 if LONG else 20000
#: Bytes of the flow control run.
FLOW_BYTES = 1 << 30 if LONG else 128 << 20

MiB = 1 << 20

#: ctx.call() that fails instead of hanging.
call = waiting.caller(120 if LONG else 60)


@pytest.fixture
def marker(tmp_path):
    """A path that code injected by a hostile peer would create."""
    return str(tmp_path / ('ran-%s' % uuid.uuid4().hex))


@pytest.fixture
def peers(router):
    """A hostile child and a healthy sibling, with the helpers loaded."""
    hostile = router.local(python_path=sys.executable)
    sibling = router.local(python_path=sys.executable)
    for ctx in (hostile, sibling):
        call(ctx, hf.rss_kib)
    return hostile, sibling


def rss_mib():
    return hf.rss_kib() / 1024.0


def assert_healthy(sibling, marker):
    assert not os.path.exists(marker)
    assert call(sibling, os.getpid) > 0


def loud_records(caplog):
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


def tracebacks(caplog):
    """Records that carry a traceback, logged here or by a child."""
    return [r for r in caplog.records if r.exc_info or
            'Traceback (most recent call last)' in r.getMessage()]


# ---------------------------------------------------------------------------
# Validated values
# ---------------------------------------------------------------------------

def core_call(name, *args):
    return hf.global_call('mitogen.core', name, args)


OUT_OF_RANGE = [
    pytest.param(core_call('_unpickle_context', 2 ** 40, u'x'),
                 id='context-id-2**40'),
    pytest.param(core_call('_unpickle_context', -1, None), id='context-id--1'),
    pytest.param(core_call('_unpickle_context', u'1', None),
                 id='context-id-text'),
    pytest.param(core_call('_unpickle_context', 1, u'n' * 100000),
                 id='context-name-100000'),
    pytest.param(core_call('_unpickle_context', 1, 5), id='context-name-int'),
    pytest.param(core_call('_unpickle_sender', 2 ** 40, 1000),
                 id='sender-context-2**40'),
    pytest.param(core_call('_unpickle_sender', -1, 1000),
                 id='sender-context--1'),
    pytest.param(core_call('_unpickle_sender', 1, 2 ** 40),
                 id='sender-handle-2**40'),
    pytest.param(core_call('_unpickle_sender', 1, 0), id='sender-handle-0'),
    pytest.param(core_call('_unpickle_sender', 1, 1000, 0),
                 id='sender-window-0'),
    pytest.param(core_call('_unpickle_call_error', u'x' * 1000000),
                 id='call-error-1000000'),
    pytest.param(core_call('_unpickle_call_error', u'x', u'T' * 100000),
                 id='call-error-type-name'),
    pytest.param(core_call('_unpickle_call_error', 5), id='call-error-int'),
    pytest.param(core_call('CallError', u'%999999999s', u'x'),
                 id='call-error-format-bomb'),
    pytest.param(core_call('Blob', 10 ** 12), id='blob-of-a-length'),
    pytest.param(core_call('Secret', 5), id='secret-of-int'),
    pytest.param(core_call('Kwargs', [(u'a', 1)]), id='kwargs-of-list'),
]


@pytest.mark.parametrize('body', OUT_OF_RANGE)
def test_value_out_of_range_is_refused_with_stream_error(body, router):
    with pytest.raises(StreamError, match='refusing'):
        mitogen.core.deserialize(0, body, router)


def test_value_refused_in_a_receiving_thread_is_counted_and_logged(
        peers, router, caplog):
    # The router delivers the message; its body is refused only when the
    # program unpickles it: counted under the child's stream, logged once.
    hostile, _ = peers
    recv = mitogen.core.Receiver(router)
    body = core_call('_unpickle_context', 2 ** 40, None)
    call(hostile, hf.send_frames, [hf.frame(0, hostile.context_id,
                                            hostile.context_id, recv.handle,
                                            0, body)])
    msg = recv.get(timeout=30)
    assert msg.receiver is recv
    with pytest.raises(StreamError, match='refusing'):
        msg.unpickle()
    assert router.drop_counts.get(hostile.context_id) == 1
    lines = [r.getMessage() for r in caplog.records
             if 'its body was refused' in r.getMessage()]
    assert len(lines) == 1 and 'refusing' in lines[0]


def test_values_at_the_edge_of_their_ranges_are_accepted(router):
    ctx = mitogen.core.Context(router, MAX_ID,
                               u'n' * mitogen.core.MAX_NAME_LENGTH)
    value = (ctx, mitogen.core.Sender(ctx, MAX_ID))
    got_ctx, sender = mitogen.core.deserialize(
        *mitogen.core.serialize(value), router=router)
    assert got_ctx.context_id == MAX_ID
    assert len(got_ctx.name) == mitogen.core.MAX_NAME_LENGTH
    assert sender.dst_handle == MAX_ID


def test_a_refused_context_is_never_registered_with_the_router(router):
    with pytest.raises(StreamError):
        mitogen.core.deserialize(
            0, core_call('_unpickle_context', 77, u'n' * 100000), router)
    assert router.context_by_id(77, create=False) is None


def test_long_call_error_is_shortened_by_its_sender_and_arrives(router):
    text = u'head ' + u'x' * 1000000 + u' tail'
    e = mitogen.core.CallError(text)
    got = mitogen.core.deserialize(*mitogen.core.serialize(e), router=router)
    assert isinstance(got, mitogen.core.CallError)
    assert len(str(got)) <= mitogen.core.MAX_CALL_ERROR_LENGTH
    assert str(got).startswith(u'head ') and str(got).endswith(u' tail')
    assert u'characters cut' in str(got)


def test_message_to_an_out_of_range_handle_raises_stream_error():
    msg = mitogen.core.Message(dst_id=1, handle=2 ** 40)
    with pytest.raises(StreamError, match='handle'):
        msg.encode()


def test_sender_to_an_impossible_context_raises_stream_error(router):
    sender = mitogen.core.Sender(mitogen.core.Context(router, -1), 1000)
    with pytest.raises(StreamError, match='no context can have ID -1'):
        sender.send(u'x')


# ---------------------------------------------------------------------------
# Memory bounded by what arrives
# ---------------------------------------------------------------------------

def test_header_claiming_the_limit_costs_only_the_bytes_that_arrived():
    decoder = mitogen.core.FrameDecoder()
    header = hf.frame(0, 1, 1, 1000, 0, b'',
                      length=mitogen.core.DEFAULT_MAX_MESSAGE_SIZE)
    chunk = b'\0' * 65536
    tracemalloc.start()
    try:
        decoder.feed(header)
        for _ in range(16):
            decoder.feed(chunk)
            assert decoder.next_message() is None
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.pending == 32 + MiB
    # 1 MiB arrived; the body buffer over-allocates by at most 1/8.
    assert held <= 1.25 * MiB


STALLED = 8
#: Master memory a stream stalled inside an at-limit message may cost: it
#: holds the bytes that arrived (1 MiB here), the over-allocation of its
#: growing buffer (at most 1/8 of that) and at most one 256 KiB read in
#: flight, under 1.5 MiB; the rest is allocator slack. Before bodies grew
#: with what arrived, each cost the whole 128 MiB the header claimed.
STALLED_BOUND_MIB = 4


def test_stalled_at_limit_headers_cost_the_master_only_what_arrived(router):
    children = [router.local(python_path=sys.executable)
                for _ in range(STALLED)]
    sibling = router.local(python_path=sys.executable)
    for ctx in children:
        call(ctx, hf.rss_kib)
    before = rss_mib()
    for ctx in children:
        ctx.call_no_reply(hf.stall_at_limit, MiB)
    decoders = [router.stream_by_id(ctx.context_id).protocol._decoder
                for ctx in children]
    assert waiting.wait_for(
        lambda: all(d.pending >= 32 + MiB for d in decoders), timeout=30)
    growth = rss_mib() - before
    assert growth <= STALLED * STALLED_BOUND_MIB, growth
    assert call(sibling, os.getpid) > 0


# ---------------------------------------------------------------------------
# Flow control
# ---------------------------------------------------------------------------

def start_producer(sender, count, size):
    """Send `count` messages of `size` bytes from a thread; return the
    thread and a list that receives the error it ended with, if any."""
    errors = []

    def produce():
        try:
            for i in range(count):
                sender.send(b'%06d' % (i,) + b'x' * (size - 6))
        except Exception as e:
            errors.append(e)
    thread = threading.Thread(target=produce)
    thread.start()
    return thread, errors


def test_windowed_sender_waits_until_the_receiver_consumes(router):
    recv = mitogen.core.Receiver(router, window=10000)
    thread, errors = start_producer(recv.to_sender(), 50, 1000)
    time.sleep(0.5)
    # The producer is held back: no more than a window is queued.
    assert thread.is_alive()
    assert recv.size() * 1000 <= 10000
    got = [recv.get(timeout=10).unpickle()[:6] for _ in range(50)]
    thread.join(10)
    assert not errors and not thread.is_alive()
    assert got == [b'%06d' % (i,) for i in range(50)]
    recv.close()


def test_message_larger_than_the_window_passes_when_nothing_is_queued(
        router):
    recv = mitogen.core.Receiver(router, window=1000)
    sender = recv.to_sender()
    sender.send(b'x' * 5000)
    assert len(recv.get(timeout=10).unpickle()) == 5000
    sender.send(b'y' * 5000)
    assert len(recv.get(timeout=10).unpickle()) == 5000
    recv.close()


def test_sender_ignoring_the_window_is_dropped_and_counted(router):
    recv = mitogen.core.Receiver(router, window=10000)
    rude = mitogen.core.Sender(router.myself(), recv.handle)
    size = mitogen.core.Message.pickled(b'x' * 990).size
    fit = 10000 // size
    for _ in range(30):
        rude.send(b'x' * 990)
    waiting.wait_for(lambda: router.drop_counts.get(None) == 30 - fit)
    assert recv.size() == fit
    recv.close()


def test_waiting_sender_fails_when_the_receiver_closes(router):
    recv = mitogen.core.Receiver(router, window=1000)
    thread, errors = start_producer(recv.to_sender(), 10, 800)
    time.sleep(0.3)
    assert thread.is_alive()
    recv.close()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(errors[0], mitogen.core.ChannelError)


def test_windowed_sender_keeps_its_window_when_pickled(router):
    recv = mitogen.core.Receiver(router, window=12345)
    sender = mitogen.core.deserialize(
        *mitogen.core.serialize(recv.to_sender()), router=router)
    assert (sender.dst_handle, sender.window) == (recv.handle, 12345)
    recv.close()


def test_receiver_without_window_keeps_mitogens_unbounded_queue(router):
    recv = mitogen.core.Receiver(router)
    sender = recv.to_sender()
    assert recv.window is None and sender.window is None
    for _ in range(100):
        sender.send(b'x' * 1000)
    assert waiting.wait_for(lambda: recv.size() == 100, timeout=10)
    assert not router.drop_counts
    recv.close()


def test_windowed_sender_works_from_every_interpreter(router, interpreter):
    child = router.local(python_path=interpreter.path)
    recv = mitogen.core.Receiver(router, window=256 * 1024)
    result = child.call_async(hf.produce, recv.to_sender(), 4 * MiB,
                              64 * 1024)
    received = sum(len(msg.unpickle()) for msg in recv)
    assert received == 4 * MiB
    assert result.get(timeout=60).unpickle() > 0
    assert not router.drop_counts


#: Memory either process may grow by while FLOW_BYTES go through a channel
#: with a 4 MiB window in 1 MiB messages: the window, the message being
#: written or decoded on each side, and allocator slack.
FLOW_BOUND_MIB = 32


def test_slow_consumer_bounds_the_memory_of_both_processes(router):
    producer = router.local(python_path=sys.executable)
    child_before = call(producer, hf.rss_kib) / 1024.0
    recv = mitogen.core.Receiver(router, window=4 * MiB)
    before = rss_mib()
    peak = before
    result = producer.call_async(hf.produce, recv.to_sender(), FLOW_BYTES,
                                 MiB)
    received = 0
    for msg in recv:
        received += len(msg.unpickle())
        time.sleep(0.005)
        if not received % (16 * MiB):
            peak = max(peak, rss_mib())
    assert received == FLOW_BYTES
    child_peak = result.get(timeout=60).unpickle() / 1024.0
    assert peak - before <= FLOW_BOUND_MIB
    assert child_peak - child_before <= FLOW_BOUND_MIB
    assert not router.drop_counts


# ---------------------------------------------------------------------------
# Quiet under attack
# ---------------------------------------------------------------------------

def test_refusals_are_counted_and_logged_with_a_rate_limit(router, caplog):
    router.drop_log_interval = 0.5
    refuse = router.add_handler(lambda msg: None, policy=lambda m, s: False)
    for _ in range(1000):
        router.route(mitogen.core.Message(dst_id=router.context_id,
                                          handle=refuse))
    assert waiting.wait_for(lambda: router.drop_counts.get(None) == 1000,
                         timeout=10)
    summary = waiting.wait_for(lambda: [
        r for r in caplog.records if 'more messages' in r.getMessage()],
        timeout=10)
    full = [r for r in caplog.records if 'refused by the policy'
            in r.getMessage() and r not in summary]
    assert len(full) == router.drop_log_burst
    assert len(summary) == 1
    assert '990 more messages' in summary[0].getMessage()
    assert '(1000 in all)' in summary[0].getMessage()


def test_forged_frames_are_counted_and_their_log_is_rate_limited(
        router, peers, caplog):
    hostile, sibling = peers
    router.drop_log_interval = 1.0
    me = hostile.context_id
    frames = [hf.frame(0, me, 0, GET_MODULE, 0, b'forged')] * 10000
    assert call(hostile, hf.send_frames, frames) == 10000
    assert waiting.wait_for(lambda: router.drop_counts.get(me) == 10000,
                         timeout=30), router.drop_counts
    assert waiting.wait_for(lambda: any(
        '(10000 in all)' in r.getMessage() for r in caplog.records),
        timeout=10)
    dropped = [r for r in loud_records(caplog) if 'dropped' in
               r.getMessage()]
    assert len(dropped) <= router.drop_log_burst + 2
    assert call(hostile, os.getpid) > 0
    assert call(sibling, os.getpid) > 0


# ---------------------------------------------------------------------------
# The standing hostile-peer suite
# ---------------------------------------------------------------------------

#: Master memory the fuzz run may cost: its frames are small and dropped or
#: answered at once; what stays is bookkeeping (route and module caches).
FUZZ_BOUND_MIB = 64


def test_fuzzed_frames_run_nothing_and_leave_the_master_bounded(
        router, peers, marker, caplog):
    hostile, sibling = peers
    before = rss_mib()
    start = time.monotonic()
    assert call(hostile, hf.fuzz, 14, FUZZ_FRAMES, marker,
                sibling.context_id) == FUZZ_FRAMES
    # The master has read every frame once it answers the hostile child.
    assert call(hostile, os.getpid) > 0
    elapsed = time.monotonic() - start
    assert_healthy(sibling, marker)
    assert router.drop_counts.get(hostile.context_id, 0) > FUZZ_FRAMES // 10
    assert rss_mib() - before <= FUZZ_BOUND_MIB
    assert not tracebacks(caplog)
    # Per stream: drop_log_burst full lines and one summary per
    # drop_log_interval, in the master, and in the sibling and the hostile
    # child for what the master passed on to them (their records are
    # forwarded to the master's log).
    periods = 1 + elapsed / router.drop_log_interval
    bound = 3 * periods * (router.drop_log_burst + 1) + 10
    assert len(loud_records(caplog)) <= bound


BAD_FRAMINGS = {
    'bad-magic': lambda me: hf.frame(0, me, me, 1000, 0, b'x', magic=0xdead),
    'oversized': lambda me: hf.frame(0, me, me, 1000, 0, b'',
                                     length=0xffffffff),
    'truncated-header': lambda me: hf.frame(0, me, me, 1000, 0, b'')[:20],
}


@pytest.mark.parametrize('kind', sorted(BAD_FRAMINGS))
def test_bad_framing_ends_only_the_stream_of_that_child(
        router, peers, marker, caplog, kind):
    hostile, sibling = peers
    data = BAD_FRAMINGS[kind](hostile.context_id)
    hostile.call_no_reply(hf.write_raw, data)
    if kind == 'truncated-header':
        hostile.call_no_reply(os._exit, 0)
    assert waiting.wait_for(
        lambda: router.stream_by_id(hostile.context_id) is None, timeout=30)
    assert_healthy(sibling, marker)
    assert not tracebacks(caplog)
    assert len(loud_records(caplog)) <= 2


CONTROL_HANDLES = [h for h in hf.FUZZ_HANDLES
                   if h < mitogen.core.FIRST_USER_HANDLE]


def test_malformed_control_messages_to_the_master_are_refused_quietly(
        router, peers, marker, caplog):
    hostile, sibling = peers
    me = hostile.context_id
    bodies = call(hostile, hf.malformed_bodies) + \
        call(hostile, hf.dangerous_bodies, marker)
    frames = [hf.frame(0, me, me, handle, 1000, body)
              for handle in CONTROL_HANDLES for body in bodies]
    assert call(hostile, hf.send_frames, frames) == len(frames)
    assert call(hostile, os.getpid) > 0
    assert_healthy(sibling, marker)
    assert not tracebacks(caplog)


#: Handles a parent may send a child malformed bodies on without ending it
#: (SHUTDOWN has no body: any SHUTDOWN from the parent ends the child).
PARENT_HANDLES = [CALL_FUNCTION, LOAD_MODULE, FORWARD_MODULE, DEL_ROUTE,
                  ALLOCATE_ID, GET_MODULE, mitogen.core.CALL_SERVICE,
                  mitogen.core.GET_RESOURCE]


def test_malformed_control_messages_from_the_parent_are_refused_quietly(
        router, peers, marker, caplog):
    hostile, sibling = peers
    # The sibling gets the handlers of a context that started children.
    call(sibling, hf.become_parent)
    bodies = hf.malformed_bodies() + hf.dangerous_bodies(marker)
    for handle in PARENT_HANDLES:
        for body in bodies:
            router.route(mitogen.core.Message(
                data=body, dst_id=sibling.context_id, handle=handle))
    assert_healthy(sibling, marker)
    assert not tracebacks(caplog)


def test_child_importing_an_invalid_module_name_is_told_it_is_absent(
        router, caplog):
    # The master answers without a search; the child accepts the answer
    # (its name is no module name) instead of refusing it and waiting.
    ctx = router.local(python_path=sys.executable)
    with pytest.raises(mitogen.core.CallError, match='not-a-module'):
        call(ctx, importlib.import_module, 'not-a-module')
    assert not tracebacks(caplog)


# ---------------------------------------------------------------------------
# Teardown
# ---------------------------------------------------------------------------

def alive(pid):
    try:
        with open('/proc/%d/stat' % (pid,)) as f:
            return f.read().rpartition(')')[2].split()[0] != 'Z'
    except IOError:
        return False


def test_processes_below_a_killed_hop_exit_within_one_second(router):
    chain = []
    ctx = None
    for _ in range(8):
        ctx = router.local(python_path=sys.executable, via=ctx)
        chain.append(ctx)
    pids = [call(c, os.getpid) for c in chain]
    # The contexts below the victim are busy in user code.
    for c in chain[4:]:
        c.call_no_reply(time.sleep, 60)
    time.sleep(0.2)
    os.kill(pids[3], signal.SIGKILL)
    start = time.monotonic()
    waiting.wait_for(lambda: not any(alive(p) for p in pids[4:]), timeout=10)
    assert time.monotonic() - start <= 1.0
    assert not any(alive(p) for p in pids[4:])


def test_master_broker_accepts_install_watcher_false():
    broker = mitogen.master.Broker(install_watcher=False)
    with mitogen.master.Router(broker=broker) as router:
        ctx = router.local(python_path=sys.executable)
        assert call(ctx, os.getpid) > 0

