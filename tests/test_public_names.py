"""
Specification of the public names: every module of every distribution has an
``__all__`` that lists exactly the names the API reference (``docs/``)
documents at module level, leaving out those with a leading underscore
(compatibility hooks that star-imports never export); ``from mitogen.X
import *`` binds exactly ``__all__``, in the master and, for modules that run
in children, in a Python 2.7 and a 3.13 child; and a vendored core exports
the same names.

:ref:`public-names` in the API reference states the rule.
"""
import glob
import os
import re
import shutil
import subprocess

import pytest

import interpreters
import mitogen.core
import mitogen.master
from support import public_names_funcs as funcs
from waiting import call

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs')

#: Sphinx directives that document a module-level name.  Methods and
#: attributes are members of a class, not names of the module.
DIRECTIVE = re.compile(
    r'^\.\. (?:auto|py:)(function|class|exception|data|decorator)::\s+(.+)$')
MODULE_DIRECTIVE = re.compile(
    r'^\.\. (?:automodule|module|currentmodule|py:module|py:currentmodule)'
    r'::\s+(\S+)')


def source_modules():
    """(module name, path) of every module of every distribution."""
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, 'packages', '*',
                                              'mitogen', '*.py'))):
        stem = os.path.basename(path)[:-len('.py')]
        found.append(('mitogen' if stem == '__init__' else 'mitogen.' + stem,
                      path))
    return found


MODULES = [name for name, _ in source_modules()]
#: Modules that run in children: those not marked master-only.
def runs_in_children(path):
    with open(path) as f:
        return '# master-only module' not in f.read()


CHILD_MODULES = [name for name, path in source_modules()
                 if runs_in_children(path)]


def _qualify(signature, current):
    name = signature.strip().split('(')[0]
    if name.startswith('mitogen.') or name == 'mitogen':
        return name.rpartition('.')[::2]
    return current, name


def documented_names():
    """{module: set of names} documented by a top-level directive of any
    page; ``.. py:function::`` may name several functions, one signature a
    line."""
    names = {}
    for path in sorted(glob.glob(os.path.join(DOCS, '*.rst'))):
        current = None
        with open(path) as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            match = MODULE_DIRECTIVE.match(line)
            if match:
                current = match.group(1)
                names.setdefault(current, set())
                continue
            match = DIRECTIVE.match(line)
            if not match:
                continue
            signatures = [match.group(2)]
            for following in lines[i + 1:]:
                if not following.strip() or following.strip().startswith(':'):
                    break
                signatures.append(following)
            for signature in signatures:
                module, name = _qualify(signature, current)
                names.setdefault(module, set()).add(name)
    return names


DOCUMENTED = documented_names()


def test_the_docs_parser_reads_every_kind_of_entry():
    core = DOCUMENTED['mitogen.core']
    # autoexception, autoclass, autodecorator, autodata, py:data, and the
    # two functions of one py:function directive.
    assert {'CallError', 'Router', 'takes_econtext', 'CALL_FUNCTION',
            'UnicodeType', 'next', 'any'} <= core
    # A page with ``.. module::`` and relative names.
    assert {'Router', 'Select'} <= DOCUMENTED['mitogen.aio']
    # Members are not module names.
    assert '_on_fork' not in core and 'get_ssh_argv' not in \
        DOCUMENTED['mitogen.ssh']


def test_every_module_but_the_command_line_entry_is_documented():
    assert sorted(set(MODULES) - set(DOCUMENTED)) == ['mitogen.__main__']
    assert sorted(set(DOCUMENTED) - set(MODULES)) == []


@pytest.mark.parametrize('modname', MODULES)
def test_all_lists_exactly_the_documented_names(modname):
    module = mitogen.core.import_module(modname)
    public = set(n for n in DOCUMENTED.get(modname, ())
                 if not n.startswith('_'))

    exported = set(module.__all__)

    assert sorted(exported - public) == [], 'in __all__, not documented'
    assert sorted(public - exported) == [], 'documented, not in __all__'
    assert len(module.__all__) == len(exported), 'listed twice'


@pytest.mark.parametrize('modname', MODULES)
def test_documented_underscore_names_exist_and_stay_out_of_all(modname):
    module = mitogen.core.import_module(modname)
    hooks = [n for n in DOCUMENTED.get(modname, ()) if n.startswith('_')]

    for name in hooks:
        assert hasattr(module, name), name
        assert name not in module.__all__


@pytest.mark.parametrize('modname', MODULES)
def test_star_import_binds_exactly_all(modname):
    names, exported, native = funcs.star_import(modname)

    assert names == exported
    assert native


@pytest.fixture(scope='module')
def children():
    """A child of Python 2.7 and of 3.13, where installed, by version."""
    with mitogen.master.Router() as router:
        yield dict((i.version, router.local(python_path=i.path))
                   for i in interpreters.find_interpreters()
                   if i.version in ('2.7', '3.13'))


@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.13']),
                         indirect=True)
@pytest.mark.parametrize('modname', CHILD_MODULES)
def test_star_import_in_a_child(children, interpreter, modname):
    if modname == 'mitogen.paramiko':
        pytest.skip('needs the paramiko extra, which children lack')
    names, exported, native = call(children[interpreter.version],
                                   funcs.star_import, modname)

    assert native
    assert names == exported == sorted(
        mitogen.core.import_module(modname).__all__)


@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.13']),
                         indirect=True)
def test_a_vendored_core_exports_the_same_names(interpreter, tmp_path):
    shutil.copy(mitogen.core.__file__, str(tmp_path / 'vendored_core.py'))
    script = ('from vendored_core import *\n'
              'import vendored_core\n'
              'names = sorted(n for n in dir() if not n.startswith("_")'
              ' and n != "vendored_core")\n'
              'assert names == sorted(vendored_core.__all__), names\n'
              'print(len(names))\n')

    out = subprocess.check_output([interpreter.path, '-E', '-S', '-c', script],
                                  cwd=str(tmp_path))

    assert int(out) == len(mitogen.core.__all__)
