"""
Specification of the bootstrap: how a bare interpreter becomes a context,
and how each way of failing to get there is reported.

Failures are provoked with fake interpreters: small executable scripts in
``tmp_path`` that stand where ``python`` would, ignore the ``-c <first
stage>`` arguments the boot command appends, and misbehave in one
particular way.
"""
import marshal
import os
import py_compile
import re
import stat
import sys
import time
import zlib

import pytest

import interpreters
import leakcheck
import mitogen.core
import mitogen.parent
from support import boot_helpers

#: Seconds within which a failure that needs no timeout must be reported.
QUICKLY = 5.0


def fake_python(tmp_path, body, name='fake-python'):
    """Write an executable ``/bin/sh`` script running `body` and return its
    path."""
    path = tmp_path / name
    path.write_text(u'#!/bin/sh\n' + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# -- Nothing installed -------------------------------------------------------

def test_core_reaches_a_child_without_site_or_environment(
        router, interpreter, monkeypatch):
    monkeypatch.delenv('PYTHONPATH', raising=False)
    context = router.local(python_path=[interpreter.path, '-S', '-E'])
    facts = context.call(boot_helpers.describe_boot)
    assert facts['core_file'] == u'master:mitogen/core.py'
    assert facts['no_site'] and not facts['site_imported']
    assert facts['installed_mitogen'] == []
    assert facts['pythonpath'] == u''


def test_core_is_shipped_even_to_an_interpreter_that_has_mitogen_installed(
        router):
    # This test's own interpreter has every distribution installed; the
    # child must still run the core the master sent.
    context = router.local()
    facts = context.call(boot_helpers.describe_boot)
    assert facts['core_file'] == u'master:mitogen/core.py'


# -- The compiled core ------------------------------------------------------

THIS_VERSION = '%d.%d' % sys.version_info[:2]


def own_tag():
    return mitogen.parent.interpreter_tag().decode('ascii')


def test_child_of_this_interpreter_runs_the_compiled_core_under_its_name(
        router):
    facts = router.local().call(boot_helpers.compiled_core)
    assert facts['tag'] == own_tag() != u''
    assert facts['code_file'] == u'master:mitogen/core.py'


@pytest.mark.parametrize('interpreter', interpreters.params([
    v for v in ['2.7', '3.6', '3.12', '3.13'] if v != THIS_VERSION]),
    indirect=True)
def test_child_of_another_interpreter_compiles_the_source(
        router, interpreter):
    context = router.local(python_path=interpreter.path)
    facts = context.call(boot_helpers.compiled_core)
    assert facts['tag'] == u''
    assert facts['code_file'] == u'master:mitogen/core.py'


def test_compiled_core_with_another_tag_is_not_run(router, monkeypatch):
    # The parent sends code tagged for another interpreter (and not even
    # valid marshal data): the child must ignore it and compile the source.
    monkeypatch.setattr(mitogen.parent, '_core_code_data', [
        b'cpython-11 b0000f0 0\n' + zlib.compress(b'not code')])
    facts = router.local().call(boot_helpers.compiled_core)
    assert facts['tag'] == u''


def test_middle_forwards_the_compiled_core_it_received(router, monkeypatch):
    middle = router.local()
    # Whatever the middle does, it must not take the core from the master
    # again: only what it received reaches the leaf.
    monkeypatch.setattr(mitogen.parent, '_core_code_data', [b''])
    leaf = router.local(via=middle)
    assert leaf.call(boot_helpers.compiled_core)['tag'] == own_tag()


def test_master_takes_the_compiled_core_from_a_current_pyc(tmp_path):
    source = tmp_path / 'mod.py'
    source.write_text(u'x = 1\n')
    py_compile.compile(str(source), doraise=True)
    code = mitogen.parent._code_from_pyc(str(source))
    assert code is not None and code.co_filename == str(source)
    # A changed source makes the .pyc out of date: it must not be used.
    source.write_text(u'x = 22\n')
    assert mitogen.parent._code_from_pyc(str(source)) is None


def test_master_without_pyc_compiles_the_core_in_another_process():
    data = mitogen.parent._compile_elsewhere(b'def f():\n    return 1\n')
    code = marshal.loads(data)
    assert code.co_filename == u'master:mitogen/core.py'
    namespace = {}
    exec(code, namespace)
    assert namespace['f']() == 1


@pytest.mark.parametrize('interpreter', interpreters.params([
    v for v in ['3.12', '3.13'] if v != THIS_VERSION]), indirect=True)
def test_compiler_process_of_another_interpreter_is_not_trusted(
        interpreter, monkeypatch):
    # sys.executable of a program embedding Python may be another
    # interpreter: what it compiles must not be shipped as ours.
    monkeypatch.setattr(sys, 'executable', interpreter.path)
    assert mitogen.parent._compile_elsewhere(b'x = 1\n') == b''


@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.6']),
                         indirect=True)
def test_middle_of_another_interpreter_has_no_compiled_core_to_forward(
        router, interpreter):
    middle = router.local(python_path=interpreter.path)
    leaf = router.local(via=middle, python_path=sys.executable)
    assert leaf.call(boot_helpers.compiled_core)['tag'] == u''


@pytest.mark.parametrize('interpreter', interpreters.params([
    v for v in ['3.12', '3.13'] if v != THIS_VERSION]), indirect=True)
def test_middle_of_another_interpreter_starts_a_leaf_of_its_own_version(
        router, interpreter):
    # The middle received no compiled core (another version than the
    # master's) and its core came through its stdin, not from a file: the
    # leaf, of the middle's version, compiles the source.
    middle = router.local(python_path=interpreter.path)
    leaf = router.local(via=middle, python_path=interpreter.path)
    assert leaf.call(boot_helpers.compiled_core)['tag'] == u''


# -- Failing to start --------------------------------------------------------

def test_missing_interpreter_raises_stream_error_naming_it(router, tmp_path):
    missing = str(tmp_path / 'no-such-python')
    start = time.monotonic()
    with pytest.raises(mitogen.core.StreamError) as info:
        router.local(python_path=missing)
    assert time.monotonic() - start < QUICKLY
    assert missing in str(info.value)


@pytest.mark.parametrize('redirect', ['', ' >&2'], ids=['stdout', 'stderr'])
def test_interpreter_that_dies_at_once_raises_eof_error_with_its_output(
        router, tmp_path, redirect):
    python = fake_python(
        tmp_path, 'echo "fake python: no such luck"%s\nexit 3\n' % redirect)
    start = time.monotonic()
    with pytest.raises(mitogen.parent.EofError) as info:
        router.local(python_path=python)
    assert time.monotonic() - start < QUICKLY
    assert 'fake python: no such luck' in str(info.value)
    assert 'exit status 3' in str(info.value)


def test_eof_error_is_a_stream_error(router, tmp_path):
    python = fake_python(tmp_path, 'exit 1\n')
    with pytest.raises(mitogen.core.StreamError):
        router.local(python_path=python)


def test_silent_child_times_out_with_its_output_and_is_killed(
        router, tmp_path):
    pidfile = tmp_path / 'pid'
    python = fake_python(
        tmp_path,
        'echo $$ > "%s"\necho "fake python: thinking hard"\nexec sleep 1000\n'
        % (pidfile,))
    timeout = 1.0
    start = time.monotonic()
    with pytest.raises(mitogen.core.TimeoutError) as info:
        router.local(python_path=python, connect_timeout=timeout)
    elapsed = time.monotonic() - start
    assert timeout <= elapsed < timeout + 2.0
    assert 'fake python: thinking hard' in str(info.value)
    assert leakcheck.process_status(int(pidfile.read_text())) is None


# -- Core protocol versions --------------------------------------------------

def core_speaking(protocol):
    """The source of this core, changed to announce `protocol`."""
    source = mitogen.parent.get_core_source()
    changed, count = re.subn(
        rb'^PROTOCOL_VERSION = \d+$',
        b'PROTOCOL_VERSION = ' + str(protocol).encode(), source,
        flags=re.MULTILINE)
    assert count == 1
    return changed


def supported_text():
    return 'versions %d to %d' % mitogen.parent.SUPPORTED_CORE_PROTOCOLS


def test_child_core_of_another_protocol_is_refused_naming_both(
        router, monkeypatch):
    source = core_speaking(99)
    monkeypatch.setattr(mitogen.parent, '_core_data',
                        [source, zlib.compress(source, 9)])
    # The child must run the changed source, not the installed core's code.
    monkeypatch.setattr(mitogen.parent, '_core_code_data', [b''])
    with pytest.raises(mitogen.parent.CoreVersionError) as info:
        router.local()
    message = str(info.value)
    assert 'protocol 99' in message
    assert supported_text() in message
    assert mitogen.core.__version__ in message


@pytest.mark.parametrize('installed, supported', [
    (99, (1, 1)),
    (1, (2, 3)),
    (4, (2, 3)),
])
def test_installed_core_outside_the_supported_range_is_refused(
        monkeypatch, installed, supported):
    monkeypatch.setattr(mitogen.core, 'PROTOCOL_VERSION', installed)
    monkeypatch.setattr(mitogen.parent, 'SUPPORTED_CORE_PROTOCOLS', supported)
    with pytest.raises(mitogen.parent.CoreVersionError) as info:
        mitogen.parent.check_local_core()
    message = str(info.value)
    assert 'protocol %d' % installed in message
    assert supported_text() in message


@pytest.mark.parametrize('installed', [2, 3])
def test_installed_core_at_either_end_of_the_supported_range_is_accepted(
        monkeypatch, installed):
    monkeypatch.setattr(mitogen.core, 'PROTOCOL_VERSION', installed)
    monkeypatch.setattr(mitogen.parent, 'SUPPORTED_CORE_PROTOCOLS', (2, 3))
    mitogen.parent.check_local_core()


def test_unsupported_installed_core_is_refused_before_starting_a_child(
        router, monkeypatch, tmp_path):
    started = tmp_path / 'started'
    python = fake_python(tmp_path, 'touch "%s"\nexit 1\n' % (started,))
    monkeypatch.setattr(mitogen.core, 'PROTOCOL_VERSION', 99)
    with pytest.raises(mitogen.parent.CoreVersionError):
        router.local(python_path=python)
    assert not os.path.exists(str(started))
