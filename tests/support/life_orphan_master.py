"""
A master program for tests/test_lifecycle.py, run as a separate process:
it starts two children (on the interpreter named by its first argument),
prints their PIDs on one line, then sleeps until the test kills it.
"""
import os
import sys
import time

import mitogen.master


def main():
    router = mitogen.master.Router()
    pids = [router.local(python_path=sys.argv[1]).call(os.getpid)
            for _ in range(2)]
    sys.stdout.write(' '.join(str(pid) for pid in pids) + '\n')
    sys.stdout.flush()
    time.sleep(1000)


if __name__ == '__main__':
    main()
