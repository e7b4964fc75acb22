# Copyright the mitogen contributors. BSD-3-Clause.
"""
``python -m mitogen``: checks an installation and a chain of connections.

::

    python -m mitogen check                      # the installation only
    python -m mitogen check ssh:deploy@web1 sudo:root

Each argument after ``check`` is one hop, started through the previous one
(``via=``): ``METHOD[:TARGET][,KEY=VALUE...]``, where TARGET is
``[user@]host[:port]`` for ``ssh`` and ``paramiko``, the account for
``sudo``, ``su`` and ``doas``, and absent for ``local`` and ``fork``; any
other keyword argument of the method is given as ``KEY=VALUE``
(``python=`` is short for ``python_path=``). For every hop it prints the
time it took, the remote interpreter and its version or, on failure, what
the hop's programs wrote and the likely fix.

The module runs in children too (:func:`describe_interpreter`), so it is
written for Python 2.7 and 3.6+.
"""

__all__ = [
    'LIKELY_FIXES', 'Progress', 'UsageError', 'check_hops',
    'describe_interpreter', 'installation_report', 'likely_fix', 'main',
    'parse_hop',
]

import os
import platform
import socket
import sys
import textwrap
import threading
import time

import mitogen
import mitogen.core

#: Exit status of a check that found a problem.
EXIT_FAILED = 1
#: Exit status of a command line that could not be understood.
EXIT_USAGE = 2

#: Hop targets that are a user and a host, ``[user@]host[:port]``.
_HOST_METHODS = ('ssh', 'paramiko')
#: Hop targets that are an account on the previous hop.
_USER_METHODS = ('sudo', 'su', 'doas')

#: ``(text in the error, likely fix)``, most specific first; the texts are
#: those of the errors connection methods raise, and of the programs they
#: run. ``docs/troubleshooting.rst`` explains each.
LIKELY_FIXES = (
    ('Host key verification failed',
     'the host key is unknown or has changed: connect once with ssh to '
     'check and accept it, or pass check_host_keys=accept to accept new '
     'hosts'),
    ('Permission denied (publickey',
     'the SSH server refused every key offered: check the user name, that '
     'your key is loaded (ssh-add -l) or given (identity_file=), and that '
     'it is in ~/.ssh/authorized_keys on the host'),
    ('SSH password is incorrect',
     'the SSH server refused the password: check it and the user name'),
    ('password is required but none was given',
     'the program asked for a password: pass password=..., or allow the '
     'account in without one (sudoers NOPASSWD, an SSH key)'),
    ('password is incorrect',
     'the password was refused: check it (for sudo it is the password of '
     'the account sudo runs from, not of the target account)'),
    ('is not in the sudoers file',
     'the account may not use sudo: add it to sudoers on that host'),
    ('is not allowed to execute',
     'sudoers does not allow this account to run Python as that user'),
    ('Could not resolve hostname',
     'the host name does not resolve: check its spelling, DNS or '
     '/etc/hosts'),
    ('Connection refused',
     'nothing listens on that port: check the host, the port and that '
     'sshd runs'),
    ('No route to host',
     'the host cannot be reached from the previous hop: check the network '
     'path, or reach it through a bastion with another hop'),
    ('not found',
     'the target has no Python at the path tried: pass python=PATH (for '
     'example python=/usr/bin/python3) for this hop'),
    ('No such file or directory',
     'a program was not found: pass python=PATH for a Python that exists '
     'there, or the path of the login program (ssh_path=, sudo_path=)'),
    ('core protocol',
     'the two sides run mitogen versions that do not talk to each other: '
     'install matching versions of the distributions'),
    ('timed out',
     'the hop did not become ready in time: raise --timeout, and check '
     'that no prompt is left unanswered (a password, a host key)'),
    ('pip install',
     'install the distribution the message names'),
)


def likely_fix(text):
    """Return the likely fix for an error whose message is `text`, or
    None."""
    lowered = text.lower()
    for needle, fix in LIKELY_FIXES:
        if needle.lower() in lowered:
            return fix
    return None


def describe_interpreter():
    """Runs in the context being checked: what and where it is."""
    # Text keys and values: a 2.7 child's str would arrive as bytes.
    text = mitogen.core.to_text
    return {
        u'executable': text(sys.executable or ''),
        u'implementation': text(platform.python_implementation()),
        u'version': text(platform.python_version()),
        u'host': text(socket.gethostname()),
        u'pid': os.getpid(),
        u'uid': os.getuid(),
    }


class UsageError(Exception):
    """A hop argument that cannot be understood."""


def parse_hop(text):
    """Return ``(method, kwargs)`` for one hop argument,
    ``METHOD[:TARGET][,KEY=VALUE...]``."""
    cut = min(i for i in (text.find(':'), text.find(','), len(text))
              if i >= 0)
    method, rest = text[:cut], text[cut + 1:]
    if not method:
        raise UsageError('%r: a hop starts with a connection method' % (text,))
    items = [item for item in rest.split(',') if item] if rest else []
    kwargs = {}
    if items and '=' not in items[0]:
        target = items.pop(0)
        if method in _HOST_METHODS:
            user, at, host = target.rpartition('@')
            if at:
                kwargs['username'] = user
            host, colon, port = host.partition(':')
            kwargs['hostname'] = host
            if colon:
                if not port.isdigit():
                    raise UsageError('%r: the port must be a number' % (text,))
                kwargs['port'] = int(port)
        elif method in _USER_METHODS:
            kwargs['username'] = target
        else:
            raise UsageError('%r: give the options of %r as KEY=VALUE'
                             % (text, method))
    for item in items:
        key, eq, value = item.partition('=')
        if not eq or not key:
            raise UsageError('%r: %r is not KEY=VALUE' % (text, item))
        kwargs['python_path' if key == 'python' else key] = _value(value)
    return method, kwargs


def _value(text):
    # Options that are flags or counts arrive as text on a command line.
    if text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    if text.isdigit():
        return int(text)
    return text


class Progress(object):
    """Shows how long the current step has run: on a terminal a counter
    updated in place, elsewhere one line per step."""

    interval = 0.2

    def __init__(self, stream):
        self.stream = stream
        self.live = hasattr(stream, 'isatty') and stream.isatty()
        self._label = None
        self._started = None
        self._done = threading.Event()
        self._thread = None

    def start(self, label):
        self._label = label
        self._started = time.time()
        self._done.clear()
        if not self.live:
            self.stream.write('%s ...\n' % (label,))
            self.stream.flush()
            return
        self._thread = threading.Thread(target=self._tick,
                                        name='mitogen-progress')
        self._thread.daemon = True
        self._thread.start()

    def _tick(self):
        while not self._done.wait(self.interval):
            self.stream.write('\r%s ... %.1f s' % (
                self._label, time.time() - self._started))
            self.stream.flush()

    def stop(self):
        """Stop showing the step; return the seconds it took."""
        elapsed = time.time() - self._started
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.stream.write('\r\033[K')
            self.stream.flush()
        return elapsed


def installation_report():
    """Return ``(lines, problems)`` describing this project's installed
    distributions, the connection methods found and whether any of the
    package's files was changed since it was installed."""
    import mitogen.installation
    import mitogen.parent
    try:
        from importlib import metadata
    except ImportError:
        return ['no package metadata on this Python'], []
    lines = ['python: %s (%s)' % (sys.executable, platform.python_version()),
             'mitogen package: %s' % (', '.join(mitogen.__path__),)]
    problems = []
    for directory in mitogen.__path__:
        for version, path in mitogen.installation.foreign_metadata(
                os.path.dirname(os.path.abspath(directory))):
            problems.append('the distribution "mitogen" (%s) shares %s\n%s'
                            % (path, directory,
                               mitogen.installation.repair_text(version)))
    seen = set()
    for dist in sorted(metadata.distributions(),
                       key=lambda d: d.metadata['Name'] or ''):
        name = dist.metadata['Name'] or ''
        # A second copy further down sys.path is shadowed by the first.
        if not name.lower().startswith('mitogen-') or name in seen:
            continue
        seen.add(name)
        lines.append('%s %s' % (name, dist.version))
        problems.extend(_changed_files(dist))
    lines.append('connection methods: %s' % (
        ', '.join(mitogen.parent.transport_names()),))
    return lines, problems


def _changed_files(dist):
    # pip records each installed file's hash; a file another distribution
    # overwrote, or deleted when it was uninstalled, no longer matches.
    import base64
    import hashlib
    changed = []
    for entry in dist.files or ():
        if not entry.hash or not str(entry).startswith('mitogen/'):
            continue
        path = entry.locate()
        try:
            with open(str(path), 'rb') as f:
                digest = hashlib.new(entry.hash.mode, f.read()).digest()
        except (IOError, OSError):
            changed.append('%s: %s is missing' % (dist.metadata['Name'],
                                                  entry))
            continue
        encoded = base64.urlsafe_b64encode(digest).rstrip(b'=').decode()
        if encoded != entry.hash.value:
            changed.append('%s: %s was changed since it was installed'
                           % (dist.metadata['Name'], entry))
    if changed:
        changed.append('reinstall: %s -m pip install --force-reinstall '
                       '--no-deps %s' % (sys.executable,
                                         dist.metadata['Name']))
    return changed


def check_hops(router, hops, out, timeout=None):
    """Start each of `hops` (``(text, method, kwargs)``) through the one
    before, printing a line per hop to `out`; return True if all started."""
    progress = Progress(out)
    via = None
    for number, (text, method, kwargs) in enumerate(hops, 1):
        label = '[%d/%d] %s' % (number, len(hops), text)
        kwargs = dict(kwargs)
        if via is not None:
            kwargs['via'] = via
        if timeout is not None:
            kwargs.setdefault('connect_timeout', timeout)
        progress.start(label)
        try:
            context = router.connect(method, **kwargs)
            info = context.call(describe_interpreter)
        except Exception as e:
            elapsed = progress.stop()
            out.write('%s: FAILED after %.2f s\n' % (label, elapsed))
            out.write('    %s: %s\n' % (
                type(e).__name__, str(e).replace('\n', '\n    ')))
            fix = likely_fix(str(e))
            if fix:
                out.write(textwrap.fill(fix, 78,
                                        initial_indent='    likely fix: ',
                                        subsequent_indent='        ') + '\n')
            for rest in hops[number:]:
                out.write('[-/%d] %s: not tried\n' % (len(hops), rest[0]))
            out.flush()
            return False
        elapsed = progress.stop()
        out.write('%s: ok in %.2f s\n    %s %s at %s on %s (pid %d, uid %d),'
                  ' context %s\n' % (
                      label, elapsed, info['implementation'],
                      info['version'], info['executable'], info['host'],
                      info['pid'], info['uid'], context.name))
        out.flush()
        via = context
    return True


USAGE = '''usage: python -m mitogen check [--timeout SECONDS] [HOP ...]

Checks this installation, then starts each HOP through the one before and
reports, per hop, the time taken and the remote interpreter, or what went
wrong and the likely fix.

HOP is METHOD[:TARGET][,KEY=VALUE...], for example:
    ssh:deploy@web1:2222   sudo:root   su:postgres,password=...
    local,python=/usr/bin/python3   paramiko:web2
'''


def main(argv=None, out=None):
    """Entry point of ``python -m mitogen``; returns the exit status."""
    import mitogen.master
    import mitogen.utils
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    if not argv or argv[0] != 'check' or '-h' in argv or '--help' in argv:
        out.write(USAGE)
        return 0 if ('-h' in argv or '--help' in argv) else EXIT_USAGE
    argv.pop(0)
    timeout = None
    if argv[:1] == ['--timeout']:
        try:
            timeout = float(argv[1])
        except (IndexError, ValueError):
            out.write(USAGE)
            return EXIT_USAGE
        del argv[:2]
    try:
        hops = [(text,) + parse_hop(text) for text in argv]
    except UsageError as e:
        out.write('%s\n\n%s' % (e, USAGE))
        return EXIT_USAGE
    lines, problems = installation_report()
    for line in lines:
        out.write(line + '\n')
    for problem in problems:
        out.write('PROBLEM: %s\n' % (problem,))
    out.flush()
    if problems:
        return EXIT_FAILED
    if not hops:
        return 0
    mitogen.utils.log_to_file(level='ERROR')
    with mitogen.master.Router() as router:
        ok = check_hops(router, hops, out, timeout)
    return 0 if ok else EXIT_FAILED
