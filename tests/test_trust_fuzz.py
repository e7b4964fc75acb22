"""
Fuzzing the trust rules on routers joined in memory (:mod:`memnet`).

A compromised context C (in the tree of :func:`memnet.tree`) writes
well-framed messages with random headers straight onto its stream to its
parent P: destination, source and authority drawn from every context of
the tree, C's own and random IDs; privileged, routing, open and random
handles; reply handles including the dead marker; valid and invalid
bodies. The properties, checked after every batch:

- no message is ever delivered outside C's own subtree (C and its child D)
  unless its ``src_id`` and ``auth_id`` both belong to that subtree, and
  no message reaches a privileged handle (CALL_FUNCTION, SHUTDOWN,
  LOAD_MODULE) outside it at all;
- nothing crashes: no handler or callback logs a traceback, no exception
  leaves the routers, and C's stream stays connected (every frame is in
  frame, so only the routers' refusals apply);
- memory stays bounded: the routing and handler tables of every honest
  router keep the size they had before the run (but for the one context
  a fuzzed body names, which a router that unpickles it registers), the
  drop counters grow by at most one key per stream, and the destinations
  P remembers for C's stream stay under the router's limit however many
  C names.

CI runs :data:`CI_FRAMES` frames with a fixed seed; set
``MITOGEN_FUZZ_FRAMES`` (and optionally ``MITOGEN_FUZZ_SEED``) to run as
many as you like, for example::

    MITOGEN_FUZZ_FRAMES=1000000 python -m pytest tests/test_trust_fuzz.py -s
"""
import os
import random
import struct
import time

import mitogen.core
from mitogen.core import (ADD_ROUTE, ALLOCATE_ID, CALL_FUNCTION, CALL_SERVICE,
                          DEL_ROUTE, DETACHING, FLAG_OOB, FORWARD_LOG,
                          GET_MODULE, IS_DEAD, LOAD_MODULE, SHUTDOWN)

import memnet
from memnet import OPEN_HANDLE, PRIVILEGED_HANDLES

#: Frames pushed by the run CI does.
CI_FRAMES = 20000

#: Frames written to C's stream between two checks.
BATCH = 2000

#: The context ID a fuzzed body names.
NAMED = 77777

_header = struct.Struct('>HHLLLLLLL')
_MAGIC = 0x4d49


def bodies(nodes):
    """Bodies a fuzzed frame may carry: valid pickles of what the handlers
    expect, of other values, a Context, and garbage."""
    out = [b'', b'\x80\x02', b'garbage', b'\x00' * 64]
    for obj in [u'x', 0, 12345, None, (1, u'name'), (2 ** 32, None),
                (nodes['K'].context_id, u'hijack'), [1, 2, 3],
                {u'k': b'v'}, mitogen.core.Kwargs({'a': 1}), b'y' * 300,
                mitogen.core.Context(None, NAMED)]:
        out.append(mitogen.core.Message.pickled(obj).data)
    return out


class Fuzzer(object):
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.net, self.nodes = memnet.tree()
        ids = [n.context_id for n in self.nodes.values()]
        self.ids = ids + [mitogen.core.MAX_ID, 999999]
        self.handles = list(PRIVILEGED_HANDLES) + [
            ADD_ROUTE, DEL_ROUTE, ALLOCATE_ID, FORWARD_LOG, GET_MODULE,
            CALL_SERVICE, DETACHING, OPEN_HANDLE, IS_DEAD, 0, 1000, 5555,
            mitogen.core.MAX_ID]
        self.reply_tos = [0, 0, IS_DEAD, 1000, 5555]
        self.bodies = bodies(self.nodes)
        self.subtree = set([self.nodes['C'].context_id,
                            self.nodes['D'].context_id])
        self.honest = [n for n in self.nodes.values()
                       if n.context_id not in self.subtree]
        #: Messages from C delivered to the honest contexts' open handles.
        self.delivered = 0

    def pick_id(self):
        rng = self.rng
        if rng.random() < 0.3:
            return rng.randrange(mitogen.core.MAX_ID + 1)
        return rng.choice(self.ids)

    def frame(self):
        rng = self.rng
        dst, src, auth = self.pick_id(), self.pick_id(), self.pick_id()
        if rng.random() < 0.3:
            auth = src
        if rng.random() < 0.2:
            src = auth = self.nodes['C'].context_id
        handle = rng.choice(self.handles) if rng.random() < 0.9 else \
            rng.randrange(mitogen.core.MAX_ID + 1)
        reply_to = rng.choice(self.reply_tos)
        flags = rng.choice((0, 0, 0, FLAG_OOB, 0x80))
        body = rng.choice(self.bodies)
        return _header.pack(_MAGIC, flags, dst, src, auth, handle,
                            reply_to, 0, len(body)) + body

    def tables(self):
        """Sizes of the tables a hostile peer could make a router grow."""
        out = {}
        for name, node in self.nodes.items():
            if node.context_id in self.subtree:
                continue
            r = node.router
            out[name] = (len(r._stream_by_id),
                         len(r._context_by_id) - (NAMED in r._context_by_id),
                         len(r._handle_map))
            assert len(r._drop_windows) <= 1 and len(r.drop_counts) <= 1
        egress = self.nodes['C'].down.protocol.egress_ids
        assert len(egress) <= self.nodes['P'].router._egress_limit
        return out

    def check(self):
        for node in self.honest:
            for handle, msg in node.delivered:
                assert handle not in PRIVILEGED_HANDLES, (node, msg)
                assert msg.src_id in self.subtree and \
                    msg.auth_id in self.subtree, (node, msg)
            self.delivered += len(node.delivered)
            del node.delivered[:]
        for node in self.nodes.values():
            if node.context_id in self.subtree:
                del node.delivered[:]
        assert not self.nodes['C'].down.disconnected

    def run(self, frames):
        c = self.nodes['C']
        self.net.pump()
        before = self.tables()
        with memnet.DropLog() as log:
            sent = 0
            while sent < frames:
                n = min(BATCH, frames - sent)
                c.write_up(b''.join([self.frame() for _ in range(n)]))
                self.net.pump()
                self.check()
                assert log.crashes() == [], log.crashes()[0].getMessage()
                del log.records[:]
                sent += n
        return before, self.tables()


def frames_wanted():
    return int(os.environ.get('MITOGEN_FUZZ_FRAMES', CI_FRAMES))


def test_fuzzed_frames_from_a_compromised_context_gain_it_nothing():
    seed = int(os.environ.get('MITOGEN_FUZZ_SEED', 12))
    frames = frames_wanted()
    fuzzer = Fuzzer(seed)
    t0 = time.time()
    before, after = fuzzer.run(frames)
    elapsed = time.time() - t0
    print('\nfuzz: %d frames in %.1f s, %.0f frames/s (seed %d)'
          % (frames, elapsed, frames / elapsed, seed))
    assert after == before
    # The fuzz reached the handlers, so the refusals were not all framing.
    assert fuzzer.delivered > frames // 1000
    p = fuzzer.nodes['P'].router
    assert p.drop_counts.get(fuzzer.nodes['C'].context_id, 0) > frames // 4
