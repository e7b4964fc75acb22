# Copyright the mitogen contributors. BSD-3-Clause.
"""
The ``setns`` connection method: a child Python started like a local one,
but inside the namespaces and the root file system of a running container
(Docker, LXC, LXD or systemd-nspawn), entered with the ``setns(2)`` system
call between fork and exec. A container tool is run only to learn the PID of
the container's first process:

========== ================================================================
kind       how the PID is found
========== ================================================================
docker     ``docker inspect --format={{.State.Pid}} CONTAINER``
lxc        ``lxc-info --no-humanize --pid --name CONTAINER``
lxd        ``lxc info CONTAINER``, its ``PID:`` line
machinectl ``machinectl show --property=Leader CONTAINER``
========== ================================================================

The child then joins every namespace of that process that differs from this
one's (user, IPC, UTS, network, PID, cgroup, mount, in that order), makes
the process's root directory its own (``chroot``), takes the identity of
`username` from the container's ``/etc/passwd`` and ``/etc/group``, and
executes the interpreter found in the container's ``PATH``. As ``setns(2)``
moves only future children into a PID namespace, the process then forks:
the interpreter runs in the container's PID namespace, and the process the
master started waits for it and exits as it does.

This needs root (``CAP_SYS_ADMIN`` and ``CAP_SYS_CHROOT``) and Linux. It
uses ``os.setns()`` where Python has it (3.12+), else ``setns`` from the C
library through ``ctypes``. The environment of the child is a fresh one
(``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``): this machine's means
nothing inside the container.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

from __future__ import absolute_import

__all__ = ['CONTAINER_PATH', 'Connection', 'KINDS', 'NAMESPACES', 'Options']

import errno
import os
import re
import subprocess

import mitogen.container
import mitogen.core
import mitogen.parent

#: Namespaces joined, in order: the user namespace first, so that the
#: others, owned by it, may be joined with its privileges; the mount
#: namespace last, as after it the paths of /proc/<pid>/ns would be the
#: container's.
NAMESPACES = ('user', 'ipc', 'uts', 'net', 'pid', 'cgroup', 'mnt')

#: Accepted values of `kind`.
KINDS = ('docker', 'lxc', 'lxd', 'machinectl')

#: ``PATH`` inside the container.
CONTAINER_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'


class Options(mitogen.container.Options):
    """Options of ``router.setns()``, on top of those of
    :class:`mitogen.parent.Options`.

    :param str container: name or ID of the container.
    :param str kind: ``'docker'``, ``'lxc'``, ``'lxd'`` or
        ``'machinectl'``: the tool that finds the container's first
        process.
    :param str username: account to become inside the container, from its
        ``/etc/passwd``; ``root`` by default.
    :param str docker_path: the docker program (kind ``docker``),
        ``docker`` by default.
    :param str lxc_path: LXD's lxc program (kind ``lxd``), ``lxc`` by
        default.
    :param str lxc_info_path: the lxc-info program (kind ``lxc``),
        ``lxc-info`` by default.
    :param str machinectl_path: the machinectl program (kind
        ``machinectl``), ``machinectl`` by default.

    The context is named ``setns.<container>``.
    """
    method = u'setns'

    def __init__(self, container=None, kind=None, username=None,
                 docker_path=None, lxc_path=None, lxc_info_path=None,
                 machinectl_path=None, **kwargs):
        super(Options, self).__init__(container=container,
                                      username=username or 'root', **kwargs)
        self.require(self.container, 'a container')
        if kind not in KINDS:
            raise ValueError('setns kind must be one of %s, not %r'
                             % (', '.join(KINDS), kind))
        self.kind = mitogen.core.to_native(kind)
        self.docker_path = mitogen.container.native(docker_path) or 'docker'
        self.lxc_path = mitogen.container.native(lxc_path) or 'lxc'
        self.lxc_info_path = mitogen.container.native(lxc_info_path) or \
            'lxc-info'
        self.machinectl_path = mitogen.container.native(machinectl_path) or \
            'machinectl'

    def lookup(self):
        """Return `(argv, option)`: the command that finds the PID, and the
        name of the option that sets its program."""
        c = self.container
        if self.kind == 'docker':
            return ([self.docker_path, 'inspect',
                     '--format={{.State.Pid}}', c], 'docker_path')
        if self.kind == 'lxc':
            return ([self.lxc_info_path, '--no-humanize', '--pid',
                     '--name', c], 'lxc_info_path')
        if self.kind == 'lxd':
            return [self.lxc_path, 'info', c], 'lxc_path'
        return ([self.machinectl_path, 'show', '--property=Leader', c],
                'machinectl_path')


# What each tool prints: a bare number (docker, lxc-info -H), "PID: 123"
# (lxc info; "Pid: 123" in older LXD), "Leader=123" (machinectl).
_PID_PATTERNS = {
    'docker': re.compile(br'^\s*(\d+)\s*$'),
    'lxc': re.compile(br'^\s*(\d+)\s*$'),
    'lxd': re.compile(br'^\s*pid:\s*(\d+)\s*$', re.I | re.M),
    'machinectl': re.compile(br'^Leader=(\d+)\s*$', re.M),
}


def _read_db(root, name):
    # /etc/passwd or /etc/group of the container, as lists of fields.
    path = os.path.join(root, 'etc', name)
    try:
        with open(path, 'rb') as fp:
            lines = fp.read().decode('utf-8', 'replace').splitlines()
    except (IOError, OSError) as e:
        raise mitogen.core.StreamError('setns: cannot read the container\'s '
                                       '/etc/%s: %s' % (name, e))
    return [line.split(':') for line in lines
            if line and not line.startswith('#')]


def _identity(root, username):
    """`(uid, gid, groups, home, shell)` of `username` in the container
    whose root directory is `root`."""
    for entry in _read_db(root, 'passwd'):
        if len(entry) >= 7 and entry[0] == username:
            uid, gid = int(entry[2]), int(entry[3])
            break
    else:
        raise mitogen.core.StreamError(
            'setns: no user %r in the container\'s /etc/passwd' % (username,))
    groups = [gid]
    for fields in _read_db(root, 'group'):
        if len(fields) >= 4 and username in fields[3].split(','):
            groups.append(int(fields[2]))
    return uid, gid, groups, entry[5] or '/', entry[6] or '/bin/sh'


def _libc_setns():
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6',
                       use_errno=True)

    def setns(fd, nstype):
        if libc.setns(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    return setns


def _setns_function():
    setns = getattr(os, 'setns', None)
    if setns is not None:
        return setns
    try:
        return _libc_setns()
    except (ImportError, OSError, AttributeError) as e:
        raise mitogen.core.StreamError(
            'setns: this Python has neither os.setns nor a usable ctypes '
            '(%s); start the child from an interpreter that has one' % (e,))


class _Entry(object):
    # What the child does between fork and exec. Only system calls are made
    # there; a failure is written to stderr, where the parent reads it. The
    # namespace files are opened there too: Python 2's subprocess closes
    # inherited descriptors before it runs this.

    def __init__(self, setns, pid, names, uid, gid, groups):
        self.setns = setns
        self.proc_dir = '/proc/%d' % (pid,)
        self.names = names
        self.uid = uid
        self.gid = gid
        self.groups = groups

    def __call__(self):
        step = 'opening %s' % (self.proc_dir,)
        try:
            fds = [(name, os.open('%s/ns/%s' % (self.proc_dir, name),
                                  os.O_RDONLY))
                   for name in self.names]
            root_fd = os.open(self.proc_dir + '/root', os.O_RDONLY)
            for name, fd in fds:
                step = 'entering the %s namespace' % (name,)
                self.setns(fd, 0)
            step = 'changing root'
            os.fchdir(root_fd)
            os.chroot('.')
            step = 'changing identity'
            os.setgroups(self.groups)
            os.setgid(self.gid)
            os.setuid(self.uid)
            os.chdir('/')
            if 'pid' in self.names:
                step = 'forking into the PID namespace'
                self._fork()
        except BaseException as e:
            os.write(2, ('setns: %s failed: %s\n' % (step, e)).encode('utf-8'))
            os._exit(1)

    def _fork(self):
        # Joining a PID namespace moves only the children made afterwards
        # into it, and a process whose children would land in another PID
        # namespace than its own cannot start threads, which the core
        # needs. The interpreter therefore runs in a child made here; this
        # process only waits for it and exits as it did. Every descriptor
        # belongs to the interpreter alone: the connection, and the pipe
        # on which subprocess waits for the exec.
        pid = os.fork()
        if pid == 0:
            return
        os.closerange(0, os.sysconf('SC_OPEN_MAX'))
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except OSError as e:
                if e.args[0] != errno.EINTR:
                    os._exit(1)
        if os.WIFSIGNALED(status):
            os._exit(128 + os.WTERMSIG(status))
        os._exit(os.WEXITSTATUS(status))


class Connection(mitogen.container.Connection):
    """Starts the interpreter inside the container's namespaces."""
    options_class = Options
    name_prefix = u'setns'
    #: PID of the container's first process, found by :meth:`connect`.
    leader_pid = None

    def _what(self):
        return '%s container %r' % (self.options.kind, self.options.container)

    def get_container_argv(self):
        return []

    def get_leader_pid(self):
        """Run the kind's tool; return the PID of the container's first
        process."""
        o = self.options
        argv, option = o.lookup()
        try:
            proc = mitogen.parent.popen(
                args=argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, close_fds=True)
        except (IOError, OSError) as e:
            raise mitogen.core.StreamError(
                'setns: could not start %s: %s; set %s= to the path of '
                'the program' % (argv[0], e, option))
        output, _ = proc.communicate()
        match = _PID_PATTERNS[o.kind].search(output)
        if proc.returncode != 0 or not match or int(match.group(1)) <= 0:
            raise mitogen.core.StreamError(
                'setns: could not find the first process of %s: %s %s: %s'
                % (self._what(), ' '.join(argv),
                   mitogen.parent.returncode_to_str(proc.returncode),
                   mitogen.core.to_text(output).strip() or 'no output'))
        return int(match.group(1))

    def _namespaces(self, pid):
        # Joining a namespace the process is already in fails (EINVAL for
        # the user namespace): only those that differ are joined.
        names = []
        for name in NAMESPACES:
            theirs = '/proc/%d/ns/%s' % (pid, name)
            try:
                ino = os.stat(theirs).st_ino
            except OSError as e:
                if os.path.exists('/proc/self/ns/%s' % (name,)):
                    raise mitogen.core.StreamError(
                        'setns: cannot see the %s namespace of process %d '
                        'of %s: %s' % (name, pid, self._what(), e))
                continue
            if ino != os.stat('/proc/self/ns/%s' % (name,)).st_ino:
                names.append(name)
        return names

    def _prepare(self, pid):
        uid, gid, groups, home, shell = _identity('/proc/%d/root' % (pid,),
                                                  self.options.username)
        self._env = {
            'PATH': CONTAINER_PATH, 'HOME': home, 'SHELL': shell,
            'USER': self.options.username, 'LOGNAME': self.options.username,
        }
        return _Entry(_setns_function(), pid, self._namespaces(pid), uid, gid,
                      groups)

    def start_child(self, argv):
        proc, fd, self.stderr_fd, self.tty_fd = mitogen.parent.spawn(
            argv, preexec_fn=self._entry, env=self._env)
        return proc, fd

    def connect(self, context_id, name_hint=None):
        self.leader_pid = self.get_leader_pid()
        self._entry = self._prepare(self.leader_pid)
        return super(Connection, self).connect(context_id, name_hint)
