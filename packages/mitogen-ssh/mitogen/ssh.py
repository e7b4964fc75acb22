# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``ssh`` connection method: a child Python interpreter on another
machine, started through the OpenSSH client.

The master runs ``ssh [options] -- <host> '<python> -c <first stage>'``; the
remote login shell starts the interpreter, whose stdin and stdout are the
SSH channel. Nothing is installed on the target: the core and every module
arrive over that channel.

How ``ssh`` is started depends on whether it may have to type a password:

* Without `password`, ``ssh`` runs with ``BatchMode=yes`` and no terminal:
  it never prompts, so a refused key or an unknown host key ends it at once
  with its own message, which becomes the error.
* With `password`, ``ssh`` gets a pseudo-terminal as its controlling
  terminal and stderr (its stdin and stdout stay on the connection's
  socket). The first password prompt is answered; a second one,
  or ``Permission denied``, raises :class:`PasswordRefusedError`.

A login refused without a password given (no key accepted, or ``ssh``
asking for a password) raises :class:`PasswordRequiredError`; both are
:class:`PasswordError`, as in every method that logs in.

With ``via=``, an intermediate context runs this module: it arrives there
through the importer, so it is written for Python 2.7 and 3.6+.
"""

__all__ = [
    'Connection', 'HostKeyError', 'Options', 'PasswordError',
    'PasswordRefusedError', 'PasswordRequiredError', 'shell_quote',
]

import math
import os
import re
import termios

import mitogen.core
import mitogen.parent

#: Base of the two errors below; the same class as
#: :class:`mitogen.parent.PasswordError`: catch it for either.
PasswordError = mitogen.parent.PasswordError

#: Raised when no password was given and the server refused every other
#: way of logging in tried (``Permission denied (publickey)``); the same
#: class as :class:`mitogen.parent.PasswordRequiredError`.
PasswordRequiredError = mitogen.parent.PasswordRequiredError

#: Raised when the server refuses the password given; the same class as
#: :class:`mitogen.parent.PasswordRefusedError`.
PasswordRefusedError = mitogen.parent.PasswordRefusedError


@mitogen.parent.register_proxy_error
class HostKeyError(mitogen.core.StreamError):
    """``ssh`` refused the server's host key: with
    ``check_host_keys='enforce'`` the host is not in the known hosts, or with
    ``'enforce'`` or ``'accept'`` its key differs from the one recorded.
    Raised with its own type through ``via=`` too
    (:func:`mitogen.parent.register_proxy_error`)."""

#: Accepted values of `check_host_keys`, with the ``StrictHostKeyChecking``
#: setting each one gives ``ssh``.
HOST_KEY_POLICIES = {
    'enforce': 'yes',
    'accept': 'accept-new',
    'ignore': 'no',
}

#: Default ``ServerAliveCountMax`` and ``ServerAliveInterval``: a server
#: that answers no keepalive for 10 * 30 seconds is considered gone.
DEFAULT_KEEPALIVE_COUNT = 10
DEFAULT_KEEPALIVE_INTERVAL = 30

# OpenSSH's messages are not translated, so matching them is reliable.
# "user@host's password: ", "Password: ", "(user@host) Password: ".
PASSWORD_PROMPT = re.compile(br'password:\s*$', re.I)
# "Permission denied (publickey,password)." or "Permission denied, please
# try again."; not "bash: /x/python: Permission denied" from the remote shell.
PERMISSION_DENIED = re.compile(
    br'(?:^|\n|\r|: )Permission denied(?: \(|, please try again)')
# ssh ends every host key refusal (unknown host under strict checking,
# changed key) with this line.
HOST_KEY_FAILED = re.compile(br'Host key verification failed')

#: Quote one word for the remote login shell.
shell_quote = mitogen.parent.shell_quote


def _native_list(value, name):
    if value is None:
        return []
    if isinstance(value, (mitogen.core.UnicodeType, mitogen.core.BytesType)):
        raise TypeError('%s must be a list of arguments, not the string %r'
                        % (name, value))
    return [mitogen.core.to_native(v) for v in value]


class Options(mitogen.parent.Options):
    """Options of ``router.ssh()`` (:meth:`mitogen.parent.Router.connect`
    with ``'ssh'``); every option of :class:`mitogen.parent.Options` applies
    too. `python_path` is the interpreter on the target, default
    ``python``, looked up by the remote login shell.

    :param str hostname: host to connect to.
    :param str username: user to log in as; default: ``ssh`` picks it.
    :param str ssh_path: the ``ssh`` program, default ``ssh``.
    :param list ssh_args: more ``ssh`` arguments, placed before the ones
        made from the other options; as ``ssh`` keeps the first value it
        sees of each setting, ``-o`` settings given here win.
    :param int port: port to connect to; default: ``ssh`` picks it.
    :param str check_host_keys: ``'enforce'`` (default): the host's key
        must already be known and match; ``'accept'``: an unknown host's key
        is recorded, a changed key is refused; ``'ignore'``: no checking,
        nothing recorded.
    :param str password: password to type if ``ssh`` asks for one.
    :param str identity_file: private key file to authenticate with.
    :param bool identities_only: with `identity_file` or `password`, use
        only them: no agent keys, no default key files.
    :param bool compression: compress the connection (``ssh -C``).
    :param int ssh_debug_level: 0 to 3, the number of ``-v`` given to
        ``ssh``; its debug output is logged on the context's logger.
    :param bool keepalive_enabled: send server keepalives
        (``ServerAliveInterval``/``ServerAliveCountMax``).
    :param int keepalive_count: keepalives left unanswered before the server
        is considered gone, default 10.
    :param int keepalive_interval: seconds between keepalives, default 30.
    """
    #: Interpreter run on the target when `python_path` is not given.
    default_python_path = ['python']

    def __init__(self, hostname, username=None, ssh_path=None, ssh_args=None,
                 port=None, check_host_keys='enforce', password=None,
                 identity_file=None, identities_only=True, compression=True,
                 ssh_debug_level=None, keepalive_enabled=True,
                 keepalive_count=None, keepalive_interval=None, **kwargs):
        super(Options, self).__init__(**kwargs)
        if not hostname:
            raise ValueError('ssh needs a hostname')
        if check_host_keys not in HOST_KEY_POLICIES:
            raise ValueError('check_host_keys must be one of %s, not %r' % (
                ', '.join(sorted(HOST_KEY_POLICIES)), check_host_keys))
        if ssh_debug_level is not None and not 0 <= ssh_debug_level <= 3:
            raise ValueError('ssh_debug_level must be 0 to 3, not %r'
                             % (ssh_debug_level,))
        self.hostname = mitogen.core.to_native(hostname)
        self.username = username and mitogen.core.to_native(username)
        self.ssh_path = mitogen.core.to_native(ssh_path or 'ssh')
        self.ssh_args = _native_list(ssh_args, 'ssh_args')
        self.port = int(port) if port else None
        self.check_host_keys = mitogen.core.to_native(check_host_keys)
        self.password = password
        self.identity_file = identity_file and \
            mitogen.core.to_native(identity_file)
        self.identities_only = identities_only
        self.compression = compression
        self.ssh_debug_level = ssh_debug_level or 0
        self.keepalive_enabled = keepalive_enabled
        self.keepalive_count = int(keepalive_count or DEFAULT_KEEPALIVE_COUNT)
        self.keepalive_interval = int(keepalive_interval or
                                      DEFAULT_KEEPALIVE_INTERVAL)
        if self.name is None:
            self.name = u'ssh.' + mitogen.core.to_text(self.hostname)
            if self.port:
                self.name += u':%d' % (self.port,)


def _no_output_translation(tty):
    # No "\n" -> "\r\n" translation: ssh's messages arrive as written.
    attrs = termios.tcgetattr(tty)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(tty, termios.TCSANOW, attrs)


class Connection(mitogen.parent.Connection):
    """Starts ``ssh`` with the remote command that runs the first stage."""
    options_class = Options
    name_prefix = u'ssh'

    def __init__(self, options, router):
        super(Connection, self).__init__(options, router)
        self._seen = {}
        self._password_sent = False

    def get_python_argv(self):
        return [mitogen.core.to_native(arg) for arg in
                self.options.python_path or self.options.default_python_path]

    def get_ssh_argv(self):
        """Return the ``ssh`` argv up to and including the host name."""
        o = self.options
        argv = [o.ssh_path] + o.ssh_args
        if o.password is None:
            argv += ['-o', 'BatchMode=yes']
        argv += ['-o', 'StrictHostKeyChecking=' +
                 HOST_KEY_POLICIES[o.check_host_keys]]
        if o.check_host_keys == 'ignore':
            argv += ['-o', 'UserKnownHostsFile=/dev/null',
                     '-o', 'GlobalKnownHostsFile=/dev/null']
        # A little under connect_timeout: an unreachable host fails with
        # ssh's own explanation rather than with our deadline's.
        argv += ['-o', 'ConnectTimeout=%d'
                 % max(1, int(math.floor(o.connect_timeout * 0.9)))]
        if o.keepalive_enabled:
            argv += ['-o', 'ServerAliveInterval=%d' % (o.keepalive_interval,),
                     '-o', 'ServerAliveCountMax=%d' % (o.keepalive_count,)]
        if o.compression:
            argv.append('-C')
        if o.identity_file:
            argv += ['-i', o.identity_file]
        if o.identities_only and (o.identity_file or o.password is not None):
            argv += ['-o', 'IdentitiesOnly=yes']
        if o.port:
            argv += ['-p', str(o.port)]
        if o.username:
            argv += ['-l', o.username]
        if o.ssh_debug_level:
            argv.append('-' + 'v' * o.ssh_debug_level)
        return argv + ['--', o.hostname]

    def get_boot_command(self):
        remote = self.get_python_argv() + ['-c',
                                           mitogen.parent.stage1_command()]
        return self.get_ssh_argv() + [' '.join(shell_quote(a)
                                               for a in remote)]

    def start_child(self, argv):
        if self.options.password is None:
            return super(Connection, self).start_child(argv)
        # stderr is a pty that becomes ssh's controlling terminal, where it
        # prompts; stdin and stdout stay on the socket. ssh keeps the pty
        # open for its whole life, so its messages are read until it exits.
        proc, fd, _, master = mitogen.parent.spawn(
            argv, pty='stderr', tty_setup=_no_output_translation)
        self.tty_fd = master
        return proc, fd

    def _target(self):
        o = self.options
        return '%s%s%s' % (o.username + '@' if o.username else '',
                           o.hostname, ':%d' % o.port if o.port else '')

    def _auth_error(self):
        if self.options.password is None:
            return PasswordRequiredError(
                'SSH authentication to %s failed and no password was '
                'specified; %s' % (self._target(), self._fail_text()))
        return PasswordRefusedError('SSH password is incorrect for %s; %s'
                                    % (self._target(), self._fail_text()))

    def _host_key_error(self):
        return HostKeyError(
            'SSH host key verification failed for %s '
            '(check_host_keys=%r): the host is not known or its key has '
            'changed; %s' % (self._target(), self.options.check_host_keys,
                             self._fail_text()))

    def on_output(self, data, fd):
        if fd not in (self.stderr_fd, self.tty_fd):
            return
        seen = self._seen.get(fd, b'') + data
        self._seen[fd] = seen[-4096:]
        if HOST_KEY_FAILED.search(seen):
            raise self._host_key_error()
        if PERMISSION_DENIED.search(seen):
            raise self._auth_error()
        # There is a tty only when a password was given.
        if fd == self.tty_fd and PASSWORD_PROMPT.search(seen):
            if self._password_sent:
                raise self._auth_error()
            self._password_sent = True
            self._seen[fd] = b''
            password = self.options.password
            if not isinstance(password, mitogen.core.BytesType):
                password = mitogen.core.to_text(password).encode('utf-8')
            os.write(fd, password + b'\n')

    def connect(self, context_id, name_hint=None):
        try:
            return super(Connection, self).connect(context_id, name_hint)
        except mitogen.parent.EofError:
            # ssh exited, usually after explaining why on stderr; the
            # explanation may have been read only after the end of the
            # stream, so it is classified here too.
            output = b''.join(self._output)
            if HOST_KEY_FAILED.search(output):
                raise self._host_key_error()
            if PERMISSION_DENIED.search(output):
                raise self._auth_error()
            raise
