"""
Run by another Python (2.7, 3.6, ...) with only ``mitogen.core`` on its
path, for tests/test_serialization.py: it deserializes bodies written by
the master's :func:`mitogen.core.serialize` and serializes each result again
with its own core, so the master can check both directions of the
cross-version guarantee.

Frames on stdin and stdout are ``flags(4) | length(4) | body``. For each
body read, two frames are written: the value serialized again, then the
name of the type the value had here (UTF-8, flags 0). A body this Python
cannot deserialize is answered with a single frame of flags 0xffff holding
the error text.

It runs as a script, outside any context, so it stays Python 2.7
compatible and imports nothing but the core.
"""
import struct
import sys

import mitogen.core

ERROR = 0xffff
_frame = struct.Struct('>LL')


def read_frames(fp):
    while True:
        head = fp.read(_frame.size)
        if not head:
            return
        flags, length = _frame.unpack(head)
        yield flags, fp.read(length)


def write_frame(fp, flags, body):
    fp.write(_frame.pack(flags, len(body)) + body)


def type_name(value):
    return type(value).__name__.encode('utf-8')


def main():
    stdin = getattr(sys.stdin, 'buffer', sys.stdin)
    stdout = getattr(sys.stdout, 'buffer', sys.stdout)
    for flags, body in read_frames(stdin):
        try:
            value = mitogen.core.deserialize(flags, body)
            again = mitogen.core.serialize(value)
        except mitogen.core.StreamError as e:
            write_frame(stdout, ERROR, str(e).encode('utf-8'))
            continue
        write_frame(stdout, again[0], again[1])
        write_frame(stdout, 0, type_name(value))
    stdout.flush()


if __name__ == '__main__':
    main()
