"""
mitogen: distributed self-replicating Python programs.

The package spans several distributions (mitogen-core, mitogen-master,
mitogen-ssh, ...).  ``pkgutil.extend_path`` lets each of them
contribute modules to this one package, whether installed from wheels (one
directory) or in development mode (one directory per distribution).
"""

__all__ = ['context_id', 'is_master', 'main', 'parent_id', 'parent_ids']

import os as _os

# Type comments (PEP 484) describe the API: this module must compile on
# Python 2.7 too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable  # noqa: F401 (type comments)

from mitogen import installation as _installation

# Refuse to run on a package that upstream Mitogen's files share, and keep
# its directory out of ours when it is installed elsewhere on sys.path.
_installation.refuse_foreign_neighbour(_os.path.dirname(__file__))
__path__ = _installation.without_foreign_directories(
    __import__('pkgutil').extend_path(__path__, __name__),
    _os.path.dirname(__file__))


def __getattr__(name):
    # Version of this package as a tuple (``mitogen.__version__``), read
    # from core.py, its one source, only when asked for (Python 3.7+).
    if name == '__version__':
        import mitogen.core
        return tuple(int(n) for n in mitogen.core.__version__.split('.'))
    raise AttributeError('module %r has no attribute %r' % (__name__, name))


#: True in the master process, False in every child.
is_master = True

#: ID of this context: 0 in the master.
context_id = 0

#: ID of the parent context, or None in the master.
parent_id = None

#: IDs of every ancestor context, nearest first; empty in the master.
parent_ids = []


def main(log_level='INFO', profiling=False):
    # type: (str, bool) -> Callable[[Callable[[Any], Any]], Any]
    """
    Decorator that runs the decorated function as a program's entry point
    with a fresh :class:`mitogen.master.Router`, when the module is run as a
    script.  The function receives the router as its only argument::

        @mitogen.main()
        def main(router):
            router.local().call(os.getpid)
    """
    import sys

    def wrapper(func):
        if func.__module__ != '__main__':
            return func
        import mitogen.parent
        import mitogen.utils
        if profiling:
            raise NotImplementedError('profiling is not supported')
        mitogen.utils.log_to_file(level=log_level)
        return mitogen.utils.run_with_router(func)
    _ = sys
    return wrapper
