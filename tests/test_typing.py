"""
The public API carries type hints that a type checker and an IDE use: the
installed package is marked typed (``py.typed``), and mypy in strict mode
accepts the examples and the README's first program, and catches a misuse
of the API. Functions of the examples stay unannotated where they run in
children (which may be Python 2.7), so ``--allow-untyped-defs``; every
call into mitogen must be typed (``--disallow-untyped-calls``, part of
``--strict``).
"""
import glob
import importlib.util
import os
import sys
import textwrap

import pytest

from dists import ROOT, run
from test_install import first_program

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec('mypy') is None,
    reason='mypy is not installed (scripts/requirements-test.txt has it)')

EXAMPLES = sorted(glob.glob(os.path.join(ROOT, 'examples', '*.py')))


@pytest.fixture(scope='module')
def typed_venv(built_dists, tmp_path_factory):
    return built_dists.venv(tmp_path_factory.mktemp('typed') / 'venv',
                            'mitogen-master', 'mitogen-ssh')


def mypy(python, paths, tmp_path):
    return run([sys.executable, '-m', 'mypy', '--strict',
                '--allow-untyped-defs', '--no-error-summary',
                '--cache-dir', str(tmp_path / 'mypy-cache'),
                '--python-executable', python] + [str(p) for p in paths],
               check=False, cwd=str(tmp_path))


def test_installed_package_is_marked_typed(typed_venv):
    out = run([typed_venv, '-c',
               'import os, mitogen.core;'
               'print(os.path.exists(os.path.join('
               'os.path.dirname(mitogen.core.__file__), "py.typed")))'])

    assert out.strip() == 'True'


def test_examples_and_first_program_pass_mypy_strict(typed_venv, tmp_path):
    first = tmp_path / 'first.py'
    first.write_text(first_program())

    rc, out = mypy(typed_venv, EXAMPLES + [first], tmp_path)

    assert rc == 0, out
    assert len(EXAMPLES) >= 1


MISUSE = textwrap.dedent('''
    import mitogen.master

    with mitogen.master.Router() as router:
        count: int = router.local()
        router.connect(42)
        router.sudo(username='root').call(len, 'abc').anything
''')


def test_mypy_catches_a_misuse_of_the_api(typed_venv, tmp_path):
    program = tmp_path / 'misuse.py'
    program.write_text(MISUSE)

    rc, out = mypy(typed_venv, [program], tmp_path)

    assert rc == 1
    assert 'misuse.py:5: error: Incompatible types in assignment ' \
        '(expression has type "Context", variable has type "int")' in out
    assert 'misuse.py:6: error: Argument 1 to "connect" of "Router" has ' \
        'incompatible type "int"; expected "str"' in out
    # call() returns Any: no error for line 7.
    assert 'misuse.py:7' not in out
