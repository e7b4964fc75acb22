"""
Specification of :mod:`mitogen.unix`: another local program attaches to a
running master's tree through a UNIX socket, and calls into its contexts.

- The listener's socket file has mode 0600 and disappears when the listener
  shuts down.
- A client of the same user becomes a context below the listener's, with a
  fresh ID and the listener's ``parent_ids`` chain, and may call into the
  listener's context and every context that trusts it.
- The listener stamps its own context ID as the ``auth_id`` of everything a
  client sends: a client can neither claim another authority nor another
  identity (``src_id``).
- A program running as any other user is disconnected at once
  (``SO_PEERCRED``), even when file permissions let it connect, and the
  listener keeps serving others.

The clients are separate processes running :mod:`support.unix_client`. The
master here serves function calls itself (a :class:`mitogen.core.Dispatcher`
on a thread), so that calls into the listener's own context can be tested.
"""
import errno
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import types

import pytest

import interpreters
import mitogen.core
import mitogen.master
import mitogen.unix

from support import unix_funcs

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
CLIENT = os.path.join(TESTS, 'support', 'unix_client.py')

#: Seconds a client program may run.
CLIENT_TIMEOUT = 60
#: Seconds to wait for the listener to notice a client went away.
DISCONNECT_WAIT = 10.0

#: A user other than the one running the tests, for the refusal test.
OTHER_USER = 'mitounixtest'
#: A Python outside /root (mode 0700), runnable by OTHER_USER.
SYSTEM_PYTHON = '/usr/bin/python3'


def client_env():
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE='1')
    env['PYTHONPATH'] = os.pathsep.join(
        [TESTS] + [p for p in [env.get('PYTHONPATH')] if p])
    return env


def run_client(path, action, *args):
    """Run the client program as this user; return its JSON output."""
    proc = subprocess.run(
        [sys.executable, CLIENT, path, action] + [str(a) for a in args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, env=client_env(), timeout=CLIENT_TIMEOUT)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return json.loads(proc.stdout.splitlines()[-1])


def serve_calls(router):
    """Run a :class:`mitogen.core.Dispatcher` for `router` on a thread, as
    a child's main thread does; it ends when the broker exits."""
    econtext = types.SimpleNamespace(router=router, broker=router.broker,
                                     importer=None)
    dispatcher = mitogen.core.Dispatcher(econtext)
    thread = threading.Thread(target=dispatcher.run, name='test.dispatcher')
    thread.start()
    return thread


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail('timed out waiting for ' + what)
        time.sleep(0.02)


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    """A master serving calls, with one local child and a listener."""
    path = str(tmp_path_factory.mktemp('unix') / 'listener.sock')
    with mitogen.master.Router() as router:
        child = router.local(python_path=sys.executable)
        unix_funcs.CHILD = child
        thread = serve_calls(router)
        listener = mitogen.unix.Listener.build_stream(router, path).protocol
        yield types.SimpleNamespace(router=router, child=child,
                                    listener=listener, path=listener.path)
    thread.join(10)
    unix_funcs.CHILD = None


@pytest.fixture
def open_dir():
    """A directory every user may enter, removed afterwards."""
    path = tempfile.mkdtemp(prefix='mitogen_unix_test_')
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---- The socket file ----

def test_socket_file_is_a_socket_with_mode_0600(tree):
    st = os.stat(tree.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_default_path_is_a_new_socket_in_the_temp_directory(router):
    listener = mitogen.unix.Listener(router)
    assert os.path.dirname(listener.path) == os.path.abspath(
        tempfile.gettempdir())
    assert stat.S_IMODE(os.stat(listener.path).st_mode) == 0o600


def test_shutdown_removes_the_socket_file(tmp_path):
    path = str(tmp_path / 'l.sock')
    with mitogen.master.Router() as router:
        mitogen.unix.Listener.build_stream(router, path)
        assert os.path.exists(path)
    assert not os.path.exists(path)
    assert os.listdir(str(tmp_path)) == []


def test_listener_replaces_a_stale_socket_file(router, tmp_path):
    path = str(tmp_path / 'l.sock')
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    listener = mitogen.unix.Listener(router, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert run_client(listener.path, 'info')['parent_ids'] == [0]


def test_listener_refuses_the_path_of_a_live_listener(tree, router):
    with pytest.raises(OSError) as info:
        mitogen.unix.Listener(router, tree.path)
    assert info.value.errno == errno.EEXIST
    assert not mitogen.unix.is_path_dead(tree.path)


def test_listener_refuses_to_replace_a_regular_file(router, tmp_path):
    path = tmp_path / 'l.sock'
    path.write_text('data')
    with pytest.raises(OSError):
        mitogen.unix.Listener(router, str(path))
    assert path.read_text() == 'data'


def test_is_path_dead_for_a_missing_file(tmp_path):
    assert mitogen.unix.is_path_dead(str(tmp_path / 'missing.sock'))


def test_is_path_dead_for_a_socket_nobody_listens_on(tmp_path):
    path = str(tmp_path / 'dead.sock')
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    assert mitogen.unix.is_path_dead(path)


def test_is_path_dead_is_false_for_a_live_listener(tree):
    assert not mitogen.unix.is_path_dead(tree.path)


@pytest.mark.parametrize('interpreter', interpreters.params(), indirect=True)
def test_module_works_in_a_child_of_every_python(tree, interpreter):
    ctx = tree.router.local(python_path=interpreter.path)
    try:
        dead, directory = ctx.call(unix_funcs.socket_helpers, tree.path)
    finally:
        ctx.shutdown(wait=True)
    assert dead is False
    assert directory


# ---- Attaching to the tree ----

def test_connect_raises_connect_error_naming_a_missing_path(tmp_path):
    path = str(tmp_path / 'missing.sock')
    with pytest.raises(mitogen.unix.ConnectError) as info:
        mitogen.unix.connect(path)
    assert path in str(info.value)
    assert isinstance(info.value, mitogen.core.StreamError)


def test_connect_raises_connect_error_for_a_socket_nobody_listens_on(
        tmp_path):
    path = str(tmp_path / 'dead.sock')
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    with pytest.raises(mitogen.unix.ConnectError) as info:
        mitogen.unix.connect(path=path)
    assert path in str(info.value)


def test_client_attaches_with_the_keywords_ansible_uses(tree):
    # As ansible_mitogen's process.py: a listener built with keywords at a
    # make_socket_path() path, and connect(path=, broker=).
    stream = mitogen.unix.Listener.build_stream(
        router=tree.router, path=mitogen.unix.make_socket_path(), backlog=4)
    path = stream.protocol.path
    try:
        result = run_client(path, 'call_parent_with_keywords')
    finally:
        tree.router.broker.defer_sync(
            lambda: stream.on_disconnect(tree.router.broker))
    assert result['identity'] == [os.getpid(), 0]
    assert result['parent_is_context'] is True
    assert not os.path.exists(path)


def test_client_becomes_a_context_below_the_listener(tree):
    info = run_client(tree.path, 'info')
    assert info['parent_id'] == 0
    assert info['parent_ids'] == [0]
    assert info['parent_context_id'] == 0
    assert info['parent_name'] == 'master'
    assert info['is_master'] is False
    assert info['context_id'] not in (0, tree.child.context_id)


def test_each_client_gets_a_new_context_id(tree):
    first = run_client(tree.path, 'info')['context_id']
    second = run_client(tree.path, 'info')['context_id']
    assert first != second


def test_client_calls_a_function_in_the_listener_context(tree):
    result = run_client(tree.path, 'call_parent')
    assert result['identity'] == [os.getpid(), 0]


def test_client_calls_a_function_in_the_masters_child(tree):
    result = run_client(tree.path, 'call_child')
    expected = [tree.child.call(os.getpid), tree.child.context_id]
    assert result['identity'] == expected
    assert result['name'] == tree.child.name


def test_client_disconnect_leaves_the_tree_intact(tree):
    proc = subprocess.Popen(
        [sys.executable, CLIENT, tree.path, 'hold'], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, universal_newlines=True, env=client_env())
    try:
        client_id = json.loads(proc.stdout.readline())['context_id']
        context = tree.router.context_by_id(client_id)
        gone = mitogen.core.Latch()
        tree.router.broker.defer_sync(lambda: mitogen.core.listen(
            context, 'disconnect', gone.put))
        proc.send_signal(signal.SIGKILL)
        gone.get(timeout=DISCONNECT_WAIT)
    finally:
        proc.kill()
        proc.communicate()
    assert tree.router.stream_by_id(client_id) is None
    assert tree.child.call(unix_funcs.identity)[1] == tree.child.context_id
    assert run_client(tree.path, 'call_child')['identity'][1] == \
        tree.child.context_id


# ---- Authority ----

class Forgery(object):
    """Messages a client sent to a receiver in the master, and the errors
    logged about dropped ones."""

    def __init__(self, tree, caplog):
        recv = mitogen.core.Receiver(tree.router)
        try:
            with caplog.at_level(logging.ERROR, logger='mitogen'):
                run_client(tree.path, 'forge', recv.handle,
                           tree.child.context_id)
                self.messages = []
                while True:
                    msg = recv.get(timeout=10)
                    self.messages.append(msg)
                    if msg.unpickle() == 'honest':
                        break
            self.log = caplog.text
        finally:
            recv.close()

    def by_data(self):
        return dict((m.unpickle(), m) for m in self.messages)


def test_client_messages_carry_the_listeners_authority(tree, caplog):
    honest = Forgery(tree, caplog).by_data()['honest']
    assert honest.auth_id == 0
    assert honest.src_id not in (0, tree.child.context_id)


def test_client_cannot_claim_another_auth_id(tree, caplog):
    forged = Forgery(tree, caplog).by_data()['forged auth_id']
    assert forged.auth_id == 0
    assert forged.auth_id != tree.child.context_id


def test_client_cannot_claim_another_src_id(tree, caplog):
    forgery = Forgery(tree, caplog)
    assert 'forged src_id' not in forgery.by_data()
    # Not stamped (its src_id is not the client's own), so it is verified
    # like any message: it claims an identity reached another way.
    assert 'dropped' in forgery.log
    assert '_id %d is reached through' % (tree.child.context_id,) \
        in forgery.log


@pytest.mark.parametrize('interpreter', interpreters.params(), indirect=True)
def test_client_of_a_listener_in_a_child_has_that_childs_authority(
        tree, tmp_path, interpreter):
    middle = tree.router.local(python_path=interpreter.path)
    try:
        middle_pid = middle.call(os.getpid)
        path = middle.call(unix_funcs.start_listener,
                           str(tmp_path / 'child.sock'))
        info = run_client(path, 'info')
        own = run_client(path, 'call_parent')
        master = run_client(path, 'call_master')
    finally:
        middle.shutdown(wait=True)
    assert info['parent_ids'] == [middle.context_id, 0]
    assert own['identity'] == [middle_pid, middle.context_id]
    assert 'refused' in master


# ---- Other users ----

@pytest.fixture(scope='module')
def other_user_python(tmp_path_factory):
    """A command prefix running Python as :data:`OTHER_USER`, with a copy
    of mitogen and the client program it can read."""
    if os.getuid() != 0:
        pytest.skip('creating and switching to another user needs root')
    for tool in ('useradd', 'runuser'):
        if shutil.which(tool) is None:
            pytest.skip('%s is not installed' % (tool,))
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip('%s is missing: no Python outside /root for %s'
                    % (SYSTEM_PYTHON, OTHER_USER))
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.check_call(['useradd', '-M', '-s', '/usr/sbin/nologin',
                               OTHER_USER])
    base = tempfile.mkdtemp(prefix='mitogen_unix_copy_')
    os.chmod(base, 0o755)
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
    for dist in ('mitogen-core', 'mitogen-master'):
        shutil.copytree(os.path.join(ROOT, 'packages', dist, 'mitogen'),
                        os.path.join(base, dist, 'mitogen'), ignore=ignore)
    shutil.copy(CLIENT, base)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    pythonpath = os.pathsep.join(os.path.join(base, d)
                                 for d in ('mitogen-core', 'mitogen-master'))
    yield ['runuser', '-u', OTHER_USER, '--', 'env',
           'PYTHONPATH=' + pythonpath, 'PYTHONDONTWRITEBYTECODE=1',
           SYSTEM_PYTHON, os.path.join(base, 'unix_client.py')]
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def reachable_listener(router, open_dir):
    """A listener whose socket another user may connect to (mode 0666),
    so that only the credential check can refuse it."""
    listener = mitogen.unix.Listener(router, os.path.join(open_dir, 'l.sock'))
    os.chmod(listener.path, 0o666)
    return listener


def run_as_other_user(command, path):
    proc = subprocess.run(command + [path, 'info'], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True,
                          cwd='/', timeout=CLIENT_TIMEOUT)
    return proc


def test_client_of_another_user_is_refused(other_user_python,
                                           reachable_listener, caplog):
    with caplog.at_level(logging.WARNING, logger='mitogen'):
        proc = run_as_other_user(other_user_python, reachable_listener.path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result['error'] == 'ConnectError'
    assert 'closed the connection' in result['message']
    uid = pwd.getpwnam(OTHER_USER).pw_uid
    assert 'runs as uid %d' % (uid,) in caplog.text


def test_listener_keeps_serving_after_refusing_a_client(other_user_python,
                                                        reachable_listener):
    proc = run_as_other_user(other_user_python, reachable_listener.path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert run_client(reachable_listener.path, 'info')['parent_ids'] == [0]
