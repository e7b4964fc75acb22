# Copyright the mitogen contributors. BSD-3-Clause.
"""
What the container connection methods share: a child Python started inside
a container by the container manager's own command line tool (``podman
exec``, ``docker exec``, ``kubectl exec``, ``lxc-attach``, ...), whose
stdin and stdout carry the connection as for a local child.

Each method names the tool's argv (:meth:`Connection.get_container_argv`);
this module adds what a person needs when it fails:

* a tool that is not installed raises :class:`mitogen.core.StreamError`
  naming the option that sets its path (``podman_path``, ...);
* a tool that exits before the child is ready raises
  :class:`mitogen.parent.EofError` naming the container and carrying the
  tool's own last words (no such container, container not running); when
  the interpreter could not be found in the container the message says so.

The interpreter is looked up inside the container: ``python3`` unless
`python_path` says otherwise.

This module runs in children too (with ``via=``), so it is written for
Python 2.7 and 3.6+.
"""

from __future__ import absolute_import

__all__ = ['Connection', 'Options', 'native', 'native_list']

import re

import mitogen.core
import mitogen.parent

# Exit statuses of a shell, docker, podman and runc when the program to run
# was not found (127) or could not be executed (126).
_NOT_RUNNABLE = (126, 127)

# How the tools, runc and shells say that the program itself is missing.
_NOT_FOUND = re.compile(
    br'executable file not found|no such file or directory|not found'
    br'|cannot execute|failed to exec|exec format error', re.I)


def native_list(value, name):
    """Return `value`, a list of arguments (or None), as a list of native
    strings; a lone string is refused, as it would be split into
    characters."""
    if value is None:
        return []
    if isinstance(value, (mitogen.core.UnicodeType, mitogen.core.BytesType)):
        raise TypeError('%s must be a list of arguments, not the string %r'
                        % (name, value))
    return [mitogen.core.to_native(v) for v in value]


def native(value):
    """`value` as a native string, None kept."""
    if value is None:
        return None
    return mitogen.core.to_native(value)


class Options(mitogen.parent.Options):
    """Options shared by the container methods, on top of those of
    :class:`mitogen.parent.Options`. `python_path` is the interpreter
    inside the container, default ``python3``, looked up in the
    container's ``PATH``.

    :param str container: the container to enter.
    :param str username: account to run the child as inside the container,
        for the methods whose tool can choose one; default: the
        container's.
    """
    #: Interpreter run inside the container when `python_path` is not
    #: given.
    default_python_path = ['python3']
    #: Name of the method, for context names and messages.
    method = None
    #: Name of the option that sets the tool's path, for messages.
    path_option = None
    #: The tool run when its path option is not given.
    default_tool = None

    def __init__(self, container=None, username=None, tool_path=None,
                 **kwargs):
        super(Options, self).__init__(**kwargs)
        self.container = native(container)
        self.username = native(username)
        self.tool_path = native(tool_path) or self.default_tool
        if self.name is None and self.container:
            self.name = u'%s.%s' % (self.method,
                                    mitogen.core.to_text(self.container))

    def require(self, value, what):
        """Raise :class:`ValueError` unless `value` was given."""
        if not value:
            raise ValueError('%s needs %s' % (self.method, what))


class Connection(mitogen.parent.Connection):
    """Starts the container tool with the argv of
    :meth:`get_container_argv`, followed by the interpreter and its first
    stage."""
    options_class = Options

    def get_python_argv(self):
        return [mitogen.core.to_native(arg) for arg in
                self.options.python_path or self.options.default_python_path]

    def get_container_argv(self):
        """Return the tool's argv up to (not including) the interpreter."""
        raise NotImplementedError()

    def get_boot_command(self):
        return self.get_container_argv() + super(Connection,
                                                  self).get_boot_command()

    def _what(self):
        o = self.options
        return '%s container %r' % (o.method, o.container)

    def start_child(self, argv):
        try:
            return super(Connection, self).start_child(argv)
        except mitogen.core.StreamError as e:
            o = self.options
            raise mitogen.core.StreamError(
                '%s; set %s= to the path of the %s program'
                % (e, o.path_option, o.default_tool))

    def connect(self, context_id, name_hint=None):
        try:
            return super(Connection, self).connect(context_id, name_hint)
        except mitogen.parent.EofError as e:
            raise mitogen.parent.EofError(self._eof_text(e))

    def _eof_text(self, e):
        output = b''.join(self._output)
        code = self.proc.returncode if self.proc is not None else None
        python = self.get_python_argv()[0]
        if code in _NOT_RUNNABLE or (
                mitogen.core.to_text(python).encode('utf-8') in output
                and _NOT_FOUND.search(output)):
            return ('%s: no Python interpreter %r could be started in %s '
                    '(set python_path= to one the container has): %s'
                    % (self.options.method,
                       ' '.join(self.get_python_argv()), self._what(), e))
        return '%s: could not start a child in %s: %s' % (
            self.options.method, self._what(), e)
