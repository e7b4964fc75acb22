"""
mitogen: distributed self-replicating Python programs.

The package spans several distributions (mitogen-core, mitogen-master,
mitogen-ssh, mitogen-fakessh).  ``pkgutil.extend_path`` lets each of them
contribute modules to this one package, whether installed from wheels (one
directory) or in development mode (one directory per distribution).
"""

__path__ = __import__('pkgutil').extend_path(__path__, __name__)

#: Version of this package as a tuple.
__version__ = (0, 1, 0)

#: True in the master process, False in every child.
is_master = True

#: ID of this context: 0 in the master.
context_id = 0

#: ID of the parent context, or None in the master.
parent_id = None

#: IDs of every ancestor context, nearest first; empty in the master.
parent_ids = []


def main(log_level='INFO', profiling=False):
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
