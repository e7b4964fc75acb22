"""
Functions that tests/test_bootstrap.py calls in children, reporting how the
child was set up.  They run in children, so this module stays Python 2.7
compatible.
"""
import os
import sys

import mitogen.core


def describe_boot():
    """Return facts about how this child got its core: where
    ``mitogen.core`` came from, whether ``site`` ran, and which directories
    of ``sys.path`` hold a ``mitogen`` package the child could import by
    itself."""
    installed = [
        mitogen.core.to_text(entry) for entry in sys.path
        if os.path.exists(os.path.join(entry or '.', 'mitogen'))
    ]
    return {
        u'core_file': mitogen.core.to_text(mitogen.core.__file__),
        u'no_site': bool(sys.flags.no_site),
        u'site_imported': 'site' in sys.modules,
        u'installed_mitogen': installed,
        u'pythonpath': mitogen.core.to_text(os.environ.get('PYTHONPATH', '')),
    }


def compiled_core():
    """Return how this child got its compiled core: the tag of the compiled
    core it was started with (empty if it compiled the source itself) and
    the file name its core's code objects carry (what tracebacks show)."""
    tag = b''
    for finder in sys.meta_path:
        if isinstance(finder, mitogen.core.Importer):
            tag = finder.core_code.partition(b'\n')[0]
    return {
        u'tag': mitogen.core.to_text(tag),
        u'code_file': mitogen.core.to_text(
            mitogen.core.ready_line.__code__.co_filename),
    }
