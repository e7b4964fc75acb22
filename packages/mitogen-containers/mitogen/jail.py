# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``jail`` connection method: a child Python inside a running FreeBSD
jail, started with ``jexec [-U USER] JAIL python3 -c ...``. See
:mod:`mitogen.container` for what the container methods share.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

from __future__ import absolute_import

__all__ = ['Connection', 'Options']

import mitogen.container


class Options(mitogen.container.Options):
    """Options of ``router.jail()``, on top of those of
    :class:`mitogen.parent.Options`.

    :param str container: name or JID of the jail.
    :param str jexec_path: the jexec program; ``/usr/sbin/jexec`` by
        default.
    :param str username: account to run as inside the jail (``-U``, looked
        up in the jail's password database); default: root.

    The context is named ``jail.<container>``.
    """
    method = u'jail'
    path_option = 'jexec_path'
    default_tool = '/usr/sbin/jexec'

    def __init__(self, container=None, jexec_path=None, username=None,
                 **kwargs):
        super(Options, self).__init__(container=container, username=username,
                                      tool_path=jexec_path, **kwargs)
        self.require(self.container, 'a jail')
        self.jexec_path = self.tool_path


class Connection(mitogen.container.Connection):
    """Starts the child with ``jexec``."""
    options_class = Options
    name_prefix = u'jail'

    def get_container_argv(self):
        o = self.options
        argv = [o.jexec_path]
        if o.username:
            argv += ['-U', o.username]
        return argv + [o.container]

    def _what(self):
        return 'jail %r' % (self.options.container,)
