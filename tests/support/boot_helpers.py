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
