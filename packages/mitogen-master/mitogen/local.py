# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``local`` connection method: a child Python interpreter on this machine,
connected through a socket pair.
"""

__all__ = ['Connection', 'Options']

import mitogen.parent
import mitogen.installation

# This module exists only in this project: refuse to run on upstream
# Mitogen's core, installed over ours.
mitogen.installation.require_this_project()


class Options(mitogen.parent.Options):
    """Options of :meth:`mitogen.parent.Router.local`; see
    :class:`mitogen.parent.Options`."""


class Connection(mitogen.parent.Connection):
    """Starts ``python -c <first stage>`` as a child process."""
    options_class = Options
    name_prefix = u'local'
