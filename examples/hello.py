"""
Start a Python child on this machine and run a function of this script in it.

The child receives nothing but a small bootstrap through its stdin; it then
asks the master for every module it imports, this script included, so
``describe()`` below runs there without the script being installed anywhere.

Run it with the project's virtual environment::

    .venv/bin/python examples/hello.py
    .venv/bin/python examples/hello.py --log    # also log to mitogen.log
"""
import os
import socket
import sys

import mitogen.master
import mitogen.utils


def describe(greeting):
    """Runs in the child: tells which process and interpreter it is."""
    return '%s from pid %d on %s, Python %s (parent pid %d)' % (
        greeting,
        os.getpid(),
        socket.gethostname(),
        '.'.join(str(n) for n in sys.version_info[:3]),
        os.getppid(),
    )


def main() -> None:
    if '--log' in sys.argv[1:]:
        # Sends the library's log records (and the children's, which are
        # forwarded to the master) to a file; DEBUG shows every message.
        mitogen.utils.log_to_file('mitogen.log', level='DEBUG')

    with mitogen.master.Router() as router:
        # python_path: use this very interpreter for the child, so it finds
        # the same standard library (and skips any pyenv shim on PATH).
        child = router.local(python_path=sys.executable)
        print('master pid %d, child context %r' % (os.getpid(), child.name))
        print(child.call(describe, 'hello'))


if __name__ == '__main__':
    main()
