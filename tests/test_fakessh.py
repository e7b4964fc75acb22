"""
Specification of :mod:`mitogen.fakessh`: ``run(dest, router, args)`` runs a
local command whose ``ssh`` reaches the context `dest` over the existing
tree. The remote command's stdin, stdout and stderr are carried byte for
byte with end of file; its exit status becomes the fake ssh's, with the
statuses real ssh gives for a signal (255, silently) and for a lost
connection (255); real rsync, scp and git work through it, to a context
reached through sudo and through ssh -> sudo; bad input gives clear errors
and leaves no process behind.

Most tests write the streams to files through ``sh -c 'ssh ... < in > out'``
because :func:`mitogen.fakessh.run` gives the local command the caller's own
stdio.
"""
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import interpreters
import mitogen.core
import mitogen.fakessh
import mitogen.master

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, 'support', 'fakessh_driver.py')

#: No single run() of these tests may take longer than this.
TIMEOUT = 120

#: Every byte value, several times over, in an order that is not sorted.
ALL_BYTES = bytes(bytearray(range(256))) * 64 + bytes(
    bytearray(reversed(range(256)))) * 64


def run(ctx, router, args):
    return mitogen.fakessh.run(ctx, router, args,
                               deadline=time.time() + TIMEOUT)


def sh(ctx, router, script):
    return run(ctx, router, ['sh', '-c', script])


@pytest.fixture(scope='module')
def router():
    with mitogen.master.Router() as router:
        yield router


@pytest.fixture(scope='module')
def ctx(router):
    return router.local(python_path=sys.executable)


@pytest.fixture
def fresh(router):
    """A context of its own, for tests that end it."""
    ctx = router.local(python_path=sys.executable)
    yield ctx
    ctx.shutdown(wait=True)


@pytest.fixture
def tmp(tmp_path):
    return str(tmp_path)


def write(path, data):
    with open(path, 'wb') as f:
        f.write(data)


def read(path):
    with open(path, 'rb') as f:
        return f.read()


# -- streams ---------------------------------------------------------------

def test_stdin_and_stdout_carry_every_byte_value(ctx, router, tmp):
    write(tmp + '/in', ALL_BYTES)
    assert sh(ctx, router, 'ssh host cat < %s/in > %s/out' % (tmp, tmp)) == 0
    assert read(tmp + '/out') == ALL_BYTES


def test_stderr_carries_every_byte_value(ctx, router, tmp):
    write(tmp + '/in', ALL_BYTES)
    assert sh(ctx, router, "ssh host 'cat >&2' < %s/in > %s/out 2> %s/err"
              % (tmp, tmp, tmp)) == 0
    assert read(tmp + '/err') == ALL_BYTES
    assert read(tmp + '/out') == b''


def test_large_streams_round_trip_both_ways(ctx, router, tmp):
    data = os.urandom(8 << 20)
    write(tmp + '/in', data)
    # 8 MiB in, 8 MiB back on stdout and, in parallel, on stderr.
    assert sh(ctx, router, "ssh host 'tee /dev/stderr' < %s/in > %s/out "
              "2> %s/err" % (tmp, tmp, tmp)) == 0
    assert read(tmp + '/out') == data
    assert read(tmp + '/err') == data


def test_end_of_stdin_reaches_the_remote_command(ctx, router, tmp):
    write(tmp + '/in', ALL_BYTES)
    # wc only prints once its stdin ends.
    assert sh(ctx, router, "ssh host 'wc -c' < %s/in > %s/out"
              % (tmp, tmp)) == 0
    assert int(read(tmp + '/out')) == len(ALL_BYTES)


def test_end_of_remote_stdout_reaches_the_local_reader(ctx, router, tmp):
    report = tmp + '/report.json'
    assert run(ctx, router, [sys.executable, DRIVER, report,
                             'stdout-eof-first']) == 0
    with open(report) as f:
        result = json.load(f)
    assert result == {'out': 'first\n', 'ran_after_eof': True, 'status': 0}


def test_remote_command_runs_in_the_home_directory(ctx, router, tmp):
    assert sh(ctx, router, 'ssh host pwd > %s/out' % (tmp,)) == 0
    assert read(tmp + '/out').decode().strip() == os.path.expanduser('~')


def test_ssh_options_and_host_are_ignored(ctx, router, tmp):
    assert sh(ctx, router, "ssh -x -p 2222 -o BatchMode=yes -lroot "
              "-i /nonexistent -- some.host echo a b > %s/out" % (tmp,)) == 0
    assert read(tmp + '/out') == b'a b\n'


@pytest.mark.parametrize('args, expected', [
    ([b'h', b'ls'], (b'ls', False, False)),
    ([b'-p', b'22', b'-o', b'A=b', b'h', b'ls', b'-l'],
     (b'ls -l', False, False)),
    ([b'-oA=b', b'-lroot', b'-x', b'h', b'echo', b"'a b'"],
     (b"echo 'a b'", False, False)),
    ([b'-xs', b'--', b'h', b'sftp'], (b'sftp', True, False)),
    ([b'-n', b'-T', b'h', b'true'], (b'true', False, True)),
    ([b'-46Ax', b'-Fcfg', b'h', b'-p', b'x'], (b'-p x', False, False)),
])
def test_parse_ssh_args_finds_the_remote_command(args, expected):
    assert mitogen.fakessh.parse_ssh_args(args) == expected


@pytest.mark.parametrize('args', [[], [b'-p', b'22'], [b'-v', b'host']])
def test_parse_ssh_args_refuses_a_missing_host_or_command(args):
    with pytest.raises(ValueError):
        mitogen.fakessh.parse_ssh_args(args)


def test_missing_command_is_an_error_with_status_255(ctx, router, tmp):
    assert sh(ctx, router, 'ssh host 2> %s/err' % (tmp,)) == 255
    assert b'no remote command given' in read(tmp + '/err')


@pytest.mark.parametrize('interpreter', interpreters.params(), indirect=True)
def test_destination_on_every_interpreter(router, interpreter, tmp):
    ctx = router.local(python_path=interpreter.path)
    try:
        write(tmp + '/in', ALL_BYTES)
        assert sh(ctx, router, "ssh host 'cat; echo done >&2; exit 7' "
                  "< %s/in > %s/out 2> %s/err" % (tmp, tmp, tmp)) == 7
        assert read(tmp + '/out') == ALL_BYTES
        assert read(tmp + '/err') == b'done\n'
    finally:
        ctx.shutdown(wait=True)


# -- exit status -----------------------------------------------------------

@pytest.mark.parametrize('status', [0, 1, 3, 255])
def test_remote_exit_status_is_the_ssh_exit_status(ctx, router, status):
    assert run(ctx, router, ['ssh', 'host', 'exit %d' % status]) == status


@pytest.mark.parametrize('signum', [signal.SIGKILL, signal.SIGTERM])
def test_remote_killed_by_signal_gives_255_silently_like_ssh(ctx, router,
                                                             tmp, signum):
    # Checked against OpenSSH 9.2: ssh exits 255 and prints nothing.
    assert sh(ctx, router, "ssh host 'kill -%d $$' 2> %s/err"
              % (signum, tmp)) == 255
    assert read(tmp + '/err') == b''


def test_missing_remote_command_gives_127_and_the_shell_message(ctx, router,
                                                                tmp):
    assert sh(ctx, router, 'ssh host no-such-command-xyz 2> %s/err'
              % (tmp,)) == 127
    err = read(tmp + '/err')
    assert b'no-such-command-xyz' in err and b'not found' in err


def test_run_returns_the_local_command_status(ctx, router):
    assert run(ctx, router, ['sh', '-c', 'exit 9']) == 9


# -- bad input and lost contexts -------------------------------------------

@pytest.mark.parametrize('dest', [None, 'local.1', 1])
def test_destination_that_is_not_a_context_is_refused(router, dest):
    with pytest.raises(TypeError, match='mitogen.core.Context'):
        mitogen.fakessh.run(dest, router, ['true'])


def wait_for(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, '%s never appeared' % (path,)
        time.sleep(0.01)


def wait_gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open('/proc/%d/stat' % pid) as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                    return
        except OSError:
            return
        assert time.monotonic() < deadline, 'process %d still runs' % pid
        time.sleep(0.01)


def run_in_thread(ctx, router, script):
    result = {}

    def target():
        result['status'] = sh(ctx, router, script)
    t = threading.Thread(target=target)
    t.start()
    return t, result


@pytest.mark.parametrize('how', ['disconnect', 'sigkill'])
def test_context_lost_mid_run_gives_255_and_a_message(fresh, router, tmp,
                                                      how):
    marker = tmp + '/pid'
    thread, result = run_in_thread(fresh, router, (
        "ssh host 'echo $$ > %s.tmp && mv %s.tmp %s && exec sleep 60' "
        "2> %s/err" % (marker, marker, marker, tmp)))
    wait_for(marker)
    remote_pid = int(read(marker))
    if how == 'disconnect':
        router.disconnect(fresh)
    else:
        os.kill(fresh.call(os.getpid), signal.SIGKILL)
    thread.join(TIMEOUT)
    assert result['status'] == 255
    assert b'connection to context' in read(tmp + '/err')
    wait_gone(remote_pid)


def test_context_dead_before_run_gives_255_and_a_message(fresh, router, tmp):
    fresh.shutdown(wait=True)
    assert sh(fresh, router, 'ssh host true 2> %s/err' % (tmp,)) == 255
    assert read(tmp + '/err').startswith(b'ssh (mitogen.fakessh): ')


def test_killed_fake_ssh_kills_the_remote_command(ctx, router, tmp):
    report, marker = tmp + '/report.json', tmp + '/pid'
    assert run(ctx, router, [sys.executable, DRIVER, report, 'kill-ssh',
                             marker]) == 0
    with open(report) as f:
        assert json.load(f) == {'status': -signal.SIGKILL, 'marker': True}
    wait_gone(int(read(marker)))


def test_deadline_kills_the_command_and_raises(ctx, router, tmp):
    marker = tmp + '/pid'
    with pytest.raises(mitogen.core.TimeoutError):
        mitogen.fakessh.run(ctx, router, [
            'ssh', 'host', 'echo $$ > %s && exec sleep 60' % (marker,)],
            deadline=time.time() + 2)
    wait_gone(int(read(marker)))


def test_nothing_is_left_in_the_temporary_directory(ctx, router, tmp):
    assert sh(ctx, router, 'dirname "$(command -v ssh)" > %s/dir' % (tmp,)) \
        == 0
    fake_dir = read(tmp + '/dir').decode().strip()
    assert os.path.basename(fake_dir).startswith('mitogen-fakessh-')
    assert not os.path.exists(fake_dir)


# -- real tools --------------------------------------------------------------

def make_tree(root, files=1000, symlinks=True, seed=1):
    """A tree of `files` regular files: random binary content, every 7th
    empty, varied permissions, UTF-8 and non-UTF-8 names, nested
    directories, and (with `symlinks`) relative, dangling and directory
    symlinks."""
    rnd = random.Random(seed)
    root = os.fsencode(root)
    names = [b'plain-%d', u'\u00e9t\u00e9-%d'.encode('utf-8'),
             u'\u65e5\u672c-%d'.encode('utf-8'), b'raw-\xff\xfe-%d',
             b'with space %d']
    modes = [0o644, 0o600, 0o755, 0o640, 0o444]
    dir_modes = [0o755, 0o750, 0o700]
    dirs = []
    for i in range(20):
        d = os.path.join(root, names[i % len(names)] % i)
        if i % 4 == 3:
            d = os.path.join(dirs[-1], b'sub-%d' % i)
        os.mkdir(d)
        dirs.append(d)
    for i in range(files):
        d = dirs[i % len(dirs)]
        path = os.path.join(d, names[i % len(names)] % i)
        size = 0 if i % 7 == 0 else rnd.randint(1, 16384)
        write(path, rnd.getrandbits(8 * size).to_bytes(size, 'little')
              if size else b'')
        os.chmod(path, modes[i % len(modes)])
    if symlinks:
        os.symlink(b'../' + os.path.basename(os.listdir(dirs[1])[0]),
                   os.path.join(dirs[0], b'dangling'))
        for i, d in enumerate(dirs[:10]):
            target = sorted(os.listdir(d))[0]
            os.symlink(target, os.path.join(d, b'link-%d' % i))
        os.symlink(os.path.relpath(dirs[5], root),
                   os.path.join(root, b'dirlink'))
    for i, d in enumerate(reversed(dirs)):
        os.chmod(d, dir_modes[i % len(dir_modes)])


def describe_tree(root):
    """{relative path: description} of everything under `root`: type,
    permission bits, symlink target or content hash."""
    root = os.fsencode(root)
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ('link', os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ('dir', mode)
            else:
                result[rel] = ('file', mode, hashlib.sha256(
                    read(path)).hexdigest())
    return result


@pytest.fixture
def shared_dir(test_users):
    """A directory the test accounts may write in (a mode 777 folder in a
    mode 711 one)."""
    top = tempfile.mkdtemp(prefix='mitogen-fakessh-test-')
    os.chmod(top, 0o711)
    shared = os.path.join(top, 'shared')
    os.mkdir(shared)
    os.chmod(shared, 0o777)
    yield shared
    shutil.rmtree(top)


@pytest.fixture
def tree(tmp):
    src = os.path.join(tmp, 'src')
    os.mkdir(src)
    make_tree(src)
    return src


def need(tool):
    if shutil.which(tool) is None:
        pytest.skip('%s is not installed (scripts/setup installs rsync; '
                    'git and scp come with git and openssh-client)' % tool)


def rsync_round_trip(ctx, router, src, remote, back):
    need('rsync')
    assert run(ctx, router, ['rsync', '-a', '-e', 'ssh', src + '/',
                             'host:' + remote + '/']) == 0
    assert run(ctx, router, ['rsync', '-a', '-e', 'ssh',
                             'host:' + remote + '/', back + '/']) == 0


def test_rsync_copies_a_tree_to_a_sudo_context_and_back(
        router, test_users, shared_dir, tree, tmp):
    ctx = router.sudo(username=test_users.nopass,
                      python_path=test_users.python)
    try:
        remote = os.path.join(shared_dir, 'dst')
        back = os.path.join(tmp, 'back')
        rsync_round_trip(ctx, router, tree, remote, back)
        expected = describe_tree(tree)
        assert sum(1 for v in expected.values() if v[0] == 'file') >= 1000
        assert describe_tree(remote) == expected
        assert os.stat(remote).st_uid == test_users.uid(test_users.nopass)
        assert describe_tree(back) == expected
    finally:
        ctx.shutdown(wait=True)


def test_rsync_copies_a_tree_through_ssh_then_sudo_and_back(
        router, test_users, sshd, shared_dir, tree, tmp):
    via = router.ssh(**sshd.ssh_kwargs(username='root'))
    ctx = router.sudo(username=test_users.nopass,
                      python_path=test_users.python, via=via)
    try:
        remote = os.path.join(shared_dir, 'dst')
        back = os.path.join(tmp, 'back')
        rsync_round_trip(ctx, router, tree, remote, back)
        expected = describe_tree(tree)
        assert describe_tree(remote) == expected
        assert os.stat(remote).st_uid == test_users.uid(test_users.nopass)
        assert describe_tree(back) == expected
    finally:
        via.shutdown(wait=True)


@pytest.mark.parametrize('protocol', ['sftp', 'scp'])
def test_scp_copies_a_tree_to_a_sudo_context_and_back(
        router, test_users, shared_dir, tmp, protocol):
    need('scp')
    src = os.path.join(tmp, 'src')
    os.mkdir(src)
    make_tree(src, files=60, symlinks=False)
    ctx = router.sudo(username=test_users.nopass,
                      python_path=test_users.python)
    # scp runs /usr/bin/ssh unless -S names another program.
    flags = ['-S', 'ssh', '-r', '-p'] + (['-O'] if protocol == 'scp' else [])
    try:
        remote = os.path.join(shared_dir, 'dst')
        back = os.path.join(tmp, 'back')
        assert run(ctx, router, ['scp'] + flags + [
            src, 'host:' + remote]) == 0
        assert run(ctx, router, ['scp'] + flags + [
            'host:' + remote, back]) == 0
        expected = describe_tree(src)
        assert describe_tree(remote) == expected
        assert describe_tree(back) == expected
    finally:
        ctx.shutdown(wait=True)


def test_git_pushes_to_and_clones_from_a_sudo_context(
        router, test_users, shared_dir, tmp):
    need('git')
    ctx = router.sudo(username=test_users.nopass,
                      python_path=test_users.python)
    git = ['git', '-c', 'user.name=Test', '-c', 'user.email=test@example.org',
           '-c', 'init.defaultBranch=main']
    try:
        bare = os.path.join(shared_dir, 'repo.git')
        ctx.call(subprocess.check_call, git + ['init', '-q', '--bare', bare])
        work = os.path.join(tmp, 'work')
        subprocess.check_call(git + ['init', '-q', work])
        write(os.path.join(work, 'data.bin'), ALL_BYTES)
        subprocess.check_call(git + ['-C', work, 'add', 'data.bin'])
        subprocess.check_call(git + ['-C', work, 'commit', '-q', '-m', 'x'])
        head = subprocess.check_output(
            ['git', '-C', work, 'rev-parse', 'HEAD']).strip()
        assert run(ctx, router, git + ['-C', work, 'push', '-q',
                                       'host:' + bare, 'HEAD:main']) == 0
        clone = os.path.join(tmp, 'clone')
        assert run(ctx, router, git + ['clone', '-q', 'host:' + bare,
                                       clone]) == 0
        assert subprocess.check_output(
            ['git', '-C', clone, 'rev-parse', 'HEAD']).strip() == head
        assert read(os.path.join(clone, 'data.bin')) == ALL_BYTES
    finally:
        ctx.shutdown(wait=True)
