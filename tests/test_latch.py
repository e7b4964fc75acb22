"""
Specification of :class:`mitogen.core.Latch`: a thread-safe queue any number
of threads may wait on, with timeouts, non-blocking gets and close.
"""
import os
import subprocess
import threading
import time

import pytest

import mitogen.core
from mitogen.core import Latch, LatchError

import interpreters
from waiting import start_thread, wait_until

CORE_PATH = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'packages', 'mitogen-core')


def waiting_count(latch):
    # Waiters registered on the latch: lets a test wait until a thread is
    # really blocked in get() instead of sleeping and hoping.
    with latch._lock:
        return len(latch._waiters)


def test_items_come_out_in_the_order_they_were_put():
    latch = Latch()
    for i in range(100):
        latch.put(i)
    assert [latch.get() for _ in range(100)] == list(range(100))


def test_order_holds_while_a_growing_queue_changes_structure():
    # The queue starts small and is rebuilt once it grows: puts and gets
    # interleaved across that point must keep their order.
    latch = Latch()
    got = []
    for i in range(20):
        latch.put(i)
    got.extend(latch.get() for _ in range(5))
    for i in range(20, 60):
        latch.put(i)
    while not latch.empty():
        got.append(latch.get())
    assert got == list(range(60))


def test_put_without_argument_queues_none():
    latch = Latch()
    latch.put()
    assert latch.get(block=False) is None


def test_size_and_empty_follow_puts_and_gets():
    latch = Latch()
    assert latch.empty() and latch.size() == 0
    latch.put(1)
    latch.put(2)
    assert not latch.empty() and latch.size() == 2
    latch.get()
    assert latch.size() == 1


def test_get_returns_an_item_put_by_another_thread_while_waiting():
    latch = Latch()
    got = []
    t = start_thread(lambda: got.append(latch.get(timeout=10)))
    wait_until(lambda: waiting_count(latch) == 1)
    latch.put('item')
    t.join(10)
    assert got == ['item']


def test_get_with_timeout_raises_timeout_error_promptly():
    latch = Latch()
    start = time.monotonic()
    with pytest.raises(mitogen.core.TimeoutError):
        latch.get(timeout=0.2)
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 2.0


def test_get_with_zero_timeout_raises_at_once():
    latch = Latch()
    start = time.monotonic()
    with pytest.raises(mitogen.core.TimeoutError):
        latch.get(timeout=0)
    assert time.monotonic() - start < 0.5


def test_timeout_error_is_mitogens_not_the_builtin():
    with pytest.raises(mitogen.core.TimeoutError):
        Latch().get(timeout=0.01)
    assert mitogen.core.TimeoutError is not TimeoutError


def test_item_queued_before_the_timeout_is_returned_not_a_timeout():
    latch = Latch()
    latch.put('ready')
    assert latch.get(timeout=0) == 'ready'


def test_timed_out_waiter_does_not_swallow_a_later_item():
    latch = Latch()
    with pytest.raises(mitogen.core.TimeoutError):
        latch.get(timeout=0.05)
    latch.put('later')
    assert latch.get(block=False) == 'later'


def test_non_blocking_get_on_empty_latch_raises_timeout_error_at_once():
    latch = Latch()
    start = time.monotonic()
    with pytest.raises(mitogen.core.TimeoutError):
        latch.get(block=False)
    assert time.monotonic() - start < 0.5


def test_non_blocking_get_returns_a_queued_item():
    latch = Latch()
    latch.put(5)
    assert latch.get(block=False) == 5


def test_close_wakes_every_waiter_with_latch_error():
    latch = Latch()
    errors = []

    def waiter():
        try:
            latch.get(timeout=30)
        except LatchError:
            errors.append('LatchError')
        except Exception as e:
            errors.append(repr(e))

    threads = [start_thread(waiter) for _ in range(5)]
    wait_until(lambda: waiting_count(latch) == 5)
    start = time.monotonic()
    latch.close()
    for t in threads:
        t.join(10)
    assert errors == ['LatchError'] * 5
    assert time.monotonic() - start < 5


def test_get_on_closed_latch_raises_latch_error():
    latch = Latch()
    latch.put(1)
    latch.close()
    with pytest.raises(LatchError):
        latch.get(block=False)


def test_put_on_closed_latch_raises_latch_error():
    latch = Latch()
    latch.close()
    with pytest.raises(LatchError):
        latch.put(1)


def test_size_of_closed_latch_raises_latch_error():
    latch = Latch()
    latch.close()
    with pytest.raises(LatchError):
        latch.size()


def test_latch_error_is_a_mitogen_error():
    assert issubclass(LatchError, mitogen.core.Error)


def test_one_put_wakes_exactly_one_of_several_waiters():
    latch = Latch()
    got = []
    lock = threading.Lock()

    def waiter():
        try:
            item = latch.get(timeout=30)
        except LatchError:
            return
        with lock:
            got.append(item)

    threads = [start_thread(waiter) for _ in range(3)]
    wait_until(lambda: waiting_count(latch) == 3)
    latch.put('only')
    wait_until(lambda: got == ['only'])
    assert waiting_count(latch) == 2
    latch.close()
    for t in threads:
        t.join(10)
    assert got == ['only']


def test_many_producers_and_consumers_lose_and_duplicate_nothing():
    latch = Latch()
    producers, consumers, per_producer = 8, 8, 2000
    received = [[] for _ in range(consumers)]
    stop = object()

    def produce(n):
        for i in range(per_producer):
            latch.put((n, i))

    def consume(out):
        while True:
            item = latch.get(timeout=30)
            if item is stop:
                return
            out.append(item)

    consumer_threads = [start_thread(consume, out) for out in received]
    producer_threads = [start_thread(produce, n) for n in range(producers)]
    for t in producer_threads:
        t.join(30)
    for _ in consumer_threads:
        latch.put(stop)
    for t in consumer_threads:
        t.join(30)
        assert not t.is_alive()
    everything = sorted(item for out in received for item in out)
    assert everything == sorted((n, i) for n in range(producers)
                                for i in range(per_producer))
    # Each consumer sees each producer's items in the order they were put.
    for out in received:
        for n in range(producers):
            mine = [i for (p, i) in out if p == n]
            assert mine == sorted(mine)


def test_waiters_with_timeouts_under_contention_lose_nothing():
    latch = Latch()
    total = 3000
    received = []
    lock = threading.Lock()
    done = threading.Event()

    def consume():
        while not done.is_set():
            try:
                item = latch.get(timeout=0.001)
            except mitogen.core.TimeoutError:
                continue
            with lock:
                received.append(item)
                if len(received) == total:
                    done.set()

    threads = [start_thread(consume) for _ in range(6)]
    for i in range(total):
        latch.put(i)
        if i % 50 == 0:
            time.sleep(0.001)
    assert done.wait(30)
    for t in threads:
        t.join(10)
    assert sorted(received) == list(range(total))


# Python 2 has no timed Lock.acquire(), so the latch waits differently
# there: run the same properties under the oldest interpreters.
OLD_PYTHON_SCRIPT = r'''
import threading, time
import mitogen.core
from mitogen.core import Latch, LatchError

latch = Latch()
start = time.time()
try:
    latch.get(timeout=0.2)
except mitogen.core.TimeoutError:
    pass
elapsed = time.time() - start
assert 0.2 <= elapsed < 2.0, elapsed

received = []
lock = threading.Lock()

def consume():
    while True:
        try:
            item = latch.get(timeout=30)
        except LatchError:
            return
        with lock:
            received.append(item)

threads = [threading.Thread(target=consume) for _ in range(4)]
for t in threads:
    t.start()
for i in range(2000):
    latch.put(i)
deadline = time.time() + 30
while len(received) < 2000 and time.time() < deadline:
    time.sleep(0.01)
latch.close()
for t in threads:
    t.join(10)
assert sorted(received) == list(range(2000)), len(received)
print('ok')
'''


@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.6']),
                         indirect=True)
def test_latch_times_out_and_loses_nothing_on_older_python(interpreter):
    env = dict(os.environ, PYTHONPATH=CORE_PATH)
    proc = subprocess.run([interpreter.path, '-c', OLD_PYTHON_SCRIPT],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode('utf-8', 'replace')
    assert proc.stdout.strip() == b'ok'
