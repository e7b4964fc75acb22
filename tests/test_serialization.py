"""
Specification of message body serialization in :mod:`mitogen.core`:
:func:`serialize` / :func:`deserialize`, a restricted pickle of protocol 2
whose byte strings over 64 bytes travel out of band, and whose unpickler
resolves only an allow-list of globals.

Tested without processes, except the cross-version round trip, which runs
``tests/support/serialization_peer.py`` under Python 2.7 and 3.6.
"""
import datetime
import decimal
import os
import pickle
import random
import struct
import subprocess
import tracemalloc
import uuid

import pytest

import mitogen.core
import mitogen.master
from mitogen.core import (Blob, CallError, FLAG_OOB, Kwargs, Secret,
                          StreamError, deserialize, serialize)

import interpreters

HERE = os.path.dirname(os.path.abspath(__file__))
CORE_PATH = os.path.join(os.path.dirname(HERE), 'packages', 'mitogen-core')
PEER = os.path.join(HERE, 'support', 'serialization_peer.py')


def make_call_error():
    try:
        raise ValueError('boom: %d' % 42)
    except ValueError as e:
        return CallError(e)


IST = datetime.timezone(datetime.timedelta(hours=5, minutes=30), 'IST')

# (id, value). Every row must survive serialize -> deserialize unchanged,
# type included.
VALUES = [
    ('none', None),
    ('true', True),
    ('false', False),
    ('zero', 0),
    ('negative-int', -12345),
    ('big-int', 2 ** 100 + 7),
    ('float', 1.5),
    ('negative-float', -0.0001),
    ('infinity', float('inf')),
    ('text', u'text'),
    ('non-ascii-text', u'\u00fcn\u00efc\u00f8de \u2603 \U0001f600'),
    ('empty-text', u''),
    ('empty-bytes', b''),
    ('short-bytes', b'short'),
    ('bytes-at-threshold', b'x' * 64),
    ('bytes-over-threshold', b'y' * 65),
    ('binary-bytes-over-threshold', bytes(range(256))),
    ('one-mib-bytes', os.urandom(1 << 20)),
    ('empty-list', []),
    ('empty-tuple', ()),
    ('empty-dict', {}),
    ('list', [1, u'two', b'three', 4.0]),
    ('tuple', (1, (2, (3, (4,))))),
    ('dict', {u'a': 1, b'b': 2, 3: u'c', (4, 5): None}),
    ('nested', {u'k': [(b'z' * 100, {u'deep': [set([1, 2])]})],
                u'other': (b'', u'', [b'w' * 70, b'w' * 10])}),
    ('set', set([1, u'two', b'three', (4, 5)])),
    ('empty-set', set()),
    ('frozenset', frozenset([1, 2, 3])),
    ('complex', complex(1.5, -2)),
    ('bytearray', bytearray(b'\x00\xffabc')),
    ('large-bytearray', bytearray(b'q' * 200)),
    ('empty-bytearray', bytearray()),
    ('date', datetime.date(2024, 2, 29)),
    ('time', datetime.time(23, 59, 58, 123456)),
    ('datetime', datetime.datetime(1999, 12, 31, 23, 59, 59, 999999)),
    ('datetime-utc', datetime.datetime(2020, 1, 2, 3, 4, 5,
                                       tzinfo=datetime.timezone.utc)),
    ('datetime-offset', datetime.datetime(2021, 6, 7, 8, 9, 10, tzinfo=IST)),
    ('time-offset', datetime.time(1, 2, 3, tzinfo=IST)),
    ('timedelta', datetime.timedelta(days=-3, seconds=7, microseconds=9)),
    ('timezone', IST),
    ('decimal', decimal.Decimal('1.10')),
    ('decimal-exponent', decimal.Decimal('-7.5E+300')),
    ('uuid', uuid.UUID('12345678-1234-5678-1234-567812345678')),
    ('blob', Blob(b'blob data')),
    ('large-blob', Blob(b'B' * 1000)),
    ('secret', Secret(u'hunter2')),
    ('kwargs', Kwargs({u'a': 1, u'b': [2]})),
    ('call-error', make_call_error()),
    ('call-error-text', CallError(u'plain message')),
]

VALUE_PARAMS = [pytest.param(value, id=name) for name, value in VALUES]


def assert_same(got, want):
    """`got` equals `want`, and so does the type of every part of it."""
    assert type(got) is type(want), (got, want)
    if isinstance(want, CallError):
        assert str(got) == str(want)
        assert got.type_name == want.type_name
        assert got.remote_message == want.remote_message
        assert got.remote_traceback == want.remote_traceback
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
    elif isinstance(want, dict):
        assert got == want
        for key, value in want.items():
            got_key, = [k for k in got if k == key]
            assert_same(got_key, key)
            assert_same(got[key], value)
    elif isinstance(want, (set, frozenset)):
        assert got == want
        assert sorted(map(repr, got)) == sorted(map(repr, want))
    elif isinstance(want, (datetime.datetime, datetime.time)):
        assert got == want
        assert got.tzinfo == want.tzinfo
        assert got.tzname() == want.tzname()
    else:
        assert got == want


def round_trip(value):
    return deserialize(*serialize(value))


def oob_count(flags, body):
    if not flags & FLAG_OOB:
        return 0
    return struct.unpack('>L', body[:4])[0]


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('value', VALUE_PARAMS)
def test_allowed_value_round_trips_with_its_type(value):
    assert_same(round_trip(value), value)


@pytest.mark.parametrize('value', VALUE_PARAMS)
def test_stdlib_protocol_2_pickle_of_allowed_value_deserializes(value):
    assert_same(deserialize(0, pickle.dumps(value, 2)), value)


def test_body_is_a_protocol_2_pickle():
    flags, body = serialize([1, u'two'])
    assert flags == 0
    assert body[:2] == b'\x80\x02'
    assert pickle.loads(body) == [1, u'two']


@pytest.mark.parametrize('size', [0, 1, 63, 64])
def test_bytes_up_to_64_stay_inside_the_pickle(size):
    flags, body = serialize(b'a' * size)
    assert not flags & FLAG_OOB


@pytest.mark.parametrize('size', [65, 1000, 1 << 20])
def test_bytes_over_64_travel_out_of_band_raw(size):
    data = os.urandom(size)
    flags, body = serialize(data)
    assert flags & FLAG_OOB
    assert oob_count(flags, body) == 1
    assert body.endswith(data)
    # The raw buffer plus a small table and pickle; no re-encoded copy.
    assert len(body) < size + 100


def test_bytes_deep_inside_containers_travel_out_of_band():
    data = b'd' * 500
    flags, body = serialize({u'a': [(1, [data])]})
    assert oob_count(flags, body) == 1
    assert body.endswith(data)


def test_bytes_behind_names_and_empty_arguments_travel_out_of_band():
    # The shape of a call: names, None and empty containers are skipped
    # without a look inside, the byte string after them is still found.
    data = b'e' * 500
    flags, body = serialize((u'mod', None, u'fn', (), Kwargs({}),
                             Kwargs({u'k': 1, u'data': data})))
    assert oob_count(flags, body) == 1
    assert body.endswith(data)


def test_same_bytes_object_referenced_twice_is_sent_once():
    data = os.urandom(1000)
    flags, body = serialize([data, {u'again': data}])
    assert oob_count(flags, body) == 1
    assert len(body) < 1100
    got = deserialize(flags, body)
    assert got[0] == data
    assert got[0] is got[1][u'again']


def test_equal_but_distinct_bytes_objects_are_both_sent():
    a = b'e' * 100
    b = bytes(bytearray(a))
    assert a is not b
    flags, body = serialize([a, b])
    assert oob_count(flags, body) == 2
    assert deserialize(flags, body) == [a, b]


def test_large_blob_travels_out_of_band_and_keeps_its_type():
    data = os.urandom(1000)
    flags, body = serialize(Blob(data))
    assert oob_count(flags, body) == 1
    assert body.endswith(data)
    assert_same(deserialize(flags, body), Blob(data))


def test_blob_and_secret_hide_their_value_in_repr():
    assert 'xyz' not in repr(round_trip(Blob(b'xyz')))
    assert 'hunter2' not in repr(round_trip(Secret(u'hunter2')))


def test_call_error_keeps_type_name_message_and_traceback():
    got = round_trip(make_call_error())
    assert got.type_name == 'builtins.ValueError'
    assert got.remote_message == 'boom: 42'
    assert 'make_call_error' in got.remote_traceback
    assert str(got).startswith('builtins.ValueError: boom: 42\n')


def test_unserializable_value_raises_stream_error_naming_it():
    with pytest.raises(StreamError, match='cannot serialize'):
        serialize(lambda: None)


# ---------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------

def global_call(module, name, *args):
    """A protocol 2 pickle that calls ``module.name(*args)`` when loaded."""
    arg_ops = pickle.dumps(args, 2)[2:-1]
    return (b'\x80\x02c' + module.encode() + b'\n' + name.encode() + b'\n'
            + arg_ops + b'R.')


class NotRegistered(object):
    """A class no router registered."""

    def __init__(self, value=None):
        self.value = value

    def __eq__(self, other):
        return type(other) is NotRegistered and other.value == self.value


def refusal_rows(marker):
    touch = 'touch ' + marker
    code = 'open(%r, "w").close()' % (marker,)
    return [
        ('os', 'system', (touch,)),
        ('posix', 'system', (touch,)),
        ('subprocess', 'Popen', (['touch', marker],)),
        ('subprocess', 'check_call', (['touch', marker],)),
        ('builtins', 'eval', (code,)),
        ('builtins', 'exec', (code,)),
        ('__builtin__', 'eval', (code,)),
        ('builtins', 'getattr', ('abc', 'upper')),
        ('builtins', '__import__', ('os',)),
        ('builtins', 'open', (marker, 'w')),
        ('builtins', 'type', ('X', (), {})),
        ('mitogen.core', 'Router', (None,)),
        ('mitogen.core', 'Message', ()),
    ]


REFUSAL_IDS = ['%s.%s' % row[:2] for row in refusal_rows('/m')]


@pytest.mark.parametrize('index', range(len(REFUSAL_IDS)),
                         ids=REFUSAL_IDS)
def test_global_outside_the_allow_list_is_refused_by_name(index, tmp_path):
    marker = str(tmp_path / 'ran')
    module, name, args = refusal_rows(marker)[index]
    body = global_call(module, name, *args)
    with pytest.raises(StreamError) as info:
        deserialize(0, body)
    assert '%s.%s' % (module, name) in str(info.value)
    assert not os.path.exists(marker)


def test_the_refusal_pickles_would_run_code_if_loaded_by_plain_pickle(
        tmp_path):
    # Control for the table above: the same bytes do execute under an
    # unrestricted unpickler.
    marker = str(tmp_path / 'ran')
    pickle.loads(global_call('builtins', 'exec',
                             'open(%r, "w").close()' % (marker,)))
    assert os.path.exists(marker)


def test_unregistered_class_is_refused_by_name():
    body = pickle.dumps(NotRegistered(5), 2)
    with pytest.raises(StreamError) as info:
        deserialize(0, body)
    assert '%s.NotRegistered' % (__name__,) in str(info.value)
    assert 'register_type' in str(info.value)


def test_registered_class_is_accepted_by_its_router():
    with mitogen.master.Router() as router:
        router.register_type(NotRegistered)
        body = pickle.dumps(NotRegistered(5), 2)
        assert deserialize(0, body, router) == NotRegistered(5)


def test_type_registered_on_one_router_is_refused_without_it():
    with mitogen.master.Router() as router:
        router.register_type(NotRegistered)
    with pytest.raises(StreamError):
        deserialize(0, pickle.dumps(NotRegistered(5), 2))


@pytest.mark.parametrize('module, name, args', [
    ('builtins', 'bytearray', (1 << 28,)),
    ('__builtin__', 'bytearray', (1 << 28,)),
    ('builtins', 'bytes', (1 << 28,)),
    ('_codecs', 'encode', (u'abc', 'rot13')),
])
def test_allowed_global_refuses_arguments_pickle_never_writes(
        module, name, args):
    # bytearray(n) and bytes(n) would allocate n bytes from a pickle of a
    # few bytes: refusing must not allocate them.
    body = global_call(module, name, *args)
    tracemalloc.start()
    try:
        with pytest.raises(StreamError):
            deserialize(0, body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# ---------------------------------------------------------------------------
# Malformed out-of-band tables
# ---------------------------------------------------------------------------

def oob_body(pickle_bytes, buffers):
    parts = [struct.pack('>L', len(buffers))]
    parts.extend(struct.pack('>Q', len(b)) for b in buffers)
    parts.append(struct.pack('>L', len(pickle_bytes)))
    parts.append(pickle_bytes)
    parts.extend(buffers)
    return b''.join(parts)


def persid(pid):
    """A pickle whose value is out-of-band buffer `pid`."""
    return b'\x80\x02' + pickle.dumps(pid, 2)[2:-1] + b'Q.'


def test_hand_built_oob_body_deserializes():
    # Control for the malformed bodies below: the format as built here.
    buf = b'p' * 100
    assert deserialize(FLAG_OOB, oob_body(persid(0), [buf])) == buf


GOOD_BUF = b'g' * 100
GOOD = oob_body(persid(0), [GOOD_BUF])

MALFORMED_OOB = [
    ('empty-body', b''),
    ('short-count', b'\x00\x00'),
    ('count-too-big', struct.pack('>L', 0xffffffff) + GOOD[4:]),
    ('count-one-too-many', struct.pack('>L', 2) + GOOD[4:]),
    ('truncated-table', GOOD[:10]),
    ('truncated-buffer', GOOD[:-1]),
    ('buffer-length-huge', GOOD[:4] + struct.pack('>Q', 2 ** 63) + GOOD[12:]),
    ('pickle-length-too-big', GOOD[:12] + struct.pack('>L', 10 ** 6)
     + GOOD[16:]),
    ('trailing-bytes', GOOD + b'!'),
    ('persistent-id-out-of-range', oob_body(persid(1), [GOOD_BUF])),
    ('persistent-id-negative', oob_body(persid(-1), [GOOD_BUF])),
    ('persistent-id-text', oob_body(persid(u'0'), [GOOD_BUF])),
    ('persistent-id-tuple', oob_body(persid((0,)), [GOOD_BUF])),
    ('persistent-id-without-table', oob_body(persid(0), [])),
]


@pytest.mark.parametrize('body', [pytest.param(b, id=i)
                                  for i, b in MALFORMED_OOB])
def test_malformed_out_of_band_body_raises_stream_error(body):
    with pytest.raises(StreamError):
        deserialize(FLAG_OOB, body)


def test_persistent_id_in_a_body_without_oob_flag_is_refused():
    with pytest.raises(StreamError):
        deserialize(0, persid(0))


# ---------------------------------------------------------------------------
# Fuzzing
# ---------------------------------------------------------------------------

def fuzz_outcome(flags, body):
    """'value' or 'error'; any exception but StreamError propagates."""
    try:
        deserialize(flags, body)
    except StreamError:
        return 'error'
    return 'value'


def test_random_bodies_raise_only_stream_error():
    rng = random.Random(7)
    counts = {'value': 0, 'error': 0}
    for _ in range(3000):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        if rng.random() < 0.5:
            body = b'\x80\x02' + body
        counts[fuzz_outcome(rng.choice([0, FLAG_OOB]), body)] += 1
    assert counts['error'] > 2000


def test_mutated_valid_bodies_raise_only_stream_error():
    rng = random.Random(11)
    corpus = [serialize(value) for _, value in VALUES
              if not isinstance(value, bytes) or len(value) < 4096]
    counts = {'value': 0, 'error': 0}
    for _ in range(3000):
        flags, body = rng.choice(corpus)
        body = bytearray(body)
        for _ in range(rng.randint(1, 3)):
            if body and rng.random() < 0.7:
                body[rng.randrange(len(body))] = rng.getrandbits(8)
            else:
                del body[rng.randrange(len(body) + 1):]
        counts[fuzz_outcome(flags, bytes(body))] += 1
    # Both outcomes occur, so the mutations reach past the first opcode.
    assert counts['error'] > 500
    assert counts['value'] > 50


# ---------------------------------------------------------------------------
# Cross-version round trip through Python 2.7 and 3.6
# ---------------------------------------------------------------------------

# Python 2 has no datetime.timezone: values that need it are not sent there.
NEEDS_TIMEZONE = {'datetime-utc', 'datetime-offset', 'time-offset',
                  'timezone'}

# How the peer names the type of these rows: bytes stay bytes (py2 str).
PEER_TYPE_NAMES = {
    '2.7': {'short-bytes': 'str', 'bytes-over-threshold': 'str',
            'empty-bytes': 'str', 'text': 'unicode', 'blob': 'Blob',
            'bytearray': 'bytearray', 'kwargs': 'Kwargs'},
    '3.6': {'short-bytes': 'bytes', 'bytes-over-threshold': 'bytes',
            'empty-bytes': 'bytes', 'text': 'str', 'blob': 'Blob',
            'bytearray': 'bytearray', 'kwargs': 'Kwargs'},
}

_frame = struct.Struct('>LL')


def run_peer(interpreter, bodies):
    stdin = b''.join(_frame.pack(flags, len(body)) + body
                     for flags, body in bodies)
    env = dict(os.environ, PYTHONPATH=CORE_PATH)
    proc = subprocess.run([interpreter.path, PEER], input=stdin,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode('utf-8', 'replace')
    out, pos = proc.stdout, 0
    while pos < len(out):
        flags, length = _frame.unpack_from(out, pos)
        pos += _frame.size
        yield flags, out[pos:pos + length]
        pos += length


@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.6']),
                         indirect=True)
def test_values_survive_a_round_trip_through_an_older_python(interpreter):
    rows = [(name, value) for name, value in VALUES
            if not (interpreter.version == '2.7' and name in NEEDS_TIMEZONE)]
    replies = run_peer(interpreter, [serialize(v) for _, v in rows])
    type_names = PEER_TYPE_NAMES[interpreter.version]
    failures = []
    for name, value in rows:
        flags, body = next(replies)
        if flags == 0xffff:
            failures.append('%s: refused by the peer: %s'
                            % (name, body.decode('utf-8', 'replace')))
            continue
        peer_type = next(replies)[1].decode()
        if name in type_names and peer_type != type_names[name]:
            failures.append('%s: the peer saw a %s, not a %s'
                            % (name, peer_type, type_names[name]))
        try:
            assert_same(deserialize(flags, body), value)
        except (AssertionError, StreamError) as e:
            failures.append('%s: came back different: %r' % (name, e))
    assert not failures, '\n'.join(failures)
    assert next(replies, None) is None


@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.6']),
                         indirect=True)
def test_older_python_refuses_a_global_outside_the_allow_list(
        interpreter, tmp_path):
    marker = str(tmp_path / 'ran')
    body = global_call('os', 'system', 'touch ' + marker)
    (flags, text), = run_peer(interpreter, [(0, body)])
    assert flags == 0xffff
    assert b'os.system' in text
    assert not os.path.exists(marker)
