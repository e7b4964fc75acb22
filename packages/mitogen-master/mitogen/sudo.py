# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``sudo`` connection method: a child Python started through ``sudo -u
<username>`` on this machine (or, with ``via=``, on the machine of another
context).

sudo gets a pseudo-terminal as its controlling terminal, where it asks for
a password; the child's stdin and stdout stay on a socket pair (see
:mod:`mitogen.become`). sudo is told to print a prompt unique to the
connection (``-p``), so it is recognised whatever language sudo speaks.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

from __future__ import absolute_import

__all__ = [
    'Connection', 'Options', 'PasswordError', 'PasswordRefusedError',
    'PasswordRequiredError', 'parse_sudo_args',
]

import binascii
import getopt
import os
import shlex

import mitogen.core
import mitogen.become

#: Base of the two errors below; the same class as
#: :class:`mitogen.parent.PasswordError`: catch it for either.
PasswordError = mitogen.become.PasswordError

#: Raised when sudo asks for a password and none was given; the same class
#: as :class:`mitogen.parent.PasswordRequiredError`.
PasswordRequiredError = mitogen.become.PasswordRequiredError

#: Raised when sudo refuses the password given; the same class as
#: :class:`mitogen.parent.PasswordRefusedError`.
PasswordRefusedError = mitogen.become.PasswordRefusedError

# sudo options that sudo_args may hold, and the Options attribute each
# sets. -n and -S are accepted because callers (Ansible's become flags)
# pass them; the password is always typed on the pty, so they change
# nothing.
_SHORT_OPTS = 'u:EHir:t:nS'
_LONG_OPTS = ['user=', 'preserve-env', 'set-home', 'login', 'role=',
              'type=', 'non-interactive', 'stdin']


def parse_sudo_args(args):
    """Parse `args` (a list, or a string split as a shell would) as ``sudo``
    options; return a dict of :class:`Options` attributes they set.

    :raises mitogen.core.StreamError: an option this method does not
        support, or an argument that is not an option."""
    if isinstance(args, (mitogen.core.BytesType, mitogen.core.UnicodeType)):
        args = shlex.split(mitogen.core.to_native(args))
    args = [mitogen.core.to_native(a) for a in args]
    try:
        opts, rest = getopt.getopt(args, _SHORT_OPTS, _LONG_OPTS)
    except getopt.GetoptError as e:
        raise mitogen.core.StreamError('unsupported sudo option in '
                                       'sudo_args %r: %s' % (args, e))
    if rest:
        raise mitogen.core.StreamError('sudo_args may hold only options; '
                                       'got %r' % (rest,))
    found = {}
    for opt, value in opts:
        if opt in ('-u', '--user'):
            found['username'] = value
        elif opt in ('-E', '--preserve-env'):
            found['preserve_env'] = True
        elif opt in ('-H', '--set-home'):
            found['set_home'] = True
        elif opt in ('-i', '--login'):
            found['login'] = True
        elif opt in ('-r', '--role'):
            found['selinux_role'] = value
        elif opt in ('-t', '--type'):
            found['selinux_type'] = value
    return found


def _pick(explicit, parsed, default):
    if explicit is not None:
        return explicit
    if parsed is not None:
        return parsed
    return default


class Options(mitogen.become.Options):
    """Options of :meth:`Router.sudo <mitogen.parent.Router.connect>`, on top
    of those of :class:`mitogen.parent.Options`.

    :param str username: account to run as (``sudo -u``); ``root`` by
        default.
    :param str sudo_path: the sudo program; ``sudo`` (searched in ``PATH``)
        by default.
    :param str password: password to type if sudo asks for one (the
        invoking account's, in sudo's usual configuration).
        :class:`~mitogen.parent.PasswordRequiredError` if sudo asks and
        none was given, :class:`~mitogen.parent.PasswordRefusedError` if
        it refuses it.
    :param bool preserve_env: keep the invoking environment (``-E``).
    :param bool set_home: set ``HOME`` to the target account's (``-H``).
    :param bool login: run through the target's login shell (``-i``).
    :param str selinux_role: SELinux role (``-r``).
    :param str selinux_type: SELinux type (``-t``).
    :param sudo_args: sudo options, as a list or a string, parsed into the
        options above (``-u``, ``-E``, ``-H``, ``-i``, ``-r``, ``-t``, and
        ``-n``/``-S`` which change nothing); an explicit keyword argument
        wins over sudo_args. Anything else raises
        :class:`mitogen.core.StreamError`.

    The context is named ``sudo.<username>``.
    """
    name_prefix = u'sudo'
    sudo_path = 'sudo'
    preserve_env = False
    set_home = False
    login = False
    selinux_role = None
    selinux_type = None

    def __init__(self, username=None, sudo_path=None, password=None,
                 preserve_env=None, set_home=None, sudo_args=None,
                 login=None, selinux_role=None, selinux_type=None, **kwargs):
        parsed = parse_sudo_args(sudo_args or [])
        super(Options, self).__init__(
            username=_pick(username, parsed.get('username'), None),
            password=password, **kwargs)
        if sudo_path:
            self.sudo_path = sudo_path
        for name, value in (('preserve_env', preserve_env),
                            ('set_home', set_home), ('login', login),
                            ('selinux_role', selinux_role),
                            ('selinux_type', selinux_type)):
            setattr(self, name, _pick(value, parsed.get(name),
                                      getattr(self, name)))


class Connection(mitogen.become.Connection):
    """Starts ``sudo -u <username> -- python -c <first stage>``."""
    options_class = Options
    name_prefix = u'sudo'
    program = u'sudo'
    hybrid = True
    # The prompt is ours and unique: no need to wait for the line's end.
    prompt_settle = 0

    def __init__(self, options, router):
        super(Connection, self).__init__(options, router)
        # No '%': sudo expands %-escapes in its prompt.
        self.sudo_prompt = u'mitogen-sudo-password-%s:' % (
            binascii.hexlify(os.urandom(8)).decode('ascii'),)

    def get_boot_command(self):
        opts = self.options
        argv = [opts.sudo_path, '-u', mitogen.core.to_native(opts.username),
                '-p', mitogen.core.to_native(self.sudo_prompt + u' ')]
        if opts.preserve_env:
            argv.append('-E')
        if opts.set_home:
            argv.append('-H')
        if opts.login:
            argv.append('-i')
        if opts.selinux_role:
            argv += ['-r', opts.selinux_role]
        if opts.selinux_type:
            argv += ['-t', opts.selinux_type]
        return argv + ['--'] + super(Connection, self).get_boot_command()

    def is_prompt(self, line):
        # Only our own prompt: sudo's other output (a lecture, warnings
        # about the host name) may end in a colon too.
        return self.sudo_prompt in line

    def password_required_msg(self, line):
        return u'sudo password is required but none was given'

    def password_incorrect_msg(self, detail):
        return u'sudo password is incorrect (sudo asked for it again)'
