"""
Functions that tests/test_fork.py runs in forks and in the contexts they
are forked from.  Forks of a child run them under the child's Python, so
this module stays Python 2.7 compatible.
"""
import logging
import os
import random
import sys

import mitogen
import mitogen.core

#: What the on_fork / on_start hooks saw, in the order they ran. The master
#: never runs them, so its copy stays empty.
EVENTS = []


def pids():
    """``(pid, parent pid)`` of the calling process."""
    return os.getpid(), os.getppid()


def echo(value):
    return value


def package_globals():
    """The ``mitogen`` package globals of the calling context."""
    return (mitogen.is_master, mitogen.context_id, mitogen.parent_id,
            list(mitogen.parent_ids))


def random_value():
    """The next value of the module-level :mod:`random` generator."""
    return random.random()


def seed_random(seed):
    random.seed(seed)


def record_on_fork():
    """An ``on_fork`` hook: notes the process it ran in and whether the
    fork's context had started yet."""
    EVENTS.append((u'on_fork', os.getpid(), mitogen.is_master))


def record_on_start(econtext):
    """An ``on_start`` hook: notes the context it was given."""
    EVENTS.append((u'on_start', os.getpid(),
                   isinstance(econtext, mitogen.core.ExternalContext),
                   econtext.router.context_id))


def events():
    return list(EVENTS)


def fail_on_fork():
    raise ValueError('on_fork failed on purpose')


def hang_on_fork():
    import time
    time.sleep(3600)


def fail_on_start(econtext):
    raise ValueError('on_start failed on purpose')


def importer_requests():
    """Names the calling context's importer asked its parent for."""
    for finder in sys.meta_path:
        if isinstance(finder, mitogen.core.Importer):
            return list(finder.requests)
    return None


def import_and_forget(modname):
    """Import `modname` (fetching it from the parent), then drop it from
    ``sys.modules``: the importer still holds its source."""
    __import__(modname)
    del sys.modules[modname]
    parent, _, child = modname.rpartition('.')
    if parent and hasattr(sys.modules.get(parent), child):
        delattr(sys.modules[parent], child)


def import_counting_requests(modname):
    """Import `modname`; return whether it was imported already, and the
    importer requests the import cost."""
    loaded = modname in sys.modules
    before = len(importer_requests() or [])
    __import__(modname)
    return loaded, (importer_requests() or [])[before:]


def seeded_value(seed):
    """Seed the module-level generator; return its first value."""
    random.seed(seed)
    return random.random()


def log_on(logger_name, level, text):
    logging.getLogger(logger_name).log(level, '%s', text)


def print_line(text):
    sys.stdout.write(text + '\n')
    sys.stdout.flush()


@mitogen.core.takes_econtext
def module_loaders(econtext):
    """``(served, stale)``: how many modules name this context's importer
    as their loader, and the names of those naming another importer."""
    served = 0
    stale = []
    for name, module in list(sys.modules.items()):
        loaders = [getattr(module, '__loader__', None),
                   getattr(getattr(module, '__spec__', None), 'loader', None)]
        if any(loader is econtext.importer for loader in loaders):
            served += 1
        if any(isinstance(loader, mitogen.core.Importer) and
               loader is not econtext.importer for loader in loaders):
            stale.append(name)
    return served, sorted(stale)


def read_resource(package, name):
    """A data file of `package`, through ``importlib.resources``."""
    import importlib.resources
    return importlib.resources.files(package).joinpath(name).read_bytes()
