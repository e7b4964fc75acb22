# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``local`` connection method: a child Python interpreter on this machine,
connected through a socket pair.
"""

import mitogen.parent


class Options(mitogen.parent.Options):
    """Options of :meth:`mitogen.parent.Router.local`; see
    :class:`mitogen.parent.Options`."""


class Connection(mitogen.parent.Connection):
    """Starts ``python -c <first stage>`` as a child process."""
    options_class = Options
    name_prefix = u'local'
