"""
Specification of the wire codec of :mod:`mitogen.core`: :meth:`Message.encode`
and :class:`FrameDecoder`, tested without any I/O (in the manner of h11 and
asyncssh): literal header bytes in tables, the decoder fed in every possible
way, the limits checked before allocation, and a bounded fuzz test.

A frame is a 32-byte header ``>HHLLLLLLL`` (magic ``MI``, flags, dst_id,
src_id, auth_id, handle, reply_to, reserved, length) followed by the body.
"""
import random
import struct
import tracemalloc

import pytest

import mitogen.core
from mitogen.core import FrameDecoder, Message, ProtocolError


def frame(msg):
    """The bytes `msg` occupies on the wire."""
    return b''.join(msg.encode())


def decode_all(decoder):
    """Every message the decoder can return now."""
    out = []
    while True:
        msg = decoder.next_message()
        if msg is None:
            return out
        out.append(msg)


FIELDS = ('flags', 'dst_id', 'src_id', 'auth_id', 'handle', 'reply_to', 'data')


def fields(msg):
    return dict((name, getattr(msg, name)) for name in FIELDS)


# (Message fields, exact header bytes). The body follows the header as is.
ENCODE_ROWS = [
    pytest.param(
        dict(dst_id=1, src_id=0, auth_id=0, handle=101, reply_to=1000),
        b'MI' b'\x00\x00'
        b'\x00\x00\x00\x01' b'\x00\x00\x00\x00' b'\x00\x00\x00\x00'
        b'\x00\x00\x00\x65' b'\x00\x00\x03\xe8'
        b'\x00\x00\x00\x00' b'\x00\x00\x00\x00',
        id='call-function-no-body'),
    pytest.param(
        dict(dst_id=0, src_id=7, auth_id=7, handle=100, reply_to=0,
             data=b'os.path'),
        b'MI' b'\x00\x00'
        b'\x00\x00\x00\x00' b'\x00\x00\x00\x07' b'\x00\x00\x00\x07'
        b'\x00\x00\x00\x64' b'\x00\x00\x00\x00'
        b'\x00\x00\x00\x00' b'\x00\x00\x00\x07',
        id='get-module-with-body'),
    pytest.param(
        dict(flags=mitogen.core.FLAG_OOB, dst_id=0x01020304,
             src_id=0x05060708, auth_id=0x090a0b0c, handle=0x0d0e0f10,
             reply_to=0x11121314, data=b'\x00' * 300),
        b'MI' b'\x00\x01'
        b'\x01\x02\x03\x04' b'\x05\x06\x07\x08' b'\x09\x0a\x0b\x0c'
        b'\x0d\x0e\x0f\x10' b'\x11\x12\x13\x14'
        b'\x00\x00\x00\x00' b'\x00\x00\x01\x2c',
        id='big-endian-field-order'),
    pytest.param(
        dict(dst_id=0xffffffff, src_id=0xffffffff, auth_id=0xffffffff,
             handle=0xffffffff, reply_to=0xffffffff, flags=0xffff),
        b'MI' b'\xff\xff'
        b'\xff\xff\xff\xff' b'\xff\xff\xff\xff' b'\xff\xff\xff\xff'
        b'\xff\xff\xff\xff' b'\xff\xff\xff\xff'
        b'\x00\x00\x00\x00' b'\x00\x00\x00\x00',
        id='largest-field-values'),
    pytest.param(
        dict(dst_id=3, src_id=0, auth_id=0, handle=1001,
             reply_to=mitogen.core.IS_DEAD, data=b'gone'),
        b'MI' b'\x00\x00'
        b'\x00\x00\x00\x03' b'\x00\x00\x00\x00' b'\x00\x00\x00\x00'
        b'\x00\x00\x03\xe9' b'\x00\x00\x03\xe7'
        b'\x00\x00\x00\x00' b'\x00\x00\x00\x04',
        id='dead-message'),
    pytest.param(
        dict(dst_id=2, src_id=1, auth_id=0, handle=106, reply_to=None),
        b'MI' b'\x00\x00'
        b'\x00\x00\x00\x02' b'\x00\x00\x00\x01' b'\x00\x00\x00\x00'
        b'\x00\x00\x00\x6a' b'\x00\x00\x00\x00'
        b'\x00\x00\x00\x00' b'\x00\x00\x00\x00',
        id='reply-to-none-is-zero'),
    pytest.param(
        dict(dst_id=1, src_id=0, auth_id=0, handle=1000, reply_to=0,
             data=b'\xab' * 70000),
        b'MI' b'\x00\x00'
        b'\x00\x00\x00\x01' b'\x00\x00\x00\x00' b'\x00\x00\x00\x00'
        b'\x00\x00\x03\xe8' b'\x00\x00\x00\x00'
        b'\x00\x00\x00\x00' b'\x00\x01\x11\x70',
        id='body-over-64k'),
]


def make(kwargs):
    return Message(**kwargs)


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs, header', ENCODE_ROWS)
def test_encode_writes_exact_header_then_body(kwargs, header):
    assert len(header) == mitogen.core.HEADER_LEN == 32
    assert frame(make(kwargs)) == header + kwargs.get('data', b'')


def test_encode_parts_are_bytes():
    parts = Message(dst_id=1, handle=1000, data=b'x' * 100000).encode()
    assert all(isinstance(part, bytes) for part in parts)


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------

def expected_fields(kwargs):
    want = dict(flags=0, reply_to=0, data=b'')
    want.update(kwargs)
    if want['reply_to'] is None:
        want['reply_to'] = 0
    return want


@pytest.mark.parametrize('kwargs, header', ENCODE_ROWS)
def test_decode_of_whole_frame_gives_the_encoded_fields(kwargs, header):
    decoder = FrameDecoder()
    decoder.feed(header + kwargs.get('data', b''))
    msg = decoder.next_message()
    assert isinstance(msg, Message)
    assert fields(msg) == expected_fields(kwargs)
    assert isinstance(msg.data, bytes)
    assert decoder.next_message() is None


@pytest.mark.parametrize('kwargs, header', ENCODE_ROWS[:6])
def test_decode_byte_by_byte_returns_message_only_after_last_byte(
        kwargs, header):
    wire = header + kwargs.get('data', b'')
    decoder = FrameDecoder()
    for i in range(len(wire) - 1):
        decoder.feed(wire[i:i + 1])
        assert decoder.next_message() is None, 'message after %d bytes' % i
    decoder.feed(wire[-1:])
    assert fields(decoder.next_message()) == expected_fields(kwargs)
    assert decoder.next_message() is None


def test_decode_without_polling_between_single_bytes():
    # feed() alone must accumulate; next_message() is only called at the end.
    msg = Message(dst_id=4, src_id=0, auth_id=0, handle=1002, reply_to=5,
                  data=b'hello world')
    decoder = FrameDecoder()
    for b in frame(msg):
        decoder.feed(bytes([b]))
    assert fields(decoder.next_message()) == fields(msg)


def random_splits(rng, data, max_chunk):
    pos = 0
    while pos < len(data):
        n = rng.randint(1, max_chunk)
        yield data[pos:pos + n]
        pos += n


SPLIT_MESSAGES = [
    Message(dst_id=1, src_id=0, auth_id=0, handle=101, reply_to=1000,
            data=b''),
    Message(dst_id=2, src_id=0, auth_id=0, handle=1001, reply_to=0,
            data=b'a' * 31),
    Message(dst_id=3, src_id=9, auth_id=9, handle=1002, reply_to=7,
            data=b'b' * 32),
    Message(dst_id=4, src_id=0, auth_id=0, handle=1003, reply_to=0,
            flags=1, data=bytes(range(256)) * 40),
    Message(dst_id=5, src_id=0, auth_id=0, handle=1004, reply_to=0,
            data=b'c' * 70000),
]


@pytest.mark.parametrize('seed', range(20))
def test_decode_in_random_splits_gives_every_message_in_order(seed):
    rng = random.Random(seed)
    wire = b''.join(frame(m) for m in SPLIT_MESSAGES)
    decoder = FrameDecoder()
    got = []
    for chunk in random_splits(rng, wire, rng.choice([3, 33, 500, 70000])):
        decoder.feed(chunk)
        got.extend(decode_all(decoder))
    assert [fields(m) for m in got] == [fields(m) for m in SPLIT_MESSAGES]
    assert decoder.pending == 0


def test_several_messages_in_one_feed_all_decode():
    decoder = FrameDecoder()
    decoder.feed(b''.join(frame(m) for m in SPLIT_MESSAGES))
    got = decode_all(decoder)
    assert [fields(m) for m in got] == [fields(m) for m in SPLIT_MESSAGES]


def test_message_followed_by_partial_message_returns_only_the_first():
    first, second = SPLIT_MESSAGES[1], SPLIT_MESSAGES[2]
    decoder = FrameDecoder()
    decoder.feed(frame(first) + frame(second)[:40])
    assert fields(decoder.next_message()) == fields(first)
    assert decoder.next_message() is None
    decoder.feed(frame(second)[40:])
    assert fields(decoder.next_message()) == fields(second)


def test_empty_feed_changes_nothing():
    decoder = FrameDecoder()
    decoder.feed(b'')
    assert decoder.next_message() is None
    assert decoder.pending == 0


# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------

def header(length, magic=mitogen.core.HEADER_MAGIC):
    return struct.pack('>HHLLLLLLL', magic, 0, 1, 0, 0, 1000, 0, 0, length)


def test_body_exactly_max_message_size_is_accepted():
    decoder = FrameDecoder(max_message_size=1000)
    decoder.feed(header(1000) + b'z' * 1000)
    assert decoder.next_message().data == b'z' * 1000


def test_body_one_byte_over_max_message_size_raises_protocol_error():
    decoder = FrameDecoder(max_message_size=1000)
    decoder.feed(header(1001) + b'z' * 1001)
    with pytest.raises(ProtocolError, match='1001 bytes exceeds '
                       'max_message_size of 1000'):
        decoder.next_message()


def test_oversized_header_raises_before_the_body_arrives():
    decoder = FrameDecoder(max_message_size=1000)
    decoder.feed(header(1001))
    with pytest.raises(ProtocolError):
        decoder.next_message()


def test_header_announcing_largest_length_is_refused_without_allocating():
    # The length field is 32 bits, so 4 GiB - 1 is the largest body a header
    # can announce (a 1 TiB length cannot even be expressed). Only the 32
    # header bytes are fed; refusing must not reserve memory for the body.
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        decoder.feed(header(0xffffffff))
        with pytest.raises(ProtocolError, match='exceeds max_message_size'):
            decoder.next_message()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_default_max_message_size_is_128_mib():
    assert FrameDecoder().max_message_size == 128 * 1024 * 1024
    decoder = FrameDecoder()
    decoder.feed(header(128 * 1024 * 1024 + 1))
    with pytest.raises(ProtocolError):
        decoder.next_message()


@pytest.mark.parametrize('magic', [0x0000, 0x494d, 0x4d48, 0xffff])
def test_bad_magic_raises_protocol_error(magic):
    decoder = FrameDecoder()
    decoder.feed(header(0, magic=magic))
    with pytest.raises(ProtocolError, match='bad magic 0x%04x' % magic):
        decoder.next_message()


def test_bad_magic_after_good_message_raises_after_returning_it():
    good = SPLIT_MESSAGES[1]
    decoder = FrameDecoder()
    decoder.feed(frame(good) + header(0, magic=0x1234))
    assert fields(decoder.next_message()) == fields(good)
    with pytest.raises(ProtocolError):
        decoder.next_message()


def test_protocol_error_is_a_stream_error():
    assert issubclass(ProtocolError, mitogen.core.StreamError)


# ---------------------------------------------------------------------------
# pending: bytes received but not yet returned as a message
# ---------------------------------------------------------------------------

def test_pending_counts_a_partial_header():
    decoder = FrameDecoder()
    decoder.feed(frame(SPLIT_MESSAGES[2])[:20])
    assert decoder.next_message() is None
    assert decoder.pending == 20


def test_pending_counts_header_and_partial_body_once_header_is_decoded():
    msg = SPLIT_MESSAGES[3]
    wire = frame(msg)
    decoder = FrameDecoder()
    decoder.feed(wire[:100])
    assert decoder.next_message() is None
    assert decoder.pending == 100
    decoder.feed(wire[100:200])
    assert decoder.pending == 200
    assert decoder.next_message() is None
    assert decoder.pending == 200


def test_pending_drops_to_the_remainder_after_a_message_is_returned():
    first, second = SPLIT_MESSAGES[1], SPLIT_MESSAGES[2]
    decoder = FrameDecoder()
    decoder.feed(frame(first) + frame(second)[:10])
    assert decoder.pending == len(frame(first)) + 10
    decoder.next_message()
    assert decoder.pending == 10


def test_pending_is_zero_after_every_message_is_returned():
    decoder = FrameDecoder()
    decoder.feed(b''.join(frame(m) for m in SPLIT_MESSAGES))
    decode_all(decoder)
    assert decoder.pending == 0


# ---------------------------------------------------------------------------
# Fuzzing
# ---------------------------------------------------------------------------

FUZZ_MAX = 4096


def random_frame(rng):
    msg = Message(
        dst_id=rng.getrandbits(32), src_id=rng.getrandbits(32),
        auth_id=rng.getrandbits(32), handle=rng.getrandbits(32),
        reply_to=rng.getrandbits(32), flags=rng.getrandbits(16),
        data=bytes(rng.getrandbits(8)
                   for _ in range(rng.choice([0, 1, 31, 32, 200, 3000]))),
    )
    return frame(msg)


def mutate(rng, data):
    data = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0 and data:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
    elif kind == 1 and data:
        del data[rng.randrange(len(data)):]
    elif kind == 2:
        pos = rng.randrange(len(data) + 1)
        data[pos:pos] = bytes(rng.getrandbits(8)
                              for _ in range(rng.randint(1, 40)))
    elif kind == 3 and len(data) >= 32:
        # Rewrite the length field with a random 32-bit value.
        data[28:32] = struct.pack('>L', rng.getrandbits(32))
    else:
        data = bytearray(rng.getrandbits(8)
                         for _ in range(rng.randint(0, 100)))
    return bytes(data)


def run_fuzz_case(rng, wire):
    """Feed `wire` in random splits; return the messages and whether a
    ProtocolError ended the stream. Anything else propagates."""
    decoder = FrameDecoder(max_message_size=FUZZ_MAX)
    got = []
    for chunk in random_splits(rng, wire, rng.choice([1, 7, 64, 5000])):
        decoder.feed(chunk)
        while True:
            # Each message consumes at least a 32-byte header, which bounds
            # this loop: a decoder returning more would be inventing data.
            assert len(got) <= len(wire) // 32, 'more messages than fit'
            try:
                msg = decoder.next_message()
            except ProtocolError:
                return got, True
            if msg is None:
                break
            assert isinstance(msg, Message)
            assert isinstance(msg.data, bytes)
            assert len(msg.data) <= FUZZ_MAX
            got.append(msg)
    return got, False


@pytest.mark.parametrize('seed', [1, 2, 3])
def test_fuzzed_frames_give_only_messages_or_protocol_error(seed):
    rng = random.Random(seed)
    outcomes = {'messages': 0, 'protocol_error': 0}
    for _ in range(1000):
        wire = b''.join(random_frame(rng)
                        for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.8:
            wire = mutate(rng, wire)
        got, failed = run_fuzz_case(rng, wire)
        outcomes['messages'] += len(got)
        outcomes['protocol_error'] += failed
    # The corpus must exercise both outcomes, or it tests nothing.
    assert outcomes['messages'] > 100
    assert outcomes['protocol_error'] > 100


def test_unmutated_random_frames_round_trip_through_fuzz_harness():
    rng = random.Random(99)
    for _ in range(200):
        count = rng.randint(1, 3)
        frames = [random_frame(rng) for _ in range(count)]
        got, failed = run_fuzz_case(rng, b''.join(frames))
        assert not failed
        assert [frame(m) for m in got] == frames
