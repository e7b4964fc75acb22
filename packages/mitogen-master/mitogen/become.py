# Copyright the mitogen contributors. BSD-3-Clause.
"""
What the connection methods that change user on this machine (``sudo``,
``su``, ``doas``) share: starting the login program on a pseudo-terminal,
recognising its password prompt whatever the language it speaks, typing
the password once, and telling a refused password from other failures.

Two ways of giving the child a terminal:

hybrid (sudo, doas)
    The child's stdin and stdout are a socket pair, as for every other
    method; the pty is only its controlling terminal and its stderr. These
    programs read the password from ``/dev/tty``, so the stream never passes
    through a terminal line discipline.
full pty (su)
    stdin, stdout and stderr are the pty: ``su`` reads the password from
    stdin. The pty is put in raw mode before the program starts, so the
    binary core and every later message pass through unchanged.

Prompts. sudo is told to print a prompt of our own (``sudo -p``), unique per
connection. su and doas print their own: su's comes from PAM, in the
target's language (PAM translates ``Password:`` into some 80 languages).
What every translation shares is that it is an unterminated line ending in
a colon (ASCII, full-width, or Khmer), written before the child's Python
starts. That is
what :func:`looks_like_prompt` recognises, with two guards against the
program's own diagnostics, which are often written in pieces
(``"su: "``, ``"cannot open session"``, ``": "``, ...): a line starting with the
program's name and a colon is never a prompt, and a line is answered only
once no more output follows within :attr:`Connection.prompt_settle`
seconds.

The password is typed once. A second prompt, one of the method's
"incorrect" messages, or (su) an exit with the status su uses for a failed
authentication, means it was refused:
:class:`~mitogen.parent.PasswordRefusedError` at once, never a wait for the
deadline. A prompt when no password was given raises
:class:`~mitogen.parent.PasswordRequiredError`. Both are
:class:`~mitogen.parent.PasswordError`.

This module runs in children too (a sudo through an intermediate context),
so it is written for Python 2.7 and 3.6+.
"""

from __future__ import absolute_import

__all__ = ['Connection', 'Options', 'looks_like_prompt', 'set_raw']

import errno
import os
import select
import termios

import mitogen.core
import mitogen.parent
import mitogen.installation

# This module exists only in this project: refuse to run on upstream
# Mitogen's core, installed over ours.
mitogen.installation.require_this_project()

#: Base of the two errors below: :class:`mitogen.parent.PasswordError`.
PasswordError = mitogen.parent.PasswordError

#: Raised when the program asks for a password and none was given:
#: :class:`mitogen.parent.PasswordRequiredError`.
PasswordRequiredError = mitogen.parent.PasswordRequiredError

#: Raised when the program refuses the password given:
#: :class:`mitogen.parent.PasswordRefusedError`.
PasswordRefusedError = mitogen.parent.PasswordRefusedError

#: Characters that end a password prompt: ASCII colon, full-width colon
#: (Chinese, Japanese), Khmer camnuc pii kuuh, and the small and vertical
#: presentation forms of the colon.
PROMPT_ENDINGS = (u':', u'\uff1a', u'\u17d6', u'\ufe55', u'\ufe13')


def looks_like_prompt(text):
    """Return True if `text`, output of a login program that does not end a
    line, asks for something to be typed: its last line, stripped of
    whitespace, ends with a colon in any script's form. `text` may be bytes
    (decoded as UTF-8) or text."""
    if isinstance(text, mitogen.core.BytesType):
        text = text.decode('utf-8', 'replace')
    # A carriage return starts the line again (doas prints "\rdoas (...)").
    line = text.replace(u'\r', u'\n').rsplit(u'\n', 1)[-1].strip()
    return bool(line) and line.endswith(PROMPT_ENDINGS)


def set_raw(fd):
    """Put the terminal `fd` in raw mode (as cfmakeraw(3) does): no line
    editing, echo, signal characters, flow control or newline
    translation, 8-bit clean."""
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK |
                  termios.ISTRIP | termios.INLCR | termios.IGNCR |
                  termios.ICRNL | termios.IXON | termios.IXOFF)
    attrs[1] &= ~termios.OPOST
    attrs[2] &= ~(termios.CSIZE | termios.PARENB)
    attrs[2] |= termios.CS8
    attrs[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON |
                  termios.ISIG | termios.IEXTEN)
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _disable_echo(fd):
    # A password typed where no program waits for it must not come back
    # as output (and end up in a log).
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~(termios.ECHO | termios.ECHONL)
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _password_error(cls, msg):
    # A native string: str() of the error must work on Python 2 too,
    # whatever language the prompt quoted in it is in.
    return cls(mitogen.core.to_native(msg))


def _as_text(value):
    if isinstance(value, mitogen.core.BytesType):
        return value.decode('utf-8', 'replace')
    return value


class Options(mitogen.parent.Options):
    """Options shared by the methods of this module.

    :param str username: account to become; ``root`` by default.
    :param str password: password to type if the program asks for one.
    :param password_prompt: text (str or bytes) that marks a password
        prompt, matched case-insensitively, for prompts that do not end
        with a colon; colon-terminated prompts are recognised without it.
    :param incorrect_prompts: texts (str or bytes) meaning the password was
        refused, matched case-insensitively in the output that follows it.
    """
    #: Default of :attr:`incorrect_prompts`.
    default_incorrect_prompts = ()
    #: Prefix of the context name, ``<prefix>.<username>``.
    name_prefix = u'become'

    def __init__(self, username=None, password=None, password_prompt=None,
                 incorrect_prompts=None, **kwargs):
        super(Options, self).__init__(**kwargs)
        self.username = mitogen.core.to_text(username or u'root')
        self.password = password
        self.password_prompt = _as_text(password_prompt)
        if incorrect_prompts is None:
            incorrect_prompts = self.default_incorrect_prompts
        elif isinstance(incorrect_prompts, (mitogen.core.BytesType,
                                            mitogen.core.UnicodeType)):
            incorrect_prompts = [incorrect_prompts]
        self.incorrect_prompts = [_as_text(p) for p in incorrect_prompts]
        if self.name is None:
            self.name = u'%s.%s' % (self.name_prefix, self.username)


class Connection(mitogen.parent.Connection):
    """Base of the sudo, su and doas methods: spawns the program on a pty
    (:attr:`hybrid` or full-pty mode) and answers its password prompt in
    :meth:`~mitogen.parent.Connection.on_output`."""

    #: True: stdio on a socket pair, the pty as controlling terminal and
    #: stderr; False: stdio on the pty, in raw mode.
    hybrid = True
    #: Name of the program in error messages.
    program = u'become'
    #: Exit status with which the program reports a failed authentication,
    #: when it has one of its own (None: exiting proves nothing).
    refused_status = None
    #: Seconds a line that looks like a prompt must stay unfinished before
    #: it is answered: diagnostics are often written in pieces
    #: ("su: ", "cannot open session", ": ", ...).
    prompt_settle = 0.05

    def __init__(self, options, router):
        super(Connection, self).__init__(options, router)
        self._reset_prompts()

    def _reset_prompts(self):
        self._stream_fd = None
        self._diagnostic_prefix = None
        self._stream_tail = b''
        self._tty_text = b''
        self._scan_from = 0
        self._answered = 0
        self._booted = False

    # Spawning.

    def start_child(self, argv):
        # The program's own messages start with its name and a colon.
        self._diagnostic_prefix = u'%s:' % (
            mitogen.core.to_text(os.path.basename(argv[0])).lower(),)
        proc, fd, _, master = mitogen.parent.spawn(
            argv, pty='stderr' if self.hybrid else 'stdio',
            tty_setup=_disable_echo if self.hybrid else set_raw)
        self.tty_fd = master
        self._stream_fd = fd
        return proc, fd

    # Prompts.

    def is_prompt(self, line):
        """Return True if `line` (text), the unterminated last line the
        program wrote to the terminal, asks for the password."""
        prompt = self.options.password_prompt
        if prompt and prompt.lower() in line.lower():
            return True
        if self._diagnostic_prefix and line.strip().lower().startswith(
                self._diagnostic_prefix):
            return False
        return looks_like_prompt(line)

    def password_required_msg(self, line):
        """Text of the error raised when the program prompted with `line`
        and no password was given."""
        return u'%s password is required but none was given (it asked: %s)' % (
            self.program, line.strip())

    def password_incorrect_msg(self, detail):
        """Text of the error raised when the password was refused;
        `detail` tells how that was seen. Never holds the password."""
        return u'%s password is incorrect (%s)' % (self.program, detail)

    def _refused(self, detail):
        return _password_error(PasswordRefusedError,
                               self.password_incorrect_msg(detail))

    def on_output(self, data, fd):
        if self._booted:
            return
        if fd == self._stream_fd:
            self._stream_tail = (self._stream_tail + data)[-64:]
            if b'MITO000' in self._stream_tail:
                # The child's Python runs: what follows is not the login
                # program's any more.
                self._booted = True
                return
        if fd != self.tty_fd:
            return
        self._tty_text += data
        new = self._tty_text[self._scan_from:].decode('utf-8', 'replace')
        if self._answered:
            said = self._incorrect_prompt_in(new)
            if said is not None:
                raise self._refused(u'it said: %s' % (said,))
        line = new.replace(u'\r', u'\n').rsplit(u'\n', 1)[-1]
        if not self.is_prompt(line) or self._more_output_soon():
            return
        self._scan_from = len(self._tty_text)
        if self._answered:
            raise self._refused(u'it asked again: %s' % (line.strip(),))
        if self.options.password is None:
            raise _password_error(PasswordRequiredError,
                                  self.password_required_msg(line))
        self._type_password()

    def _incorrect_prompt_in(self, text):
        lowered = text.lower()
        for said in self.options.incorrect_prompts:
            if said.lower() in lowered:
                return said
        return None

    def _more_output_soon(self):
        # More output is read, and the line judged again, by the caller's
        # loop.
        if not self.prompt_settle:
            return False
        while True:
            try:
                rfds, _, _ = select.select([self.tty_fd], [], [],
                                           self.prompt_settle)
                return bool(rfds)
            except (select.error, OSError) as e:
                if e.args[0] != errno.EINTR:
                    raise

    def _type_password(self):
        password = self.options.password
        if not isinstance(password, mitogen.core.BytesType):
            password = password.encode('utf-8')
        view = password + b'\n'
        while view:
            try:
                n = os.write(self.tty_fd, view)
            except OSError as e:
                if e.args[0] in (errno.EAGAIN, errno.EINTR):
                    continue
                raise
            view = view[n:]
        self._answered += 1

    def connect(self, context_id, name_hint=None):
        self._reset_prompts()
        try:
            return super(Connection, self).connect(context_id, name_hint)
        except mitogen.parent.EofError as e:
            if not self._answered or self._booted:
                raise
            # The program may have ended before its last words were seen
            # by on_output(); the error collected them.
            said = self._incorrect_prompt_in(
                b''.join(self._output).decode('utf-8', 'replace'))
            if said is not None:
                raise self._refused(u'it said: %s' % (said,))
            if (self.refused_status is None or self.proc is None or
                    self.proc.returncode != self.refused_status):
                raise
            raise self._refused(u'%s exited with status %d: %s' % (
                self.program, self.refused_status,
                mitogen.core.to_text(str(e))))
