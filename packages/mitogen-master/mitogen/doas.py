# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``doas`` connection method: a child Python started through ``doas -u
<username>`` on this machine (or, with ``via=``, on the machine of another
context).

doas asks for the password on its terminal, so, as for sudo, the child's
stdin and stdout stay on a socket pair and a pseudo-terminal is only its
controlling terminal (see :mod:`mitogen.become`). doas has no option to
choose its prompt; it is recognised by its shape
(:func:`mitogen.become.looks_like_prompt`).

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

#: Raised when doas asks for a password and none was given; the same class
#: as :class:`mitogen.parent.PasswordRequiredError`.
PasswordRequiredError = mitogen.become.PasswordRequiredError

#: Raised when doas refuses the password given; the same class as
#: :class:`mitogen.parent.PasswordRefusedError`.
PasswordRefusedError = mitogen.become.PasswordRefusedError


class Options(mitogen.become.Options):
    """Options of :meth:`Router.doas <mitogen.parent.Router.connect>`, on
    top of those of :class:`mitogen.parent.Options`.

    :param str username: account to run as (``doas -u``); ``root`` by
        default.
    :param str password: password to type if doas asks for one.
        :class:`~mitogen.parent.PasswordRequiredError` if doas asks and
        none was given, :class:`~mitogen.parent.PasswordRefusedError` if
        it refuses it.
    :param str doas_path: the doas program; ``doas`` (searched in
        ``PATH``) by default.
    :param password_prompt: extra text marking doas's password prompt
        (matched case-insensitively); prompts ending in a colon are
        recognised without it.
    :param incorrect_prompts: texts meaning the password was refused;
        ``doas: authentication failed`` by default.

    The context is named ``doas.<username>``.
    """
    name_prefix = u'doas'
    default_incorrect_prompts = (u'doas: authentication failed',)
    doas_path = 'doas'

    def __init__(self, username=None, password=None, doas_path=None,
                 password_prompt=None, incorrect_prompts=None, **kwargs):
        super(Options, self).__init__(
            username=username, password=password,
            password_prompt=password_prompt,
            incorrect_prompts=incorrect_prompts, **kwargs)
        if doas_path:
            self.doas_path = doas_path


class Connection(mitogen.become.Connection):
    """Starts ``doas -u <username> -- python -c <first stage>``."""
    options_class = Options
    name_prefix = u'doas'
    program = u'doas'
    hybrid = True

    def get_boot_command(self):
        return [self.options.doas_path, '-u',
                mitogen.core.to_native(self.options.username),
                '--'] + super(Connection, self).get_boot_command()
