"""
The interpreter matrix: the same behaviours on a child of every Python
version a child must run on (2.7, 3.6 - 3.13), and masters on other Python
versions than the test suite's own.

Each version gets one router and one child for the whole module (the
``interpreter`` fixture is re-declared here with module scope, so pytest
groups the tests by version); only the shutdown test starts a child of its
own.  A version this machine lacks is a visible skip.
"""
import hashlib
import importlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest

import mitogen.core
import mitogen.master

import interpreters
from logcapture import Collect
from support import matrix_calls

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BIG = 32 * 1024 * 1024


@pytest.fixture(scope='module', params=interpreters.params())
def interpreter(request):
    """Module-scoped :func:`conftest.interpreter`: one child per version
    serves every test of this module."""
    return interpreters.require(request.param)


@pytest.fixture(scope='module')
def router(interpreter):
    with mitogen.master.Router() as router:
        yield router


@pytest.fixture(scope='module')
def context(router, interpreter):
    return router.local(python_path=interpreter.path)


def version_tuple(interpreter):
    return tuple(int(n) for n in interpreter.version.split('.'))


# -- calls and errors ------------------------------------------------------

def test_call_runs_the_function_in_a_child_of_that_version(
        context, interpreter):
    arg, version, pid = context.call(matrix_calls.describe, u'caf\xe9')

    assert arg == u'caf\xe9'
    assert version == version_tuple(interpreter)
    assert pid != os.getpid()
    assert context.name == u'local.%d' % (pid,)


def test_remote_exception_arrives_as_call_error_with_its_type_name(context):
    with pytest.raises(mitogen.core.CallError) as info:
        context.call(matrix_calls.fail, u'boom')

    e = info.value
    assert e.type_name == 'support.matrix_calls.MatrixError'
    assert e.remote_message == 'boom'
    assert 'in fail' in e.remote_traceback
    assert str(e).startswith('support.matrix_calls.MatrixError: boom\n')


# -- importing from the master ---------------------------------------------

MASTER_ONLY = {
    'matrix_only/__init__.py': 'from .util import twice\n',
    'matrix_only/util.py': 'def twice(x):\n    return 2 * x\n',
    'matrix_only/sub/__init__.py': '',
    'matrix_only/sub/data.py': 'OFFSET = 1\n',
    'matrix_only/sub/api.py': textwrap.dedent('''
        import sys

        from .. import twice
        from ..util import twice as twice_too
        from . import data
        from .data import OFFSET


        def compute(x):
            assert twice is twice_too and data.OFFSET == OFFSET
            return (twice(x) + OFFSET, tuple(sys.version_info[:2]),
                    u'%s' % (__name__,))
    '''),
}


@pytest.fixture
def master_only_package(tmp_path, monkeypatch):
    """The package ``matrix_only``, written under `tmp_path` and put on the
    master's ``sys.path`` only; forgotten by the master afterwards."""
    for relative, text in MASTER_ONLY.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield importlib.import_module('matrix_only.sub.api')
    for name in list(sys.modules):
        if name.partition('.')[0] == 'matrix_only':
            del sys.modules[name]


def test_master_only_package_with_relative_imports_is_served(
        context, interpreter, router, master_only_package):
    before = router.responder.get_module_count

    result = context.call(master_only_package.compute, 20)

    assert result == (41, version_tuple(interpreter), 'matrix_only.sub.api')
    assert router.responder.get_module_count > before


# -- large messages --------------------------------------------------------

def test_32_mib_argument_arrives_intact(context):
    data = os.urandom(BIG)

    is_bytes, size, digest = context.call(matrix_calls.sha256_of, data)

    assert (is_bytes, size) == (True, BIG)
    assert digest == hashlib.sha256(data).digest()


def test_32_mib_return_value_arrives_intact(context):
    data, digest = context.call(matrix_calls.random_bytes, BIG)

    assert isinstance(data, bytes)
    assert len(data) == BIG
    assert hashlib.sha256(data).digest() == digest


# -- logging ---------------------------------------------------------------

def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_child_log_record_reaches_the_master_logger_of_its_context(context):
    logger = logging.getLogger('mitogen.ctx.%s' % (context.name,))
    handler = Collect()
    logger.addHandler(handler)
    token = 'matrix log record %s' % (os.urandom(4).hex(),)
    try:
        context.call(matrix_calls.log, u'matrix.child', token)
        wait_for(lambda: any(r.getMessage() == token
                             for r in handler.records))
    finally:
        logger.removeHandler(handler)

    [record] = [r for r in handler.records if r.getMessage() == token]
    assert record.levelno == logging.WARNING
    assert record.mitogen_name == 'matrix.child'


# -- shutdown --------------------------------------------------------------

def test_shutdown_with_wait_ends_the_child_process(router, interpreter):
    child = router.local(python_path=interpreter.path)
    pid = child.call(matrix_calls.describe, None)[2]

    child.shutdown(wait=True)

    # Reaped, not only exited: a zombie would still have a /proc entry.
    assert not os.path.exists('/proc/%d' % (pid,))


# -- the master on other Python versions -----------------------------------

MASTER_SCRIPT = '''\
import json
import sys

import mitogen
import mitogen.master


def facts(x):
    return x * 2, u'%d.%d' % tuple(sys.version_info[:2])


if __name__ == '__main__':
    out = {
        'master': '%d.%d' % tuple(sys.version_info[:2]),
        'mitogen_path': list(mitogen.__path__),
        'children': [],
    }
    with mitogen.master.Router() as router:
        for path in sys.argv[1:]:
            child = router.local(python_path=path)
            out['children'].append(child.call(facts, 21))
            child.shutdown(wait=True)
    print(json.dumps(out))
'''

# (test id, interpreter, PYTHONPATH or None): the 3.13 venv has mitogen
# installed; the bare pyenv interpreters run the development checkout
# straight from packages/, which must work because the mitogen package
# spans its distributions' directories with pkgutil.extend_path.
MASTERS = [
    pytest.param(os.path.join(ROOT, '.venv-3.13', 'bin', 'python'), None,
                 id='venv-3.13'),
    pytest.param('/root/.pyenv/versions/3.9.18/bin/python3.9', 'checkout',
                 id='checkout-3.9'),
    pytest.param('/root/.pyenv/versions/3.12.1/bin/python3.12', 'checkout',
                 id='checkout-3.12'),
]

CHECKOUT_PATH = os.pathsep.join([
    os.path.join(ROOT, 'packages', 'mitogen-core'),
    os.path.join(ROOT, 'packages', 'mitogen-master'),
])


@pytest.mark.parametrize('master_python,pythonpath', MASTERS)
def test_master_on_another_python_drives_old_children(
        tmp_path, master_python, pythonpath):
    if not os.access(master_python, os.X_OK):
        pytest.skip('%s is absent (scripts/setup creates .venv-3.13 where '
                    'pyenv 3.13 is installed)' % (master_python,))
    children = [interpreters.find(v) for v in ('2.7', '3.6')]
    children = [c for c in children if c is not None]
    if not children:
        pytest.skip('neither python2.7 nor python3.6 is installed')
    script = tmp_path / 'master_script.py'
    script.write_text(MASTER_SCRIPT)
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    if pythonpath == 'checkout':
        env['PYTHONPATH'] = CHECKOUT_PATH

    proc = subprocess.run(
        [master_python, str(script)] + [c.path for c in children],
        cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
    )

    assert proc.returncode == 0, proc.stderr.decode('utf-8', 'replace')
    out = json.loads(proc.stdout.decode('utf-8').splitlines()[-1])
    master_version = subprocess.check_output(
        [master_python, '-c', interpreters._PROBE]).decode().strip()
    assert out['master'] == master_version
    assert out['children'] == [[42, c.version] for c in children]
    if pythonpath == 'checkout':
        assert out['mitogen_path'] == [
            os.path.join(p, 'mitogen') for p in CHECKOUT_PATH.split(os.pathsep)
        ]
