# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``buildah`` connection method: a child Python inside a Buildah working
container, started with ``buildah run [--user USER] -- CONTAINER python3 -c
...``. See :mod:`mitogen.container` for what the container methods share.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

from __future__ import absolute_import

__all__ = ['Connection', 'Options']

import mitogen.container


class Options(mitogen.container.Options):
    """Options of ``router.buildah()``, on top of those of
    :class:`mitogen.parent.Options`.

    :param str container: name or ID of the working container.
    :param str buildah_path: the buildah program; ``buildah`` (searched in
        ``PATH``) by default.
    :param str username: account to run as inside the container
        (``--user``); default: the container's.

    The context is named ``buildah.<container>``.
    """
    method = u'buildah'
    path_option = 'buildah_path'
    default_tool = 'buildah'

    def __init__(self, container=None, buildah_path=None, username=None,
                 **kwargs):
        super(Options, self).__init__(container=container, username=username,
                                      tool_path=buildah_path, **kwargs)
        self.require(self.container, 'a container')
        self.buildah_path = self.tool_path


class Connection(mitogen.container.Connection):
    """Starts the child with ``buildah run``."""
    options_class = Options
    name_prefix = u'buildah'

    def get_container_argv(self):
        o = self.options
        argv = [o.buildah_path, 'run']
        if o.username:
            argv += ['--user', o.username]
        # "--" ends buildah's options: a container named like an option
        # stays a container name.
        return argv + ['--', o.container]
