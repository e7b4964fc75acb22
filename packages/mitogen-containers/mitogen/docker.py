# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``docker`` connection method: a child Python inside a running Docker
container (``docker exec --interactive [--user USER] CONTAINER python3 -c
...``), or inside a new container made from an image for the child's
lifetime and removed after it (``docker run --interactive --rm [--user USER]
IMAGE python3 -c ...``). See :mod:`mitogen.container` for what the
container methods share.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

from __future__ import absolute_import

__all__ = ['Connection', 'Options']

import mitogen.container
import mitogen.core


class Options(mitogen.container.Options):
    """Options of ``router.docker()``, on top of those of
    :class:`mitogen.parent.Options`. One of `container` and `image` is
    needed.

    :param str container: name or ID of a running container.
    :param str image: image to start a temporary container from, when no
        `container` is given.
    :param str docker_path: the docker program; ``docker`` (searched in
        ``PATH``) by default.
    :param str username: account to run as inside the container
        (``--user``); default: the container's.

    The context is named ``docker.<container>`` (or ``docker.<image>``).
    """
    method = u'docker'
    path_option = 'docker_path'
    default_tool = 'docker'

    def __init__(self, container=None, image=None, docker_path=None,
                 username=None, **kwargs):
        super(Options, self).__init__(container=container, username=username,
                                      tool_path=docker_path, **kwargs)
        self.image = mitogen.container.native(image)
        self.require(self.container or self.image, 'a container or an image')
        self.docker_path = self.tool_path
        if self.name is None:
            self.name = u'docker.' + mitogen.core.to_text(self.image)


class Connection(mitogen.container.Connection):
    """Starts the child with ``docker exec`` or ``docker run``."""
    options_class = Options
    name_prefix = u'docker'

    def get_container_argv(self):
        o = self.options
        if o.container:
            argv = [o.docker_path, 'exec', '--interactive']
        else:
            argv = [o.docker_path, 'run', '--interactive', '--rm']
        if o.username:
            argv += ['--user', o.username]
        return argv + [o.container or o.image]

    def _what(self):
        o = self.options
        if o.container:
            return 'docker container %r' % (o.container,)
        return 'a docker container of image %r' % (o.image,)
