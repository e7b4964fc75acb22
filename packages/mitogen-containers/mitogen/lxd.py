# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``lxd`` connection method: a child Python inside a running LXD
container, started with LXD's client, ``lxc exec --mode=non-interactive
CONTAINER -- python3 -c ...``; non-interactive, because a terminal would
translate the connection's binary frames. See :mod:`mitogen.container` for
what the container methods share.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

from __future__ import absolute_import

__all__ = ['Connection', 'Options']

import mitogen.container


class Options(mitogen.container.Options):
    """Options of ``router.lxd()``, on top of those of
    :class:`mitogen.parent.Options`.

    :param str container: name of a running container, optionally
        ``remote:name``.
    :param str lxc_path: LXD's lxc program; ``lxc`` (searched in ``PATH``)
        by default.

    The context is named ``lxd.<container>``.
    """
    method = u'lxd'
    path_option = 'lxc_path'
    default_tool = 'lxc'

    def __init__(self, container=None, lxc_path=None, **kwargs):
        super(Options, self).__init__(container=container, tool_path=lxc_path,
                                      **kwargs)
        self.require(self.container, 'a container')
        self.lxc_path = self.tool_path


class Connection(mitogen.container.Connection):
    """Starts the child with ``lxc exec``."""
    options_class = Options
    name_prefix = u'lxd'

    def get_container_argv(self):
        o = self.options
        return [o.lxc_path, 'exec', '--mode=non-interactive', o.container,
                '--']
