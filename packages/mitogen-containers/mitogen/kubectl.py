# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``kubectl`` connection method: a child Python inside a Kubernetes pod,
started with ``kubectl exec --stdin [KUBECTL_ARGS] POD -- python3 -c ...``.
No terminal is asked for: the connection carries binary frames, which a
terminal would translate. See :mod:`mitogen.container` for what the
container methods share.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

from __future__ import absolute_import

__all__ = ['Connection', 'Options']

import mitogen.container


class Options(mitogen.container.Options):
    """Options of ``router.kubectl()``, on top of those of
    :class:`mitogen.parent.Options`.

    :param str pod: the pod to enter.
    :param str kubectl_path: the kubectl program; ``kubectl`` (searched in
        ``PATH``) by default.
    :param list kubectl_args: more arguments for ``kubectl exec``, placed
        before the pod's name: ``['--namespace', 'web', '--container',
        'app']``, ``--context``, ``--kubeconfig``, ...

    The context is named ``kubectl.<pod>``.
    """
    method = u'kubectl'
    path_option = 'kubectl_path'
    default_tool = 'kubectl'

    def __init__(self, pod=None, kubectl_path=None, kubectl_args=None,
                 **kwargs):
        super(Options, self).__init__(container=pod, tool_path=kubectl_path,
                                      **kwargs)
        self.require(self.container, 'a pod')
        self.pod = self.container
        self.kubectl_path = self.tool_path
        self.kubectl_args = mitogen.container.native_list(kubectl_args,
                                                          'kubectl_args')


class Connection(mitogen.container.Connection):
    """Starts the child with ``kubectl exec``."""
    options_class = Options
    name_prefix = u'kubectl'

    def get_container_argv(self):
        o = self.options
        return ([o.kubectl_path, 'exec', '--stdin'] + o.kubectl_args +
                [o.pod, '--'])

    def _what(self):
        return 'kubectl pod %r' % (self.options.pod,)
