# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``podman`` connection method: a child Python inside a running Podman
container, started with ``podman exec --interactive [--user USER] CONTAINER
python3 -c ...``. See :mod:`mitogen.container` for what the container
methods share.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

from __future__ import absolute_import

__all__ = ['Connection', 'Options']

import mitogen.container


class Options(mitogen.container.Options):
    """Options of ``router.podman()``, on top of those of
    :class:`mitogen.parent.Options`.

    :param str container: name or ID of a running container.
    :param str podman_path: the podman program; ``podman`` (searched in
        ``PATH``) by default.
    :param str username: account to run as inside the container
        (``--user``); default: the container's.

    The context is named ``podman.<container>``.
    """
    method = u'podman'
    path_option = 'podman_path'
    default_tool = 'podman'

    def __init__(self, container=None, podman_path=None, username=None,
                 **kwargs):
        super(Options, self).__init__(container=container, username=username,
                                      tool_path=podman_path, **kwargs)
        self.require(self.container, 'a container')
        self.podman_path = self.tool_path


class Connection(mitogen.container.Connection):
    """Starts the child with ``podman exec``."""
    options_class = Options
    name_prefix = u'podman'

    def get_container_argv(self):
        o = self.options
        argv = [o.podman_path, 'exec', '--interactive']
        if o.username:
            argv += ['--user', o.username]
        return argv + [o.container]
