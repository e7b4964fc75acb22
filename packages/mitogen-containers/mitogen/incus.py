# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``incus`` connection method: a child Python inside a running Incus
instance, started with ``incus exec --mode=non-interactive CONTAINER --
python3 -c ...``; non-interactive, because a terminal would translate the
connection's binary frames. See :mod:`mitogen.container` for what the
container methods share.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

from __future__ import absolute_import

__all__ = ['Connection', 'Options']

import mitogen.container


class Options(mitogen.container.Options):
    """Options of ``router.incus()`` (as Mitogen for Ansible's
    ``mitogen_incus`` connection calls it), on top of those of
    :class:`mitogen.parent.Options`.

    :param str container: name of a running instance, optionally
        ``remote:name``.
    :param str incus_path: the incus program; ``incus`` (searched in
        ``PATH``) by default.

    The context is named ``incus.<container>``.
    """
    method = u'incus'
    path_option = 'incus_path'
    default_tool = 'incus'

    def __init__(self, container=None, incus_path=None, **kwargs):
        super(Options, self).__init__(container=container,
                                      tool_path=incus_path, **kwargs)
        self.require(self.container, 'a container')
        self.incus_path = self.tool_path


class Connection(mitogen.container.Connection):
    """Starts the child with ``incus exec``."""
    options_class = Options
    name_prefix = u'incus'

    def get_container_argv(self):
        o = self.options
        return [o.incus_path, 'exec', '--mode=non-interactive', o.container,
                '--']
