# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``lxc`` connection method: a child Python inside a running LXC
container (LXC "classic", the ``lxc-*`` tools), started with ``lxc-attach
--clear-env --name CONTAINER -- python3 -c ...``. The environment is cleared
so that nothing of this machine's (``PATH``, ``PYTHONPATH``, a virtual
environment) leaks into the container. See :mod:`mitogen.container` for
what the container methods share.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

from __future__ import absolute_import

__all__ = ['Connection', 'Options']

import mitogen.container


class Options(mitogen.container.Options):
    """Options of ``router.lxc()``, on top of those of
    :class:`mitogen.parent.Options`.

    :param str container: name of a running container.
    :param str lxc_attach_path: the lxc-attach program; ``lxc-attach``
        (searched in ``PATH``) by default.

    The context is named ``lxc.<container>``.
    """
    method = u'lxc'
    path_option = 'lxc_attach_path'
    default_tool = 'lxc-attach'

    def __init__(self, container=None, lxc_attach_path=None, **kwargs):
        super(Options, self).__init__(container=container,
                                      tool_path=lxc_attach_path, **kwargs)
        self.require(self.container, 'a container')
        self.lxc_attach_path = self.tool_path


class Connection(mitogen.container.Connection):
    """Starts the child with ``lxc-attach``."""
    options_class = Options
    name_prefix = u'lxc'

    def get_container_argv(self):
        o = self.options
        return [o.lxc_attach_path, '--clear-env', '--name', o.container, '--']
