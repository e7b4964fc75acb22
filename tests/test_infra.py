"""The test machinery itself: leak detection and interpreter discovery."""
import glob
import os
import shutil
import subprocess
import threading
import time

import pytest

import interpreters
import leakcheck

HERE = os.path.dirname(os.path.abspath(__file__))

# Short settle times: these tests leak on purpose and wait for the verdict.
QUICK = dict(fd_settle=0.1, thread_settle=0.1, process_settle=0.1)


def test_nothing_leaked_gives_no_report():
    snapshot = leakcheck.Snapshot()
    assert leakcheck.find_leaks(snapshot, **QUICK) == []


def test_leaked_fd_is_reported_with_its_target():
    snapshot = leakcheck.Snapshot()
    r, w = os.pipe()
    try:
        leaks = leakcheck.find_leaks(snapshot, **QUICK)
    finally:
        os.close(r)
        os.close(w)
    assert 'fd %d -> pipe:[' % r in '\n'.join(leaks)
    assert 'fd %d -> pipe:[' % w in '\n'.join(leaks)


def test_fd_renumbered_to_another_file_is_reported():
    r, w = os.pipe()
    try:
        snapshot = leakcheck.Snapshot()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, r)
        os.close(null)
        leaks = leakcheck.find_leaks(snapshot, **QUICK)
    finally:
        os.close(r)
        os.close(w)
    assert leaks == ['fd %d -> /dev/null' % r]


def test_leaked_thread_is_reported_by_name():
    snapshot = leakcheck.Snapshot()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name='leaky-thread')
    thread.start()
    try:
        leaks = leakcheck.find_leaks(snapshot, **QUICK)
    finally:
        stop.set()
        thread.join()
    assert leaks == ["thread 'leaky-thread' (daemon=False)"]


def test_leaked_child_process_is_reported():
    snapshot = leakcheck.Snapshot()
    proc = subprocess.Popen(['sleep', '30'])
    try:
        leaks = leakcheck.find_leaks(snapshot, **QUICK)
    finally:
        proc.kill()
        proc.wait()
    assert leaks == ['process %d (ppid %d, state S): sleep 30'
                     % (proc.pid, os.getpid())]


def test_orphaned_grandchild_is_reported_through_its_tag():
    with leakcheck.tagged() as snapshot:
        # sh exits at once; its sleep is re-parented away from this process.
        out = subprocess.check_output(
            ['sh', '-c', 'sleep 30 </dev/null >/dev/null 2>&1 & echo $!'])
        orphan = int(out)
        try:
            leaks = leakcheck.find_leaks(snapshot, **QUICK)
        finally:
            os.kill(orphan, 9)
    assert len(leaks) == 1
    assert leaks[0].startswith('process %d ' % orphan)
    assert leaks[0].endswith(': sleep 30')


def test_resources_released_within_settle_time_are_not_leaks():
    snapshot = leakcheck.Snapshot()
    r, w = os.pipe()
    proc = subprocess.Popen(['sleep', '0.2'])

    def linger():
        time.sleep(0.3)
        os.close(r)
        os.close(w)
        proc.wait()

    threading.Thread(target=linger, name='linger').start()
    assert leakcheck.find_leaks(snapshot, fd_settle=2, thread_settle=2,
                                process_settle=2) == []


def test_kill_new_processes_ends_and_reaps_leaked_children():
    snapshot = leakcheck.Snapshot()
    proc = subprocess.Popen(['sleep', '30'])
    leakcheck.kill_new_processes(snapshot)
    assert leakcheck.process_status(proc.pid) is None
    proc.wait()


LEAKING_TESTS = '''
import os, subprocess, threading
import pytest

def test_clean():
    pass

def test_fd():
    os.pipe()

def test_thread():
    threading.Thread(target=threading.Event().wait, daemon=True).start()

def test_process():
    subprocess.Popen(['sleep', '60'])

@pytest.mark.no_leak_check
def test_opted_out():
    os.pipe()
'''


def test_fixture_turns_each_kind_of_leak_into_an_error(pytester):
    # conftest.py loads the helper modules of tests/ as plugins: copy all.
    for name in os.listdir(HERE):
        if name.endswith('.py') and not name.startswith(('test_', 'conftest')):
            shutil.copy(os.path.join(HERE, name), str(pytester.path))
    with open(os.path.join(HERE, 'conftest.py')) as f:
        conftest = f.read()
    pytester.makeconftest(
        conftest + '\nleakcheck.FD_SETTLE = leakcheck.THREAD_SETTLE = '
        'leakcheck.PROCESS_SETTLE = 0.2\n'
    )
    pytester.makepyfile(test_leaks=LEAKING_TESTS)
    result = pytester.runpytest_subprocess('-p', 'no:cacheprovider')
    result.assert_outcomes(passed=5, errors=3)
    result.stdout.fnmatch_lines([
        '*ERROR at teardown of test_fd*',
        '*test leaked*',
        '*fd * -> pipe:*',
        '*ERROR at teardown of test_thread*',
        "*thread 'Thread-*",
        '*ERROR at teardown of test_process*',
        '*process * (ppid *, state S): sleep 60',
    ])


def test_no_leak_check_marker_is_registered(pytestconfig):
    markers = pytestconfig.getini('markers')
    assert any(m.startswith('no_leak_check:') for m in markers)


def pyenv_interpreters():
    """``{"X.Y": path}`` for each pyenv-installed interpreter."""
    found = {}
    for root in interpreters._pyenv_roots():
        for path in glob.glob(os.path.join(root, 'versions', '*', 'bin',
                                           'python[23].*[0-9]')):
            version = os.path.basename(path)[len('python'):]
            if version in interpreters.WANTED:
                found.setdefault(version, []).append(path)
    return found


def test_finds_every_pyenv_interpreter():
    expected = pyenv_interpreters()
    if not expected:
        pytest.skip('pyenv has no interpreters on this machine')
    found = dict(interpreters.find_interpreters())
    for version, paths in expected.items():
        assert found.get(version) in paths


def test_found_interpreters_are_real_and_report_their_version():
    found = interpreters.find_interpreters()
    assert found, 'no Python interpreter found at all'
    for version, path in found:
        assert '/shims/' not in path
        assert os.path.isabs(path)
        assert interpreters.probe(path) == version


def test_pyenv_shims_are_never_chosen(tmp_path):
    shim = tmp_path / 'shims' / 'python3.99'
    shim.parent.mkdir()
    shim.write_text('#!/usr/bin/env bash\nexec pyenv exec "$@"\n')
    shim.chmod(0o755)
    assert interpreters.probe(str(shim)) is None


def test_missing_version_skips_with_its_name():
    with pytest.raises(pytest.skip.Exception,
                       match=r'python1\.5 not installed on this machine'):
        interpreters.require('1.5')


def test_interpreter_fixture_gives_a_working_interpreter(interpreter):
    out = subprocess.check_output(
        [interpreter.path, '-c', 'import sys; print(sys.version_info[:2])'])
    major, minor = interpreter.version.split('.')
    assert out.strip() == ('(%s, %s)' % (major, minor)).encode()
