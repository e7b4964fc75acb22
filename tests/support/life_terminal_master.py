"""
A master program for tests/test_lifecycle.py, run as a separate process
(by the test, with or without a controlling terminal): it starts a local
and a fork child, prints one JSON line about itself and them, then, after
each line read from stdin, calls both children again and prints whether
they answered. SIGINT only counts: the test sends it to this process's
group and checks that the children never get it.
"""
import json
import os
import signal
import sys

import mitogen.core
import mitogen.master

interrupts = []


def opens_tty(call):
    try:
        call(os.close, call(os.open, '/dev/tty', os.O_RDWR))
    except (OSError, mitogen.core.CallError):
        return False
    return True


def local_call(fn, *args):
    return fn(*args)


def describe(context):
    pid = context.call(os.getpid)
    return {'pid': pid, 'pgid': context.call(os.getpgid, 0),
            'sid': context.call(os.getsid, 0), 'tty': opens_tty(context.call)}


def main():
    signal.signal(signal.SIGINT, lambda *_: interrupts.append(1))
    router = mitogen.master.Router()
    children = [router.local(python_path=sys.argv[1]), router.fork()]
    me = {'pid': os.getpid(), 'pgid': os.getpgid(0), 'sid': os.getsid(0),
          'tty': opens_tty(local_call)}
    sys.stdout.write(json.dumps(
        {'master': me, 'children': [describe(c) for c in children]}) + '\n')
    sys.stdout.flush()
    for _ in sys.stdin:
        answers = [c.call(os.getpid) for c in children]
        sys.stdout.write(json.dumps(
            {'interrupts': len(interrupts), 'answers': answers}) + '\n')
        sys.stdout.flush()


if __name__ == '__main__':
    main()
