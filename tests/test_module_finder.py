"""
Specification of the master's module finder (:mod:`mitogen.master`,
``ModuleFinder`` and ``neutralize_main``): which modules a child may be sent,
with what source, package contents and preloading list.

Every test builds throwaway packages on disk with the ``site`` fixture, so
the finder runs against real files and the real import machinery.
"""
import importlib
import importlib.machinery
import importlib.util
import os
import py_compile
import sys
import types
import zipfile

import pytest

import mitogen.master as master
import sites
from mitogen.master import ModuleFinder, ModuleSource, neutralize_main


@pytest.fixture
def site(tmp_path, monkeypatch):
    """
    ``site(files, root='site')`` writes ``files`` ({relative path: text or
    bytes}; a path ending in ``/`` makes a directory) under
    ``tmp_path/root`` and puts that directory first on ``sys.path``
    (:func:`sites.builder`).  Every module of those top-level names is
    dropped from ``sys.modules`` again afterwards.
    """
    yield from sites.builder(tmp_path, monkeypatch)


@pytest.fixture
def finder():
    return ModuleFinder()


def fake_main(monkeypatch, **attrs):
    module = types.ModuleType('__main__')
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, '__main__', module)
    return module


def stdlib_extension_module():
    """Name of a standard library extension module of this Python."""
    for name in ('_ssl', '_json', '_struct', 'math', 'select', '_socket'):
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is not None and isinstance(
                spec.loader, importlib.machinery.ExtensionFileLoader):
            return name, os.path.basename(spec.origin)
    pytest.skip('this Python has no stdlib extension module on sys.path')


EXT = importlib.machinery.EXTENSION_SUFFIXES[0]


# -- find(): plain modules and packages ---------------------------------

def test_plain_module_is_found_with_its_exact_source(site, finder):
    root = site({'mf_plain.py': b'import os\r\nX = 1\n'})

    found = finder.find('mf_plain')

    assert found == ModuleSource(
        fullname='mf_plain',
        path=str(root / 'mf_plain.py'),
        source=b'import os\r\nX = 1\n',
        is_pkg=False,
        is_namespace=False,
        pkg_present=None,
    )


def test_package_is_found_through_its_init(site, finder):
    root = site({'mf_pkg/__init__.py': 'A = 1\n', 'mf_pkg/a.py': ''})

    found = finder.find('mf_pkg')

    assert found.path == str(root / 'mf_pkg' / '__init__.py')
    assert found.source == b'A = 1\n'
    assert found.is_pkg and not found.is_namespace


def test_nested_subpackages_are_found_from_the_top_down(site, finder):
    root = site({
        'mf_nest/__init__.py': '',
        'mf_nest/sub/__init__.py': '',
        'mf_nest/sub/deep/__init__.py': '',
        'mf_nest/sub/deep/mod.py': 'Y = 2\n',
    })

    assert finder.find('mf_nest.sub.deep').is_pkg
    found = finder.find('mf_nest.sub.deep.mod')
    assert found.path == str(root / 'mf_nest/sub/deep/mod.py')
    assert found.source == b'Y = 2\n'
    assert not found.is_pkg


def test_the_finder_never_imports_what_it_finds(site, finder):
    site({
        'mf_noimp/__init__.py': 'from . import sub\nraise RuntimeError("!")\n',
        'mf_noimp/sub.py': 'raise RuntimeError("imported!")\n',
    })

    assert finder.find('mf_noimp') is not None
    assert finder.find('mf_noimp.sub') is not None
    assert finder.find_related('mf_noimp') == ['mf_noimp.sub']
    assert 'mf_noimp' not in sys.modules
    assert 'mf_noimp.sub' not in sys.modules


def test_source_keeps_its_encoding_declaration_and_bytes(site, finder):
    source = b'# -*- coding: latin-1 -*-\nNAME = "caf\xe9"\n'
    site({'mf_latin.py': source})

    found = finder.find('mf_latin')

    assert found.source == source
    namespace = {}
    exec(compile(found.source, found.path, 'exec'), namespace)
    assert namespace['NAME'] == 'caf\u00e9'


@pytest.mark.parametrize('fullname', [
    'mf_absent',
    'mf_miss.nothing',
    'mf_miss.mod.attr',  # a plain module has no submodules
])
def test_missing_module_is_none_without_a_reason(site, finder, fullname):
    site({'mf_miss/__init__.py': '', 'mf_miss/mod.py': 'attr = 1\n'})

    assert finder.find(fullname) is None
    assert finder.why_not_served(fullname) is None
    assert finder.find_related(fullname) == []


@pytest.mark.parametrize('fullname', [
    '', '.', '.mf_valid', 'mf_valid.', 'mf_valid..mod', '../mf_valid',
    'mf_valid/mod', 'mf_valid.mod/..', '/etc/passwd', 'mf_valid.\0',
    'mf_valid.-x', None, 42,
])
def test_names_that_are_not_dotted_identifiers_are_never_looked_up(
        site, finder, fullname):
    site({'mf_valid/__init__.py': '', 'mf_valid/mod.py': ''})

    assert finder.find(fullname) is None
    assert finder.why_not_served(fullname) is None
    assert finder.find_related(fullname) == []


def test_absurdly_deep_names_end_at_the_first_missing_package(site, finder):
    site({'mf_long/__init__.py': ''})

    for fullname in ['mf_long' + '.x' * 20000, 'mf_nope' + '.x' * 20000]:
        assert finder.find(fullname) is None
        assert finder.why_not_served(fullname) is None
        assert finder.find_related(fullname) == []


# -- pkg_present ---------------------------------------------------------

def test_pkg_present_lists_servable_submodules_from_the_directory(
        site, finder):
    root = site({
        'mf_list/__init__.py': '',
        'mf_list/alpha.py': '',
        'mf_list/beta/__init__.py': '',
        'mf_list/beta/inner.py': '',  # not direct
        'mf_list/data/readme.txt': '',  # no __init__: a namespace package
        'mf_list/notes.txt': '',
        'mf_list/not-a-name.py': '',
        'mf_list/not-a-name/__init__.py': '',
        'mf_list/__pycache__/alpha.cpython-311.pyc': b'',
        'mf_list/_speedups' + EXT: b'',
        'mf_list/compiled/__init__' + EXT: b'',
    })
    py_compile.compile(
        str(root / 'mf_list/alpha.py'), cfile=str(root / 'mf_list/old.pyc'))

    found = finder.find('mf_list')

    assert found.pkg_present == ['mf_list.alpha', 'mf_list.beta',
                                 'mf_list.data']
    assert finder.find('mf_list.beta').pkg_present == ['mf_list.beta.inner']


def test_pkg_present_of_a_package_without_submodules_is_empty(site, finder):
    site({'mf_lonely/__init__.py': ''})

    assert finder.find('mf_lonely').pkg_present == []


def test_pkg_present_sees_directories_added_to_an_imported_packages_path(
        site, finder):
    # The mitogen package itself spans one directory per distribution this
    # way.
    init = ("__path__ = __import__('pkgutil').extend_path(__path__, "
            "__name__)\n")
    site({'mf_split/__init__.py': init, 'mf_split/first.py': ''}, root='a')
    b = site({'mf_split/__init__.py': init, 'mf_split/second.py': ''},
             root='b')
    importlib.import_module('mf_split')

    found = finder.find('mf_split')

    assert found.pkg_present == ['mf_split.first', 'mf_split.second']
    assert finder.find('mf_split.first').path.endswith('first.py')
    assert finder.find('mf_split.second').path == str(
        b / 'mf_split' / 'second.py')


# -- Namespace packages --------------------------------------------------

def test_namespace_package_spans_every_sys_path_portion(site, finder):
    a = site({'mf_ns/one.py': 'ONE = 1\n'}, root='a')
    b = site({'mf_ns/two/__init__.py': ''}, root='b')

    found = finder.find('mf_ns')

    assert found == ModuleSource(
        fullname='mf_ns',
        path=None,
        source=b'',
        is_pkg=True,
        is_namespace=True,
        pkg_present=['mf_ns.one', 'mf_ns.two'],
    )
    assert finder.find('mf_ns.one').path == str(a / 'mf_ns' / 'one.py')
    assert finder.find('mf_ns.two').path == str(
        b / 'mf_ns' / 'two' / '__init__.py')


def test_namespace_subpackage_of_a_package_the_master_never_imported(
        site, finder):
    root = site({
        'mf_nsub/__init__.py': '',
        'mf_nsub/plugins/extra.py': 'E = 1\n',
    })

    found = finder.find('mf_nsub.plugins')

    assert found.is_namespace and found.is_pkg
    assert found.pkg_present == ['mf_nsub.plugins.extra']
    assert finder.find('mf_nsub.plugins.extra').path == str(
        root / 'mf_nsub/plugins/extra.py')
    assert 'mf_nsub' not in sys.modules


# -- Modules known from sys.modules --------------------------------------

def test_package_that_replaced_itself_in_sys_modules_is_found_on_disk(
        site, finder):
    root = site({
        'mf_selfrep/__init__.py': '''
            import sys

            class _Facade(object):
                def __getattr__(self, name):
                    raise AssertionError('finder touched the facade')

            sys.modules[__name__] = _Facade()
        ''',
        'mf_selfrep/impl.py': 'Z = 3\n',
    })
    importlib.import_module('mf_selfrep')
    assert not isinstance(sys.modules['mf_selfrep'], types.ModuleType)

    found = finder.find('mf_selfrep')

    assert found.path == str(root / 'mf_selfrep' / '__init__.py')
    assert b'_Facade' in found.source
    assert found.pkg_present == ['mf_selfrep.impl']
    assert finder.find('mf_selfrep.impl').source == b'Z = 3\n'


def test_imported_module_is_served_after_its_directory_left_sys_path(
        site, finder):
    root = site({'mf_gone.py': 'G = 1\n'})
    importlib.import_module('mf_gone')
    sys.path.remove(str(root))
    importlib.invalidate_caches()

    found = finder.find('mf_gone')

    assert found.path == str(root / 'mf_gone.py')
    assert found.source == b'G = 1\n'


def test_imported_package_serves_submodules_after_it_left_sys_path(
        site, finder):
    root = site({'mf_gonepkg/__init__.py': '', 'mf_gonepkg/sub.py': 'S = 1\n'})
    importlib.import_module('mf_gonepkg')
    sys.path.remove(str(root))
    importlib.invalidate_caches()

    assert finder.find('mf_gonepkg').pkg_present == ['mf_gonepkg.sub']
    assert finder.find('mf_gonepkg.sub').source == b'S = 1\n'


def test_module_registered_under_another_name_is_not_served(
        site, finder, monkeypatch):
    root = site({'mf_real.py': 'R = 1\n'})
    module = importlib.import_module('mf_real')
    sys.path.remove(str(root))
    importlib.invalidate_caches()
    monkeypatch.setitem(sys.modules, 'mf_alias', module)

    assert finder.find('mf_alias') is None


def test_lazy_module_in_sys_modules_is_not_triggered(
        site, finder, monkeypatch):
    root = site({'mf_lazy.py': 'raise RuntimeError("loaded!")\n'})
    spec = importlib.util.find_spec('mf_lazy')
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, 'mf_lazy', module)
    sys.path.remove(str(root))
    importlib.invalidate_caches()

    assert finder.find('mf_lazy').source.startswith(b'raise')


# -- Refusals -------------------------------------------------------------

@pytest.mark.parametrize('fullname', ['json', 'json.decoder', 'os', 'email.mime'])
def test_standard_library_is_refused(finder, fullname):
    assert finder.why_not_served(fullname) == (
        "%r is part of the standard library of the master's Python; "
        'children use their own' % (fullname,))
    assert finder.find(fullname) is None
    assert finder.find_related(fullname) == []


def test_standard_library_is_recognised_by_location_without_name_list(
        site, finder, monkeypatch):
    # Python 3.9 has no sys.stdlib_module_names.
    monkeypatch.delattr(sys, 'stdlib_module_names', raising=False)
    site({'mf_user.py': ''})

    assert 'standard library' in finder.why_not_served('json')
    assert 'standard library' in finder.why_not_served('email.mime')
    assert finder.why_not_served('mf_user') is None
    # site-packages sits inside the stdlib directory, but is not part of it.
    assert finder.why_not_served('pytest') is None


@pytest.mark.parametrize('fullname', ['sys', 'builtins', '_imp'])
def test_built_in_module_is_refused(finder, fullname):
    assert fullname in sys.builtin_module_names

    assert finder.why_not_served(fullname) == (
        '%r is a built-in module' % (fullname,))
    assert finder.find(fullname) is None


def test_stdlib_extension_module_is_refused_naming_its_file(finder):
    name, filename = stdlib_extension_module()

    assert finder.why_not_served(name) == (
        '%r is a native extension module (%s) and cannot be sent to a child'
        % (name, filename))
    assert finder.find(name) is None


def test_extension_module_in_a_user_package_is_refused(site, finder):
    site({'mf_ext/__init__.py': '', 'mf_ext/_speedups' + EXT: b'\x7fELF'})

    assert finder.why_not_served('mf_ext._speedups') == (
        "'mf_ext._speedups' is a native extension module (_speedups%s) and "
        'cannot be sent to a child' % (EXT,))
    assert finder.find('mf_ext._speedups') is None
    assert finder.why_not_served('mf_ext') is None


def test_module_available_only_as_bytecode_is_refused(site, finder):
    root = site({'mf_pyc/__init__.py': '', 'mf_pyc/src.py': 'B = 1\n'})
    py_compile.compile(
        str(root / 'mf_pyc/src.py'), cfile=str(root / 'mf_pyc/old.pyc'))

    assert finder.why_not_served('mf_pyc.old') == (
        "'mf_pyc.old' is only available as bytecode (old.pyc) without "
        'source, and cannot be sent to a child')
    assert finder.find('mf_pyc.old') is None


def test_module_inside_a_zip_archive_is_refused(
        site, tmp_path, finder, monkeypatch):
    archive = tmp_path / 'bundle.zip'
    with zipfile.ZipFile(str(archive), 'w') as zf:
        zf.writestr('mf_zipped.py', 'Z = 1\n')
    monkeypatch.syspath_prepend(str(archive))

    reason = finder.why_not_served('mf_zipped')

    assert reason == (
        "'mf_zipped' was found at %r, which is not a Python source file on "
        "the master's file system" % (os.path.join(str(archive), 'mf_zipped.py'),))
    assert finder.find('mf_zipped') is None


def test_servable_module_has_no_reason(site, finder):
    site({'mf_fine/__init__.py': '', 'mf_fine/mod.py': ''})

    assert finder.why_not_served('mf_fine') is None
    assert finder.why_not_served('mf_fine.mod') is None


# -- __main__ -------------------------------------------------------------

MAIN_SOURCE = b'''\
import os


def helper():
    return 42


if __name__ == '__main__':
    helper()
    print('running')
'''


def test_main_is_served_from_its_file_without_the_guard(
        tmp_path, finder, monkeypatch):
    script = tmp_path / 'prog.py'
    script.write_bytes(MAIN_SOURCE)
    fake_main(monkeypatch, __file__=str(script))

    found = finder.find('__main__')

    assert found == ModuleSource(
        fullname='__main__',
        path=str(script),
        source=b'import os\n\n\ndef helper():\n    return 42\n\n\n',
        is_pkg=False,
        is_namespace=False,
        pkg_present=None,
    )
    assert finder.why_not_served('__main__') is None


def test_interactive_main_without_a_file_is_not_found(finder, monkeypatch):
    fake_main(monkeypatch)

    assert finder.find('__main__') is None
    assert finder.why_not_served('__main__') is None
    assert finder.find_related('__main__') == []


def test_main_run_from_bytecode_is_refused(tmp_path, finder, monkeypatch):
    script = tmp_path / 'prog.py'
    script.write_bytes(MAIN_SOURCE)
    compiled = py_compile.compile(str(script), cfile=str(tmp_path / 'prog.pyc'))
    fake_main(monkeypatch, __file__=compiled)

    assert finder.find('__main__') is None
    assert finder.why_not_served('__main__') == (
        "'__main__' is only available as bytecode (prog.pyc) without source, "
        'and cannot be sent to a child')


# -- neutralize_main -------------------------------------------------------

@pytest.mark.parametrize('source, expected', [
    pytest.param(
        b"x = 1\nif __name__ == '__main__':\n    main()\n",
        b'x = 1\n', id='single-quotes'),
    pytest.param(
        b'x = 1\nif __name__ == "__main__":\n    main()\n',
        b'x = 1\n', id='double-quotes'),
    pytest.param(
        b'x = 1\nif "__main__" == __name__:\n    main()\n',
        b'x = 1\n', id='reversed'),
    pytest.param(
        b"x = 1\nif (__name__ == '__main__'):\n    main()\n",
        b'x = 1\n', id='parenthesised'),
    pytest.param(
        b"x = 1\nif __name__ == '__main__':\n    main()\nelse:\n    y = 2\n"
        b"def later():\n    pass\n",
        b'x = 1\n', id='guard-else-and-everything-after'),
    pytest.param(
        b"x = 1\nif __name__ == '__main__':\n    a()\n"
        b"if __name__ == '__main__':\n    b()\n",
        b'x = 1\n', id='first-of-two-guards'),
    pytest.param(
        b"if __name__ == '__main__':\n    main()\n",
        b'', id='guard-on-first-line'),
    pytest.param(
        b"x = 1\r\ny = 2\r\nif __name__ == '__main__':\r\n    main()\r\n",
        b'x = 1\r\ny = 2\r\n', id='crlf'),
    pytest.param(
        b"x = 1\ry = 2\rif __name__ == '__main__':\r    main()\r",
        b'x = 1\ry = 2\r', id='cr'),
    pytest.param(
        b"# -*- coding: latin-1 -*-\nname = 'caf\xe9'\n"
        b"if __name__ == '__main__':\n    main()\n",
        b"# -*- coding: latin-1 -*-\nname = 'caf\xe9'\n", id='latin-1'),
    pytest.param(
        b'"""Doc\nif __name__ == "__main__":\n"""\n'
        b"x = 1\nif __name__ == '__main__':\n    main()\n",
        b'"""Doc\nif __name__ == "__main__":\n"""\nx = 1\n',
        id='guard-text-inside-a-docstring-is-not-a-guard'),
])
def test_neutralize_main_removes_the_first_guard_and_everything_after(
        source, expected):
    result = neutralize_main(source)

    assert result == expected
    compile(result, 'main.py', 'exec')


@pytest.mark.parametrize('source', [
    pytest.param(b'x = 1\ndef main():\n    pass\n', id='no-guard'),
    pytest.param(
        b"def f():\n    if __name__ == '__main__':\n        main()\n",
        id='guard-not-at-top-level'),
    pytest.param(
        b"if __name__ != '__main__':\n    x = 1\n", id='not-equal'),
    pytest.param(
        b"if __name__ == '__main__' and ok:\n    main()\n",
        id='compound-condition'),
    pytest.param(b"if __name__ == 'other':\n    main()\n", id='other-name'),
    pytest.param(b'print "py2"\nif __name__ == "__main__":\n    main()\n',
                 id='unparsable'),
    pytest.param(b'', id='empty'),
])
def test_neutralize_main_leaves_source_without_a_top_level_guard_alone(source):
    assert neutralize_main(source) == source


def test_neutralize_main_keeps_line_numbers_of_what_remains():
    source = (b'"""Doc."""\n\nimport os\n\n\ndef five():\n    pass\n\n'
              b"if __name__ == '__main__':\n    five()\n")
    namespace = {}

    exec(compile(neutralize_main(source), 'main.py', 'exec'), namespace)

    assert namespace['five'].__code__.co_firstlineno == 6


# -- find_related: import forms -------------------------------------------

REL_TREE = {
    'mf_rel/__init__.py': '',
    'mf_rel/a.py': '',
    'mf_rel/b.py': '',
    'mf_rel/sub/__init__.py': '',
    'mf_rel/sub/c.py': '',
    'mf_rel/sub/deep/__init__.py': 'VALUE = 1\n',
    'mf_rel/sub/deep/d.py': '',
    'mf_rel/sub/deep/dpkg/__init__.py': '',
    'mf_rel/sub/deep/dpkg/leaf.py': '',
}


@pytest.mark.parametrize('body, expected', [
    pytest.param('import mf_rel.a', ['mf_rel.a'], id='import-absolute'),
    pytest.param('import mf_rel.sub.c as c', ['mf_rel.sub.c'],
                 id='import-as'),
    pytest.param('import mf_rel.a, mf_rel.b', ['mf_rel.a', 'mf_rel.b'],
                 id='import-several'),
    pytest.param('from mf_rel import a, b', ['mf_rel.a', 'mf_rel.b'],
                 id='from-absolute'),
    pytest.param('from . import d', ['mf_rel.sub.deep.d'],
                 id='from-dot-submodule'),
    pytest.param('from . import VALUE, d', ['mf_rel.sub.deep.d'],
                 id='from-dot-attribute-is-not-a-module'),
    pytest.param('from .. import c', ['mf_rel.sub.c'], id='level-2'),
    pytest.param('from ... import a, b', ['mf_rel.a', 'mf_rel.b'],
                 id='level-3'),
    pytest.param('from ...sub import c', ['mf_rel.sub.c'],
                 id='level-3-with-module'),
    pytest.param('from .d import anything', ['mf_rel.sub.deep.d'],
                 id='from-dot-module-attribute'),
    pytest.param('from .dpkg import leaf',
                 ['mf_rel.sub.deep.dpkg', 'mf_rel.sub.deep.dpkg.leaf'],
                 id='from-dot-package-submodule'),
    pytest.param('from .... import a', [], id='beyond-the-top-level'),
    pytest.param('from mf_rel import *', [], id='star-of-an-ancestor'),
    pytest.param('from .dpkg import *', ['mf_rel.sub.deep.dpkg'],
                 id='star-of-a-package'),
    pytest.param('def f():\n    import mf_rel.a', ['mf_rel.a'],
                 id='inside-a-function'),
    pytest.param('try:\n    import mf_rel.a\nexcept ImportError:\n'
                 '    import mf_rel.b', ['mf_rel.a', 'mf_rel.b'],
                 id='inside-try-and-except'),
    pytest.param('if TYPE_CHECKING:\n    from mf_rel import b', ['mf_rel.b'],
                 id='inside-if'),
    pytest.param('class K:\n    def m(self):\n        with x:\n'
                 '            for i in y:\n                from mf_rel import b',
                 ['mf_rel.b'], id='deeply-nested'),
    pytest.param('import json, os\nfrom collections import OrderedDict', [],
                 id='standard-library'),
    pytest.param('import pytest', [], id='another-top-level-package'),
    pytest.param('__import__("mf_rel.a")', [], id='dunder-import-ignored'),
    pytest.param('import importlib\nimportlib.import_module("mf_rel.a")', [],
                 id='importlib-ignored'),
    pytest.param('import mf_rel.missing\nfrom mf_rel import nothing', [],
                 id='missing-modules'),
    pytest.param('x = "import mf_rel.a"\n# import mf_rel.b', [],
                 id='strings-and-comments'),
    pytest.param('from .d import x\nimport mf_rel.a', ['mf_rel.sub.deep.d',
                                                         'mf_rel.a'],
                 id='source-order'),
])
def test_related_modules_of_each_import_form(site, finder, body, expected):
    site(dict(REL_TREE, **{'mf_rel/sub/deep/target.py': body + '\n'}))

    assert finder.find_related('mf_rel.sub.deep.target') == expected


def test_relative_imports_of_a_package_are_relative_to_itself(site, finder):
    site(dict(REL_TREE, **{'mf_rel/sub/__init__.py': 'from . import c\n'}))

    assert finder.find_related('mf_rel.sub') == ['mf_rel.sub.c']


def test_relative_imports_of_a_module_are_relative_to_its_parent(
        site, finder):
    site(dict(REL_TREE, **{'mf_rel/sub/c.py': 'from . import deep\n'}))

    assert finder.find_related('mf_rel.sub.c') == ['mf_rel.sub.deep']


@pytest.mark.skipif(sys.version_info < (3, 10), reason='match needs 3.10')
def test_imports_inside_match_cases_count(site, finder):
    body = 'match x:\n    case 1:\n        import mf_rel.a\n'
    site(dict(REL_TREE, **{'mf_rel/sub/deep/target.py': body}))

    assert finder.find_related('mf_rel.sub.deep.target') == ['mf_rel.a']


# -- find_related: the graph ---------------------------------------------

def test_related_modules_are_transitive_and_dependency_first(site, finder):
    site({
        'mf_dep/__init__.py': 'from . import api\n',
        'mf_dep/api.py': 'from .core import engine\nfrom . import util\n',
        'mf_dep/core/__init__.py': '',
        'mf_dep/core/engine.py': 'from mf_dep import util\n',
        'mf_dep/util.py': 'import os\n',
    })

    related = finder.find_related('mf_dep')

    assert related == ['mf_dep.core', 'mf_dep.util', 'mf_dep.core.engine',
                       'mf_dep.api']


def test_related_modules_exclude_the_module_and_its_ancestors(site, finder):
    site({
        'mf_self/__init__.py': 'from . import sub\n',
        'mf_self/sub/__init__.py': 'from . import mod\nimport mf_self\n',
        'mf_self/sub/mod.py': 'import mf_self.sub.mod\nimport mf_self.other\n',
        'mf_self/other.py': '',
    })

    assert finder.find_related('mf_self.sub.mod') == ['mf_self.other']


def test_related_modules_stay_inside_the_top_level_package(site, finder):
    site({
        'mf_home/__init__.py': 'import mf_away\nfrom . import near\n',
        'mf_home/near.py': 'import mf_away.far\n',
        'mf_away/__init__.py': '',
        'mf_away/far.py': '',
    })

    assert finder.find_related('mf_home') == ['mf_home.near']


def test_import_cycles_terminate_with_each_module_once(site, finder):
    site({
        'mf_cyc/__init__.py': '',
        'mf_cyc/a.py': 'from . import b\n',
        'mf_cyc/b.py': 'from . import c\n',
        'mf_cyc/c.py': 'from . import a, b\n',
    })

    assert finder.find_related('mf_cyc.a') == ['mf_cyc.c', 'mf_cyc.b']


def test_packages_come_before_their_submodules_even_through_a_cycle(
        site, finder):
    # mf_pc.p imports mf_pc.q, which imports mf_pc.p.c while mf_pc.p is
    # still being walked: dependency order alone would put mf_pc.p.c first.
    site({
        'mf_pc/__init__.py': '',
        'mf_pc/r.py': 'import mf_pc.p\n',
        'mf_pc/p/__init__.py': 'from mf_pc import q\n',
        'mf_pc/p/c.py': '',
        'mf_pc/q.py': 'from mf_pc.p import c\n',
    })

    assert finder.find_related('mf_pc.r') == ['mf_pc.p', 'mf_pc.p.c',
                                              'mf_pc.q']


def test_related_modules_list_parents_of_a_deep_import(site, finder):
    site({
        'mf_deep/__init__.py': '',
        'mf_deep/top.py': 'import mf_deep.x.y.z\n',
        'mf_deep/x/__init__.py': '',
        'mf_deep/x/y/__init__.py': '',
        'mf_deep/x/y/z.py': '',
    })

    assert finder.find_related('mf_deep.top') == [
        'mf_deep.x', 'mf_deep.x.y', 'mf_deep.x.y.z']


def test_related_modules_skip_unservable_ones(site, finder):
    root = site({
        'mf_skip/__init__.py': 'from . import _speedups, old, fine\n',
        'mf_skip/_speedups' + EXT: b'',
        'mf_skip/fine.py': '',
        'mf_skip/src.py': '',
    })
    py_compile.compile(
        str(root / 'mf_skip/src.py'), cfile=str(root / 'mf_skip/old.pyc'))

    assert finder.find_related('mf_skip') == ['mf_skip.fine']


def test_related_modules_include_namespace_subpackages(site, finder):
    site({
        'mf_nsrel/__init__.py': 'from .plugins import extra\n',
        'mf_nsrel/plugins/extra.py': '',
    })

    assert finder.find_related('mf_nsrel') == [
        'mf_nsrel.plugins', 'mf_nsrel.plugins.extra']


def test_related_modules_are_deterministic(site):
    files = {'mf_det/__init__.py': 'from . import %s\n' % ', '.join(
        'm%02d' % i for i in range(20))}
    files.update({'mf_det/m%02d.py' % i: 'from . import m%02d\n' % ((i * 7) % 20)
                  for i in range(20)})
    site(files)

    first = ModuleFinder().find_related('mf_det')

    assert len(first) == 20
    assert ModuleFinder().find_related('mf_det') == first


def test_sixty_module_package_is_preloaded_in_dependency_order(site, finder):
    # A chain: every module imports the one before it, so the whole package
    # is related to mf_big.last and must arrive first to last.
    files = {'mf_big/__init__.py': ''}
    names = []
    for sub in range(5):
        files['mf_big/s%d/__init__.py' % sub] = ''
        names.append('mf_big.s%d' % sub)
        for i in range(11):
            names.append('mf_big.s%d.m%02d' % (sub, i))
    for before, name in zip(['mf_big'] + names, names):
        path = name.replace('.', '/')
        if name.count('.') == 1:
            path += '/__init__'
        files[path + '.py'] = 'import %s\n' % (before,)
    files['mf_big/last.py'] = 'import %s\n' % (names[-1],)
    site(files)

    related = finder.find_related('mf_big.last')

    assert len(related) == 60
    assert related == names


# -- find_related: source problems and caching ---------------------------

def test_syntax_error_in_scanned_source_means_no_related_modules(
        site, finder):
    site({
        'mf_syn/__init__.py': '',
        'mf_syn/bad.py': 'import mf_syn.good\ndef broken(:\n    pass\n'
                         'import mf_syn.other\n',
        'mf_syn/good.py': '',
        'mf_syn/other.py': '',
        'mf_syn/user.py': 'from . import bad\n',
    })

    assert finder.find_related('mf_syn.bad') == []
    assert finder.find_related('mf_syn.user') == ['mf_syn.bad']
    assert finder.find('mf_syn.bad') is not None


def test_python2_only_source_is_served_without_related_modules(site, finder):
    source = b'print "hello"\nimport mf_py2.helper\nexec "x = 1"\n'
    site({'mf_py2/__init__.py': '', 'mf_py2/old.py': source,
          'mf_py2/helper.py': ''})

    assert finder.find('mf_py2.old').source == source
    assert finder.find_related('mf_py2.old') == []


def test_source_with_null_bytes_has_no_related_modules(site, finder):
    site({'mf_nul/__init__.py': '', 'mf_nul/m.py': b'import mf_nul.x\0\n',
          'mf_nul/x.py': ''})

    assert finder.find_related('mf_nul.m') == []


def test_scans_are_cached_until_the_file_changes(site, finder, monkeypatch):
    root = site({
        'mf_cache/__init__.py': '',
        'mf_cache/a.py': 'from . import b\n',
        'mf_cache/b.py': '',
        'mf_cache/c.py': '',
    })
    scanned = []
    real_scan = master._scan_imports

    def counting_scan(source, filename):
        scanned.append(os.path.basename(filename))
        return real_scan(source, filename)

    monkeypatch.setattr(master, '_scan_imports', counting_scan)

    assert finder.find_related('mf_cache.a') == ['mf_cache.b']
    assert finder.find_related('mf_cache.a') == ['mf_cache.b']
    assert sorted(scanned) == ['a.py', 'b.py']

    path = root / 'mf_cache' / 'a.py'
    path.write_bytes(b'from . import b, c\n')
    stat = os.stat(str(path))
    os.utime(str(path), ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    assert finder.find_related('mf_cache.a') == ['mf_cache.b', 'mf_cache.c']


# -- find_related for __main__ --------------------------------------------

def test_main_related_lists_servable_imports_without_following_them(
        site, tmp_path, finder, monkeypatch):
    site({
        'mf_app/__init__.py': 'from . import heavy\n',
        'mf_app/heavy.py': '',
        'mf_app/util.py': '',
        'mf_app/cli_only.py': '',
        'mf_lib.py': 'import mf_app.heavy\n',
    })
    script = tmp_path / 'prog.py'
    script.write_text(
        'import json\nimport mf_lib\nfrom mf_app import util\n'
        'import mf_missing\n'
        "if __name__ == '__main__':\n    import mf_app.cli_only\n")
    fake_main(monkeypatch, __file__=str(script), __package__=None)

    assert finder.find_related('__main__') == ['mf_lib', 'mf_app',
                                               'mf_app.util']


def test_main_run_as_package_module_follows_its_own_package(
        site, finder, monkeypatch):
    # python -m mf_tool.cli
    root = site({
        'mf_tool/__init__.py': '',
        'mf_tool/cli.py': 'from . import helper\nimport mf_other\n',
        'mf_tool/helper.py': 'from .base import thing\n',
        'mf_tool/base.py': '',
        'mf_other/__init__.py': 'from . import deep\n',
        'mf_other/deep.py': '',
    })
    spec = importlib.util.spec_from_file_location(
        'mf_tool.cli', str(root / 'mf_tool/cli.py'))
    fake_main(monkeypatch, __file__=spec.origin, __spec__=spec,
              __package__='mf_tool')

    assert finder.find_related('__main__') == [
        'mf_tool', 'mf_tool.base', 'mf_tool.helper', 'mf_other']


# -- Resources -------------------------------------------------------------

@pytest.fixture
def resource_tree(site, tmp_path):
    root = site({
        'mf_res/__init__.py': '',
        'mf_res/data.txt': b'top data',
        'mf_res/sub/inner.bin': b'\x00\x01inner',
        'mf_res/sub/deeper/leaf.txt': b'leaf',
    })
    (tmp_path / 'outside.txt').write_bytes(b'secret')
    package = root / 'mf_res'
    os.symlink(str(tmp_path / 'outside.txt'), str(package / 'escape.txt'))
    os.symlink(str(tmp_path), str(package / 'escape_dir'))
    os.symlink(str(package / 'data.txt'), str(package / 'sub' / 'alias.txt'))
    return package


@pytest.mark.parametrize('resource, expected', [
    ('data.txt', b'top data'),
    ('sub/inner.bin', b'\x00\x01inner'),
    ('sub/deeper/leaf.txt', b'leaf'),
    ('sub/alias.txt', b'top data'),  # a link that stays inside is fine
    ('missing.txt', None),
    ('sub', None),  # a directory
    ('__init__.py', b''),
])
def test_get_resource_reads_files_inside_the_package(
        resource_tree, finder, resource, expected):
    assert finder.get_resource('mf_res', resource) == expected


@pytest.mark.parametrize('resource', [
    '../outside.txt',
    'sub/../data.txt',
    './data.txt',
    'sub//inner.bin',
    'sub/',
    '',
    '/etc/passwd',
    'escape.txt',
    'escape_dir/outside.txt',
    'data.txt\0',
    None,
])
def test_get_resource_refuses_paths_leaving_the_package(
        resource_tree, finder, resource):
    assert finder.get_resource('mf_res', resource) is None


def test_get_resource_of_an_unservable_or_missing_package_is_none(
        resource_tree, finder):
    assert finder.get_resource('json', '__init__.py') is None
    assert finder.get_resource('mf_nothing', 'data.txt') is None


def test_get_resource_refuses_an_absolute_path_even_inside_the_package(
        resource_tree, finder):
    assert finder.get_resource('mf_res', str(resource_tree / 'data.txt')) is None


def test_resources_of_a_data_directory_without_init(resource_tree, finder):
    # mf_res/sub has no __init__.py, which makes it a namespace package.
    assert finder.get_resource('mf_res.sub', 'inner.bin') == b'\x00\x01inner'


def test_get_resource_searches_every_namespace_portion(site, finder):
    site({'mf_nsres/first.txt': b'1', 'mf_nsres/both.txt': b'a'}, root='a')
    site({'mf_nsres/second.txt': b'2', 'mf_nsres/both.txt': b'b'}, root='b')

    assert finder.get_resource('mf_nsres', 'first.txt') == b'1'
    assert finder.get_resource('mf_nsres', 'second.txt') == b'2'
    # sys.path order decides, as it does for imports: 'b' was prepended last.
    assert finder.get_resource('mf_nsres', 'both.txt') == b'b'


def test_list_resources_of_the_package_directory(resource_tree, finder):
    assert finder.list_resources('mf_res') == [
        ('__init__.py', False),
        ('data.txt', False),
        ('sub', True),
    ]


def test_list_resources_of_a_subdirectory(resource_tree, finder):
    assert finder.list_resources('mf_res', 'sub') == [
        ('alias.txt', False),
        ('deeper', True),
        ('inner.bin', False),
    ]
    assert finder.list_resources('mf_res', 'sub/deeper') == [
        ('leaf.txt', False)]


@pytest.mark.parametrize('subdir', [
    '..', 'sub/..', '/', '/tmp', 'escape_dir', 'missing', 'data.txt', None])
def test_list_resources_refuses_or_misses(resource_tree, finder, subdir):
    assert finder.list_resources('mf_res', subdir) is None


def test_list_resources_merges_namespace_portions(site, finder):
    site({'mf_nslist/a.txt': b'', 'mf_nslist/d/x': b''}, root='a')
    site({'mf_nslist/b.txt': b'', 'mf_nslist/d/y': b''}, root='b')

    assert finder.list_resources('mf_nslist') == [
        ('a.txt', False), ('b.txt', False), ('d', True)]
    assert finder.list_resources('mf_nslist', 'd') == [
        ('x', False), ('y', False)]
