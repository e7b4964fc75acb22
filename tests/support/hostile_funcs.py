"""
Functions that tests/test_hostile.py runs in children: a producer for the
flow control test, and a peer that writes raw frames onto its stream to
the parent, as a hostile child could. They run in children of any Python
version, so this module stays Python 2.7 compatible.
"""
import errno
import os
import random
import select
import struct
import time

import mitogen.core


def rss_kib():
    """Resident set size of this process in KiB (Linux)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise RuntimeError('no VmRSS in /proc/self/status')


def produce(sender, total, chunk):
    """Send `total` bytes through `sender` in messages of `chunk` bytes as
    fast as it lets us, then close it; return the largest resident set size
    seen, in KiB."""
    data = b'x' * chunk
    peak = rss_kib()
    sent = 0
    while sent < total:
        sender.send(data)
        sent += chunk
        if not sent % (16 * chunk):
            peak = max(peak, rss_kib())
    sender.close()
    return max(peak, rss_kib())


HEADER = struct.Struct('>HHLLLLLLL')
MAGIC = 0x4d49

#: Handles a fuzzed frame is sent to: every handle the protocol reserves
#: (but DETACHING, an honest request that ends the stream on purpose), a
#: user handle and an unused one.
FUZZ_HANDLES = (
    mitogen.core.GET_MODULE, mitogen.core.CALL_FUNCTION,
    mitogen.core.FORWARD_LOG, mitogen.core.ADD_ROUTE,
    mitogen.core.DEL_ROUTE, mitogen.core.ALLOCATE_ID,
    mitogen.core.SHUTDOWN, mitogen.core.LOAD_MODULE,
    mitogen.core.FORWARD_MODULE, mitogen.core.CALL_SERVICE,
    mitogen.core.STUB_CALL_SERVICE, mitogen.core.GET_RESOURCE,
    mitogen.core.IS_DEAD, 1000, 0xfffffff0,
)

#: Globals whose call would run code or touch files if a peer resolved
#: them: (module, name, arguments given the marker path).
DANGEROUS_GLOBALS = (
    ('os', 'system', lambda m: ('touch ' + m,)),
    ('posix', 'system', lambda m: ('touch ' + m,)),
    ('subprocess', 'check_call', lambda m: (['touch', m],)),
    ('subprocess', 'Popen', lambda m: (['touch', m],)),
    ('builtins', 'eval', lambda m: ('open(%r, "w")' % (m,),)),
    ('__builtin__', 'eval', lambda m: ('open(%r, "w")' % (m,),)),
    ('builtins', 'exec', lambda m: ('open(%r, "w")' % (m,),)),
    ('builtins', 'open', lambda m: (m, 'w')),
    ('__builtin__', 'open', lambda m: (m, 'w')),
    ('io', 'open', lambda m: (m, 'w')),
    ('codecs', 'open', lambda m: (m, 'w')),
    ('os', 'mknod', lambda m: (m,)),
    ('shutil', 'copy', lambda m: ('/etc/hostname', m)),
    ('mitogen.core', 'import_module', lambda m: ('os',)),
    ('mitogen.core', 'enable_profiling', lambda m: ()),
)


def global_call(module, name, args):
    """A protocol 2 pickle calling ``module.name(*args)`` when loaded."""
    import pickle
    tail = pickle.dumps(tuple(args), 2)[2:-1]
    head = ('c%s\n%s\n' % (module, name)).encode('ascii')
    return b'\x80\x02' + head + tail + b'R.'


def dangerous_bodies(marker):
    """Pickles of every :data:`DANGEROUS_GLOBALS` call, aimed at `marker`,
    alone and inside the tuples control handlers expect."""
    bodies = []
    for module, name, args in DANGEROUS_GLOBALS:
        call = global_call(module, name, args(marker))
        bodies.append(call)
        # The same call as the first item of a 2- and a 3-tuple.
        bodies.append(call[:-1] + b'K\x01\x86.')
        bodies.append(call[:-1] + b'K\x01K\x02\x87.')
    return bodies


def malformed_bodies():
    """Bodies no control handler should accept: garbage, truncated pickles,
    wrong shapes and values out of range."""
    import pickle
    bodies = [b'', b'\x00', b'\xff' * 64, b'\x80\x02', b'\x80\x02K',
              pickle.dumps((1, 2), 2)[:-3]]
    for obj in (None, 5, -1, 2 ** 40, u'x' * 5000, (), (1,), (1, 2, 3),
                (2 ** 40, u'name'), (-1, None), (7, u'n' * 100000),
                [1, 2], {'a': 1}, ([], {}), (u'read', 5, None),
                (None, None, None, None, None), ((), (), (), (), ()),
                (u'../../etc', None, None, b'x', [])):
        bodies.append(pickle.dumps(obj, 2))
    return bodies


def frame(dst_id, src_id, auth_id, handle, reply_to, body, flags=0,
          magic=MAGIC, length=None):
    """One frame: the 32-byte header then `body`."""
    if length is None:
        length = len(body)
    return HEADER.pack(magic, flags, dst_id, src_id, auth_id, handle,
                       reply_to, 0, length) + body


def _write_raw(router, data):
    # Straight onto the descriptor of the stream to the parent, between
    # whole messages of our own router (whose queue must be empty).
    protocol = router.parent_stream.protocol
    fd = router.parent_stream.transmit_side.fd
    while True:
        protocol._lock.acquire()
        if not protocol._pending:
            break
        protocol._lock.release()
        time.sleep(0.01)
    try:
        off = 0
        while off < len(data):
            try:
                off += os.write(fd, data[off:off + 65536])
            except OSError as e:
                if e.args[0] != errno.EAGAIN:
                    raise
                select.select([], [fd], [])
    finally:
        protocol._lock.release()


@mitogen.core.takes_router
def write_raw(data, router=None):
    """Write the bytes `data` to the parent as they are."""
    _write_raw(router, data)


@mitogen.core.takes_router
def send_frames(frames, router=None):
    """Write each frame of `frames` (bytes) to the parent; return how many."""
    _write_raw(router, b''.join(frames))
    return len(frames)


@mitogen.core.takes_router
def fuzz(seed, count, marker, sibling_id, router=None):
    """Write `count` frames drawn from `seed` to the parent: headers with
    random and forged IDs, every reserved handle, random flags, and bodies
    that are garbage, malformed control bodies or pickles of dangerous
    globals aimed at `marker`. Each frame is whole, so the stream stays in
    frame; returns the number of frames written."""
    rng = random.Random(seed)
    me = mitogen.context_id
    ids = [0, me, sibling_id, mitogen.parent_id, 2 ** 32 - 1, 12345]
    bodies = dangerous_bodies(marker) + malformed_bodies()
    batch = []
    size = 0
    for _ in range(count):
        dst_id = rng.choice(ids) if rng.random() < 0.9 \
            else rng.getrandbits(32)
        # Mostly honest sources (their bodies then reach the handlers);
        # the rest forged, which source verification must drop.
        if rng.random() < 0.7:
            src_id = auth_id = me
        else:
            src_id, auth_id = rng.choice(ids), rng.choice(ids)
        roll = rng.random()
        if roll < 0.6:
            body = rng.choice(bodies)
        elif roll < 0.9:
            body = bytes(bytearray(rng.getrandbits(8)
                                   for _ in range(rng.randint(0, 64))))
        else:
            body = b''
        flags = 0 if rng.random() < 0.8 else rng.choice(
            [1, 2, 0x8000, rng.getrandbits(16)])
        reply_to = 0 if rng.random() < 0.5 else rng.choice(
            [1000, mitogen.core.IS_DEAD, rng.getrandbits(32)])
        data = frame(dst_id, src_id, auth_id, rng.choice(FUZZ_HANDLES),
                     reply_to, body, flags)
        batch.append(data)
        size += len(data)
        if size > 262144:
            _write_raw(router, b''.join(batch))
            batch = []
            size = 0
    _write_raw(router, b''.join(batch))
    return count


@mitogen.core.takes_router
def stall_at_limit(body_size, router=None):
    """Write a header announcing a body of the stream's max_message_size,
    then `body_size` bytes of it, and stop: the stream to the parent stays
    stuck inside that message."""
    me = mitogen.context_id
    limit = router.max_message_size
    _write_raw(router, frame(0, me, me, 1000, 0, b'\0' * body_size,
                             length=limit))


@mitogen.core.takes_econtext
def become_parent(econtext=None):
    """Give this context the handlers of one that started children."""
    import mitogen.parent
    mitogen.parent.upgrade_router(econtext)
