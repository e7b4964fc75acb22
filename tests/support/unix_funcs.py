"""
Functions that tests/test_unix.py and its client program
(:mod:`support.unix_client`) call in the contexts of a tree: in the master,
which runs the listener, and in its child. Children of any Python version
import this module, so it stays Python 2.7 compatible.
"""
import os

import mitogen
import mitogen.core

#: The master's child; set by the test in the master.
CHILD = None


def get_child():
    """In the master: the :class:`mitogen.core.Context` of its child."""
    return CHILD


def identity():
    """``(pid, context ID)`` of the context running the call."""
    return os.getpid(), mitogen.context_id


def socket_helpers(path):
    """Use :mod:`mitogen.unix` in a child: ``(is_path_dead(path), directory
    of a new make_socket_path())``."""
    import mitogen.unix
    return (mitogen.unix.is_path_dead(path),
            os.path.dirname(mitogen.unix.make_socket_path()))


@mitogen.core.takes_econtext
def start_listener(path, econtext):
    """In a child: start a :class:`mitogen.unix.Listener` at `path` on the
    child's router, which first learns to allocate IDs."""
    import mitogen.parent
    import mitogen.unix
    router = mitogen.parent.upgrade_router(econtext)
    return mitogen.unix.Listener.build_stream(router, path).protocol.path
