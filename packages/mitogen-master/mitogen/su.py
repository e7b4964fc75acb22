# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``su`` connection method: a child Python started through ``su
<username> -c '<python command>'`` on this machine (or, with ``via=``, on
the machine of another context).

su reads the password from its stdin, so the child runs with all of its
stdio on a pseudo-terminal in raw mode (see :mod:`mitogen.become`). Its
prompt comes from PAM in the target's language and is recognised by its
shape (:func:`mitogen.become.looks_like_prompt`); a refused password is
told by su's messages or by su exiting with status 1 before the child's
Python started, in any language.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

from __future__ import absolute_import

__all__ = [
    'Connection', 'Options', 'PasswordError', 'PasswordRefusedError',
    'PasswordRequiredError',
]

import mitogen.core
import mitogen.become

#: Base of the two errors below; the same class as
#: :class:`mitogen.parent.PasswordError`: catch it for either.
PasswordError = mitogen.become.PasswordError

#: Raised when su asks for a password and none was given; the same class
#: as :class:`mitogen.parent.PasswordRequiredError`.
PasswordRequiredError = mitogen.become.PasswordRequiredError

#: Raised when su refuses the password given; the same class as
#: :class:`mitogen.parent.PasswordRefusedError`.
PasswordRefusedError = mitogen.become.PasswordRefusedError


class Options(mitogen.become.Options):
    """Options of :meth:`Router.su <mitogen.parent.Router.connect>`, on top
    of those of :class:`mitogen.parent.Options`.

    :param str username: account to become; ``root`` by default.
    :param str password: the target account's password, typed if su asks.
        :class:`~mitogen.parent.PasswordRequiredError` if su asks and
        none was given, :class:`~mitogen.parent.PasswordRefusedError` if
        it refuses it.
    :param str su_path: the su program; ``su`` (searched in ``PATH``) by
        default.
    :param password_prompt: extra text marking su's password prompt
        (matched case-insensitively); prompts ending in a colon are
        recognised without it, in any language.
    :param incorrect_prompts: texts meaning the password was refused;
        ``su: sorry`` and ``su: authentication failure`` by default.

    The command runs through the target account's shell, quoted for a
    POSIX shell. The context is named ``su.<username>``.
    """
    name_prefix = u'su'
    default_incorrect_prompts = (u'su: sorry', u'su: authentication failure')
    su_path = 'su'

    def __init__(self, username=None, password=None, su_path=None,
                 password_prompt=None, incorrect_prompts=None, **kwargs):
        super(Options, self).__init__(
            username=username, password=password,
            password_prompt=password_prompt,
            incorrect_prompts=incorrect_prompts, **kwargs)
        if su_path:
            self.su_path = su_path


class Connection(mitogen.become.Connection):
    """Starts ``su <username> -c '<python -c first stage>'`` on a pty."""
    options_class = Options
    name_prefix = u'su'
    program = u'su'
    hybrid = False
    # su exits 1 when authentication fails; a command it could not run
    # makes the shell exit 126 or 127.
    refused_status = 1

    def get_boot_command(self):
        command = ' '.join(
            mitogen.parent.shell_quote(mitogen.core.to_native(arg))
            for arg in super(Connection, self).get_boot_command())
        return [self.options.su_path,
                mitogen.core.to_native(self.options.username),
                '-c', command]
