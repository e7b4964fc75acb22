"""
Specification of importing modules from the master into real children.

Every test builds throwaway packages in ``tmp_path`` that exist only on the
master: their directory is put on the master's ``sys.path`` for the test
and taken off again afterwards.  Children start with their own default
``sys.path`` and no ``PYTHONPATH``, so whatever they import from those
directories can only have come through the importer.  Functions the
children run live in :mod:`support.imp_helpers`; they import by name, so
the master itself never imports the throwaway packages.
"""
import importlib
import importlib.machinery
import os
import shutil
import subprocess
import sys

import pytest

import interpreters
from support import imp_helpers

#: Versions every importer behaviour is checked on: the oldest, the first
#: Python 3 and the newest.
SPREAD = ['2.7', '3.6', '3.13']


def spread(versions=SPREAD):
    return pytest.mark.parametrize(
        'interpreter', interpreters.params(versions), indirect=True)


def connect(router, interpreter):
    """Start a child on `interpreter` with the helper module imported, so
    that later request counts only see what a test imports."""
    context = router.local(python_path=interpreter.path)
    context.call(imp_helpers.sys_path)
    return context


# -- What a child can import from the master ---------------------------------

@spread()
def test_plain_module_is_served_from_the_master(
        master_site, router, interpreter):
    base = master_site({'plainmod.py': '''
        def greet(who):
            return u'hello ' + who
    '''})
    context = connect(router, interpreter)
    assert str(base) not in context.call(imp_helpers.sys_path)
    assert context.call(imp_helpers.call_in, 'plainmod', 'greet',
                        'child') == 'hello child'
    assert context.call(imp_helpers.origin_of, 'plainmod') == (
        'master:' + str(base / 'plainmod.py'))


@spread()
def test_relative_imports_resolve_at_every_level(
        master_site, router, interpreter):
    master_site({
        'relpkg/__init__.py': 'from . import util\n',
        'relpkg/util.py': 'VALUE = u"util"\n',
        'relpkg/sub/__init__.py': 'from .sibling import THING\n',
        'relpkg/sub/sibling.py': 'THING = u"sibling"\n',
        'relpkg/sub/deep/__init__.py': '',
        'relpkg/sub/deep/helper.py': 'X = u"helper"\n',
        'relpkg/sub/deep/leaf.py': '''
            from ... import util
            from ..sibling import THING
            from . import helper
            from .helper import X

            def result():
                return [util.VALUE, THING, helper.X, X]
        ''',
    })
    context = connect(router, interpreter)
    assert context.call(imp_helpers.call_in, 'relpkg.sub.deep.leaf',
                        'result') == ['util', 'sibling', 'helper', 'helper']


@spread()
def test_package_that_replaces_itself_in_sys_modules_imports_as_its_stand_in(
        master_site, router, interpreter):
    master_site({'selfswap/__init__.py': '''
        import sys

        class StandIn(object):
            answer = 42

        sys.modules[__name__] = StandIn()
    '''})
    context = connect(router, interpreter)
    assert context.call(imp_helpers.attribute_of, 'selfswap', 'answer') == (
        'StandIn', 42)


@spread()
def test_namespace_package_spans_both_directories(
        master_site, router, interpreter):
    master_site({'nsp/alpha.py': 'NAME = u"alpha"\n'}, root='first')
    master_site({'nsp/beta.py': 'NAME = u"beta"\n'}, root='second')
    context = connect(router, interpreter)
    assert context.call(imp_helpers.attribute_of, 'nsp.alpha', 'NAME')[1] == \
        'alpha'
    assert context.call(imp_helpers.attribute_of, 'nsp.beta', 'NAME')[1] == \
        'beta'


# -- Package data through importlib.resources --------------------------------

RESOURCE_FILES = {
    'respkg/__init__.py': '',
    'respkg/greeting.txt': u'h\u00e9llo\n'.encode('utf-8'),
    'respkg/blob.bin': bytes(bytearray(range(256))) * 4,
    'respkg/data/nested.bin': b'\x00nested\xff',
    'respkg/data/deeper/': None,
}


@pytest.mark.parametrize('interpreter', interpreters.params(
    ['3.7', '3.8', '3.9', '3.10', '3.11', '3.12', '3.13']), indirect=True)
def test_read_text_and_read_binary_fetch_data_files_from_the_master(
        master_site, router, interpreter):
    master_site(dict(RESOURCE_FILES))
    context = connect(router, interpreter)
    text, blob = context.call(imp_helpers.read_resources_legacy, 'respkg',
                              'greeting.txt', 'blob.bin')
    assert text == u'h\u00e9llo\n'
    assert blob == RESOURCE_FILES['respkg/blob.bin']


@pytest.mark.parametrize('interpreter', interpreters.params(
    ['3.7', '3.10', '3.13']), indirect=True)
def test_contents_and_is_resource_list_the_package_directory(
        master_site, router, interpreter):
    master_site(dict(RESOURCE_FILES))
    context = connect(router, interpreter)
    names, files = context.call(imp_helpers.resource_names_legacy, 'respkg')
    assert names == ['__init__.py', 'blob.bin', 'data', 'greeting.txt']
    assert files == ['__init__.py', 'blob.bin', 'greeting.txt']


@pytest.mark.parametrize('interpreter', interpreters.params(
    ['3.9', '3.10', '3.11', '3.12', '3.13']), indirect=True)
def test_files_joinpath_reads_a_file_in_a_subdirectory(
        master_site, router, interpreter):
    master_site(dict(RESOURCE_FILES))
    context = connect(router, interpreter)
    assert context.call(imp_helpers.read_resource_files, 'respkg', 'data',
                        'nested.bin') == b'\x00nested\xff'


@pytest.mark.parametrize('interpreter', interpreters.params(
    ['3.9', '3.11', '3.13']), indirect=True)
def test_files_iterdir_lists_files_and_directories(
        master_site, router, interpreter):
    master_site(dict(RESOURCE_FILES))
    context = connect(router, interpreter)
    assert context.call(imp_helpers.list_resource_files, 'respkg') == [
        ('__init__.py', False), ('blob.bin', False), ('data', True),
        ('greeting.txt', False),
    ]
    assert context.call(imp_helpers.list_resource_files, 'respkg',
                        'data') == [('deeper', True), ('nested.bin', False)]


# -- What the child asks for, and when ---------------------------------------

@spread()
def test_module_installed_on_the_child_wins_over_the_masters_copy(
        tmp_path, master_site, router, interpreter, monkeypatch):
    master_site({'winner.py': 'WHO = u"master"\n'})
    child_site = tmp_path / 'child-site'
    child_site.mkdir()
    (child_site / 'winner.py').write_text(u'WHO = u"child"\n')
    # Only the child's environment carries its own directory.
    monkeypatch.setenv('PYTHONPATH', str(child_site))
    context = connect(router, interpreter)
    monkeypatch.delenv('PYTHONPATH')
    before = router.responder.get_module_count

    assert context.call(imp_helpers.import_counting_requests, 'winner') == []
    assert context.call(imp_helpers.attribute_of, 'winner', 'WHO')[1] == \
        'child'
    assert router.responder.get_module_count == before


@spread()
def test_package_installed_on_the_child_is_never_completed_from_the_master(
        tmp_path, master_site, router, interpreter, monkeypatch):
    master_site({'mixpkg/__init__.py': '', 'mixpkg/extra.py': ''})
    child_site = tmp_path / 'child-site'
    (child_site / 'mixpkg').mkdir(parents=True)
    (child_site / 'mixpkg' / '__init__.py').write_text(u'')
    monkeypatch.setenv('PYTHONPATH', str(child_site))
    context = connect(router, interpreter)
    monkeypatch.delenv('PYTHONPATH')
    before = router.responder.get_module_count

    error, requests = context.call(imp_helpers.import_failure,
                                   'mixpkg.extra')
    assert error is not None
    assert requests == []
    assert router.responder.get_module_count == before


@spread()
def test_missing_submodule_of_a_served_package_fails_without_a_request(
        master_site, router, interpreter):
    master_site({'abspkg/__init__.py': '', 'abspkg/real.py': ''})
    context = connect(router, interpreter)
    context.call(imp_helpers.origin_of, 'abspkg')
    before = router.responder.get_module_count

    error, requests = context.call(imp_helpers.import_failure,
                                   'abspkg.nonexistent')
    assert error is not None and 'nonexistent' in error
    assert requests == []
    assert router.responder.get_module_count == before


@spread()
def test_module_the_master_lacks_is_asked_for_only_once(
        master_site, router, interpreter):
    context = connect(router, interpreter)
    before = router.responder.get_module_count

    first = context.call(imp_helpers.import_failure, 'nowhere_to_be_found')
    second = context.call(imp_helpers.import_failure, 'nowhere_to_be_found')
    assert first[0] is not None and second[0] is not None
    assert first[1] == ['nowhere_to_be_found']
    assert second[1] == []
    assert router.responder.get_module_count == before + 1


def big_package(count=25):
    """A package of `count` modules importing each other in chains (plus a
    subpackage and an import inside a function), whose ``total()`` sums a
    value from each."""
    files = {
        'bigpkg/__init__.py': '''
            from . import m00, sub
            from .sub import leaf

            def total():
                import bigpkg
                return sum(getattr(bigpkg, 'm%02d' % i).VALUE
                           for i in range({count})) + leaf.VALUE
        '''.replace('{count}', str(count)),
        'bigpkg/sub/__init__.py': '',
        'bigpkg/sub/leaf.py': '''
            from .. import m00
            VALUE = 1000
        ''',
    }
    for i in range(count):
        lines = []
        if i + 1 < count:
            lines.append('from . import m%02d' % (i + 1))
        if i + 2 < count:
            lines.append('import bigpkg.m%02d' % (i + 2))
        if i == count - 1:
            lines.append('def back():\n    from bigpkg import m00\n'
                         '    return m00')
        lines.append('VALUE = %d' % i)
        files['bigpkg/m%02d.py' % i] = '\n'.join(lines) + '\n'
    return files


@spread()
def test_package_of_many_modules_is_preloaded_in_a_few_requests(
        master_site, router, interpreter):
    files = big_package(25)
    master_site(files)
    context = connect(router, interpreter)
    before = router.responder.get_module_count

    requests = context.call(imp_helpers.import_counting_requests, 'bigpkg')
    assert context.call(imp_helpers.call_in, 'bigpkg', 'total') == (
        sum(range(25)) + 1000)
    loaded = context.call(imp_helpers.loaded_below, 'bigpkg')
    assert len(loaded) == len(files) == 28
    assert 1 <= len(requests) <= 3, requests
    assert router.responder.get_module_count - before == len(requests)


@spread(['3.13'])
def test_preloading_stops_at_the_responders_byte_budget(
        master_site, router, interpreter, monkeypatch):
    # With no budget nothing is preloaded, so each module the package
    # imports costs a request of its own: the budget bounds preloading.
    files = big_package(25)
    master_site(files)
    monkeypatch.setattr(router.responder, 'preload_budget', 0)
    context = connect(router, interpreter)

    requests = context.call(imp_helpers.import_counting_requests, 'bigpkg')
    assert len(requests) == len(files) == 28, requests


# -- The master's __main__ ---------------------------------------------------

MAIN_SCRIPT = '''\
import os
import sys

import mitogen.master

MARKER = %(marker)r


def record(event):
    with open(MARKER, 'a') as fp:
        fp.write('%%s %%d\\n' %% (event, os.getpid()))


def whoami():
    return os.getpid()


record('top')

if __name__ == '__main__':
    record('guard')
    with mitogen.master.Router() as router:
        child = router.local(python_path=sys.argv[1])
        print(child.call(whoami))
        sys.stdout.flush()

record('after-guard')
'''


@spread(['2.7', '3.13'])
def test_child_runs_main_without_the_guard_block_or_what_follows(
        tmp_path, interpreter):
    marker = tmp_path / 'events'
    script = tmp_path / 'script.py'
    script.write_text(MAIN_SCRIPT % {'marker': str(marker)})
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    proc = subprocess.run(
        [sys.executable, str(script), interpreter.path],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    child_pid = int(proc.stdout.split()[-1])
    events = marker.read_text().splitlines()
    master_pid = int(events[0].split()[1])
    assert child_pid != master_pid
    assert sorted(events) == sorted([
        'top %d' % master_pid,
        'guard %d' % master_pid,
        'top %d' % child_pid,
        'after-guard %d' % master_pid,
    ])


# -- What is never served ----------------------------------------------------

@pytest.mark.parametrize('modname', ['asyncio', 'concurrent.futures'])
@spread(['2.7'])
def test_standard_library_module_missing_on_the_child_is_refused_saying_why(
        router, interpreter, modname):
    context = connect(router, interpreter)
    before = router.responder.bad_load_module_count

    error, requests = context.call(imp_helpers.import_failure, modname)
    assert error is not None and 'standard library' in error, error
    assert requests == [modname.split('.')[0]]
    assert router.responder.bad_load_module_count == before + 1


@spread(['3.6'])
def test_standard_library_module_newer_than_the_child_is_not_served(
        router, interpreter):
    context = connect(router, interpreter)
    before = router.responder.bad_load_module_count

    error, requests = context.call(imp_helpers.import_failure, 'graphlib')
    assert error is not None and 'standard library' in error, error
    assert requests == ['graphlib']
    assert router.responder.bad_load_module_count == before + 1


@spread(['3.6', '3.13'])
def test_refused_standard_library_module_raises_module_not_found_error(
        router, interpreter):
    # Standard library code probes for optional platform modules with
    # "except ModuleNotFoundError" (subprocess imports msvcrt so): a refusal
    # must be that type, or importing such modules breaks in children.
    context = connect(router, interpreter)
    assert context.call(imp_helpers.import_error_is_module_not_found,
                        'msvcrt') is True


def master_only_extension(master_site):
    """Put a native extension module named ``fastthing`` on the master's
    path: a copy of one of the standard library's, which the master never
    imports (the finder judges it by its file)."""
    for name in ('_json', '_struct', 'math', 'select'):
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is not None and isinstance(
                spec.loader, importlib.machinery.ExtensionFileLoader):
            break
    else:
        pytest.skip("the master's Python has no extension module on sys.path")
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    base = master_site({})
    shutil.copyfile(spec.origin, str(base / ('fastthing' + suffix)))
    importlib.invalidate_caches()


@spread(['2.7', '3.13'])
def test_native_extension_on_the_master_is_refused_saying_why(
        master_site, router, interpreter):
    master_only_extension(master_site)
    context = connect(router, interpreter)
    before = router.responder.bad_load_module_count

    error, requests = context.call(imp_helpers.import_failure, 'fastthing')
    assert error is not None and 'native extension' in error, error
    assert requests == ['fastthing']
    assert router.responder.bad_load_module_count == before + 1


@spread(['3.13'])
def test_native_extension_on_the_master_is_refused_to_a_python3_child(
        master_site, router, interpreter):
    master_only_extension(master_site)
    context = connect(router, interpreter)
    before = router.responder.bad_load_module_count

    error, requests = context.call(imp_helpers.import_failure, 'fastthing')
    assert error is not None
    assert requests == ['fastthing']
    assert router.responder.bad_load_module_count == before + 1
