"""
Packaging: the ``mitogen`` package spans the mitogen-core and mitogen-master
distributions and must work the same from installed wheels and from the
development checkout; mitogen-core's metadata agrees with the code; core.py
works vendored alone; every module that runs in a child compiles on every
child interpreter (checked, not assumed).
"""
import glob
import base64
import email
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

import mitogen
import mitogen.core
import mitogen.local

import interpreters
from dists import DISTRIBUTIONS, PACKAGES, ROOT, sdist_members

CORE_DIR = os.path.join(PACKAGES, 'mitogen-core', 'mitogen')
MASTER_DIR = os.path.join(PACKAGES, 'mitogen-master', 'mitogen')

#: Modules that only ever run in a master (modern Python only); every other
#: module of the package may run in a child.
#: The line that marks a module that never runs in a child: it need not
#: compile on a child's Python.
MASTER_ONLY_MARKER = '# master-only module'


def run(argv, **kwargs):
    """Run `argv` with no PYTHONPATH; return its stdout, failing the test
    with its stderr if it exits non-zero."""
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    proc = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, timeout=120, **kwargs)
    if proc.returncode != 0:
        pytest.fail('%s exited %d:\n%s%s' % (
            ' '.join(map(str, argv)), proc.returncode,
            proc.stdout.decode('utf-8', 'replace'),
            proc.stderr.decode('utf-8', 'replace')), pytrace=False)
    return proc.stdout.decode('utf-8')


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


# Prints what a test needs to know about how mitogen imports here.
DESCRIBE_PACKAGE = textwrap.dedent('''
    import json, os, pkgutil, sys
    import mitogen, mitogen.core, mitogen.parent, mitogen.master
    import mitogen.local, mitogen.utils
    print(json.dumps({
        'path': [os.path.realpath(p) for p in mitogen.__path__],
        'files': dict((m.__name__, os.path.realpath(m.__file__)) for m in (
            mitogen, mitogen.core, mitogen.parent, mitogen.master,
            mitogen.local, mitogen.utils)),
        'modules': sorted(m.name for m in pkgutil.iter_modules(
            mitogen.__path__)),
    }))
''')


# -- installed from wheels -------------------------------------------------

WHEEL_SCRIPT = textwrap.dedent('''
    import json
    import os
    import sys
    from importlib import metadata

    import mitogen
    import mitogen.master


    def add_one(x):
        return x + 1, os.getpid()


    if __name__ == '__main__':
        with mitogen.master.Router() as router:
            child = router.local()
            result = child.call(add_one, 41)
            child.shutdown(wait=True)
        print(json.dumps({
            'pid': os.getpid(),
            'prefix': os.path.realpath(sys.prefix),
            'result': result,
            'path': [os.path.realpath(p) for p in mitogen.__path__],
            'transports': sorted(
                (ep.name, ep.value)
                for ep in metadata.entry_points(group='mitogen.transports')),
        }))
''')


@pytest.fixture(scope='module')
def wheel_venv(built_dists, tmp_path_factory):
    """A fresh virtual environment holding every distribution, installed
    by pip from the files built from this checkout; returns its python."""
    return built_dists.venv(tmp_path_factory.mktemp('wheels') / 'venv',
                            *DISTRIBUTIONS)


@pytest.fixture(scope='module')
def wheel_run(wheel_venv, tmp_path_factory):
    """Output of :data:`WHEEL_SCRIPT` run by the wheel venv's python."""
    work = tmp_path_factory.mktemp('wheel_run')
    script = work / 'wheel_script.py'
    script.write_text(WHEEL_SCRIPT)
    return last_json(run([wheel_venv, str(script)], cwd=str(work)))


def test_installed_wheels_start_a_child_and_call_it(wheel_run):
    value, child_pid = wheel_run['result']

    assert value == 42
    assert child_pid != wheel_run['pid']


def test_installed_wheels_make_mitogen_one_directory(wheel_run):
    [path] = wheel_run['path']

    assert path.startswith(wheel_run['prefix'] + os.sep)
    assert path.endswith(os.path.join('site-packages', 'mitogen'))


def test_installed_wheels_register_the_local_transport(wheel_run):
    assert ['local', 'mitogen.local:Connection'] in wheel_run['transports']


def test_installed_wheels_register_the_ssh_transport(wheel_run):
    assert ['ssh', 'mitogen.ssh:Connection'] in wheel_run['transports']


def test_checkout_and_wheels_offer_the_same_modules(wheel_venv, tmp_path):
    installed = last_json(run([wheel_venv, '-c', DESCRIBE_PACKAGE],
                              cwd=str(tmp_path)))
    checkout = last_json(run([sys.executable, '-c', DESCRIBE_PACKAGE],
                             cwd=str(tmp_path)))

    assert installed['modules'] == checkout['modules']
    assert {'core', 'parent', 'master', 'local', 'utils'} <= set(
        installed['modules'])
    [path] = installed['path']
    assert all(os.path.dirname(f) == path
               for f in installed['files'].values())


# -- the development checkout ----------------------------------------------

def test_checkout_package_spans_both_distribution_directories(tmp_path):
    found = last_json(run([sys.executable, '-c', DESCRIBE_PACKAGE],
                          cwd=str(tmp_path)))

    core_dir, master_dir = map(os.path.realpath, (CORE_DIR, MASTER_DIR))
    assert core_dir in found['path'] and master_dir in found['path']
    assert os.path.dirname(found['files']['mitogen']) == core_dir
    assert os.path.dirname(found['files']['mitogen.core']) == core_dir
    for name in ('mitogen.parent', 'mitogen.master', 'mitogen.local',
                 'mitogen.utils'):
        assert os.path.dirname(found['files'][name]) == master_dir, name


# -- metadata --------------------------------------------------------------
#
# What twine check and PyPI look at, checked on the built files themselves.

#: Python versions a master runs on: every distribution installs on them.
MASTER_PYTHONS = ['3.9', '3.10', '3.11', '3.12', '3.13']


def wheel_metadata(built_dists, name):
    path = built_dists.file_of(name, '.whl')
    with zipfile.ZipFile(path) as archive:
        [meta] = [n for n in archive.namelist()
                  if n.endswith('.dist-info/METADATA')]
        [wheel] = [n for n in archive.namelist()
                   if n.endswith('.dist-info/WHEEL')]
        return (email.message_from_bytes(archive.read(meta)),
                email.message_from_bytes(archive.read(wheel)),
                archive.namelist())


@pytest.mark.parametrize('name', DISTRIBUTIONS)
def test_wheel_carries_the_license(built_dists, name):
    _, _, members = wheel_metadata(built_dists, name)

    [license_file] = [m for m in members
                      if m.endswith('.dist-info/licenses/LICENSE')]
    with zipfile.ZipFile(built_dists.file_of(name, '.whl')) as archive:
        text = archive.read(license_file).decode()
    with open(os.path.join(ROOT, 'LICENSE')) as f:
        assert text == f.read()


@pytest.mark.parametrize('name', DISTRIBUTIONS)
def test_sdist_carries_license_readme_and_sources(built_dists, name):
    members = sdist_members(built_dists.file_of(name, '.tar.gz'))

    assert {'LICENSE', 'README.md', 'pyproject.toml', 'PKG-INFO'} <= set(
        members)
    sources = {os.path.relpath(p, os.path.join(PACKAGES, name))
               for p in glob.glob(os.path.join(PACKAGES, name, 'mitogen',
                                               '*'))
               if not p.endswith('__pycache__')}
    assert sources <= set(members)


@pytest.mark.parametrize('name', DISTRIBUTIONS)
def test_license_file_of_each_distribution_is_the_repository_license(name):
    with open(os.path.join(ROOT, 'LICENSE')) as f:
        expected = f.read()
    path = os.path.join(PACKAGES, name, 'LICENSE')
    assert os.path.exists(path), 'cp LICENSE %s' % (path,)
    with open(path) as f:
        assert f.read() == expected


@pytest.mark.parametrize('name', DISTRIBUTIONS)
def test_metadata_has_what_a_pypi_page_shows(built_dists, name):
    meta, _, _ = wheel_metadata(built_dists, name)

    assert meta['Name'] == name
    assert meta['Summary'] and len(meta['Summary']) > 20
    assert meta['License-Expression'] == 'BSD-3-Clause'
    assert meta['License-File'] == 'LICENSE'
    urls = dict(u.split(', ', 1) for u in meta.get_all('Project-URL'))
    assert {'Homepage', 'Documentation', 'Source', 'Issues'} <= set(urls)
    assert all(u.startswith('https://') for u in urls.values())
    classifiers = meta.get_all('Classifier')
    assert 'Operating System :: POSIX' in classifiers
    assert any(c.startswith('Topic :: ') for c in classifiers)


@pytest.mark.parametrize('name', DISTRIBUTIONS)
def test_readme_is_a_real_pypi_page(built_dists, name):
    meta, _, _ = wheel_metadata(built_dists, name)
    description = meta.get_payload()

    assert meta['Description-Content-Type'] == 'text/markdown'
    assert description.startswith('# %s\n' % (name,))
    assert 'pip install %s' % (name,) in description
    assert '```python\n' in description
    assert len(description.splitlines()) >= 15


@pytest.mark.parametrize('name', DISTRIBUTIONS)
def test_requires_python_classifiers_and_wheel_tag_agree(built_dists, name):
    from packaging.specifiers import SpecifierSet

    meta, wheel, _ = wheel_metadata(built_dists, name)
    requires = SpecifierSet(meta['Requires-Python'])
    versions = [c.rsplit(' :: ', 1)[1] for c in meta.get_all('Classifier')
                if c.startswith('Programming Language :: Python :: ')
                and c[-1].isdigit()]

    assert [v for v in versions if '.' in v] == MASTER_PYTHONS
    assert all(requires.contains(v + '.0') for v in MASTER_PYTHONS)
    assert not requires.contains('3.8.0') and not requires.contains('2.7.0')
    assert 'Programming Language :: Python :: 3 :: Only' in \
        meta.get_all('Classifier')
    assert wheel.get_all('Tag') == ['py3-none-any']
    assert wheel['Root-Is-Purelib'] == 'true'


def versions_written_in(name):
    """``(file, line)`` of every line of a distribution's folder that
    spells its version."""
    version = importlib.metadata.version(name)
    found = []
    folder = os.path.join(PACKAGES, name)
    for path in glob.glob(os.path.join(folder, '**', '*'), recursive=True):
        if not os.path.isfile(path) or '.egg-info' in path \
                or '__pycache__' in path:
            continue
        with open(path, 'rb') as f:
            for line in f:
                if version.encode() in line:
                    found.append((os.path.relpath(path, folder),
                                  line.decode().strip()))
    return found


@pytest.mark.parametrize('name', DISTRIBUTIONS)
def test_each_distribution_writes_its_version_once(name):
    assert len(versions_written_in(name)) == 1, versions_written_in(name)


@pytest.mark.parametrize('name', DISTRIBUTIONS)
def test_built_version_is_the_written_one(built_dists, name):
    meta, _, _ = wheel_metadata(built_dists, name)

    [(_, line)] = versions_written_in(name)
    assert '%r' % (meta['Version'],) in line.replace('"', "'")


def test_core_metadata_version_is_the_core_version():
    assert importlib.metadata.version('mitogen-core') \
        == mitogen.core.__version__
    assert mitogen.__version__ == tuple(
        int(n) for n in mitogen.core.__version__.split('.'))


def test_master_requires_a_compatible_range_of_core():
    from packaging.requirements import Requirement

    requirements = [Requirement(r) for r in
                    importlib.metadata.requires('mitogen-master') or ()]
    [core] = [r for r in requirements if r.name == 'mitogen-core']

    assert core.specifier.contains(mitogen.core.__version__)
    # Compatible means bounded: a later, incompatible core is refused.
    assert any(s.operator in ('<', '<=', '~=', '==') for s in core.specifier)


@pytest.mark.parametrize('distribution', ['mitogen-ssh', 'mitogen-fakessh'])
def test_distribution_requires_a_compatible_range_of_master(distribution):
    from packaging.requirements import Requirement

    requirements = [Requirement(r) for r in
                    importlib.metadata.requires(distribution) or ()]
    [master] = [r for r in requirements if r.name == 'mitogen-master']

    assert master.specifier.contains(importlib.metadata.version(
        'mitogen-master'))
    assert any(s.operator in ('<', '<=', '~=', '==')
               for s in master.specifier)


def test_local_transport_is_registered_as_an_entry_point():
    [ep] = [ep for ep in importlib.metadata.entry_points(
        group='mitogen.transports') if ep.name == 'local']

    assert ep.value == 'mitogen.local:Connection'
    assert ep.load() is mitogen.local.Connection


# -- vendoring core.py -----------------------------------------------------

VENDORED_SCRIPT = r'''
import base64
import datetime
import decimal
import json
import pickle
import sys
import uuid

import yourapp._vendor.mitogen_core as core


def codec():
    sent = [
        core.Message(dst_id=2, src_id=1, auth_id=1,
                     handle=core.CALL_FUNCTION, reply_to=1000,
                     data=b'small body'),
        core.Message(dst_id=3, src_id=0, auth_id=0, handle=core.SHUTDOWN,
                     reply_to=0, data=b'\x01\x02' * 70000),
    ]
    wire = b''.join(b''.join(m.encode()) for m in sent)
    decoder = core.FrameDecoder()
    received = []
    for i in range(0, len(wire), 4093):
        decoder.feed(wire[i:i + 4093])
        while True:
            msg = decoder.next_message()
            if msg is None:
                break
            received.append(msg)
    fields = 'dst_id src_id auth_id handle reply_to data'.split()
    return {
        'magic': wire[:2].decode('ascii'),
        'count': len(received),
        'equal': [[getattr(a, f) for f in fields] ==
                  [getattr(b, f) for f in fields]
                  for a, b in zip(sent, received)],
    }


def serialization():
    value = {
        u'text': u'caf\xe9',
        u'small': b'abc',
        u'big': b'\xff' * 1000,
        u'numbers': [1, 2.5, complex(1, 2), 10 ** 30],
        u'set': set([1, 2]),
        u'frozen': frozenset([u'a']),
        u'when': datetime.datetime(2020, 1, 2, 3, 4, 5),
        u'amount': decimal.Decimal('1.50'),
        u'id': uuid.UUID(int=5),
        u'blob': core.Blob(b'b' * 100),
        u'kwargs': core.Kwargs({u'k': 1}),
    }
    flags, body = core.serialize(value)
    back = core.deserialize(flags, body)
    try:
        core.deserialize(0, b'\x80\x02cos\nsystem\nq\x00.')
        refused = None
    except core.StreamError as e:
        refused = type(e).__name__
    return {
        'equal': back == value,
        'blob': type(back[u'blob']) is core.Blob,
        'out_of_band': bool(flags & core.FLAG_OOB),
        'refused': refused,
    }


def interop():
    # Values for and from a peer running the real mitogen.core: the
    # vendored copy must write and read this module's types under that
    # name, not its own.
    value = {u'blob': core.Blob(b'b' * 100), u'big': core.Blob(b'x' * 70000),
             u'secret': core.Secret(u'pw'), u'kwargs': core.Kwargs({u'k': 1}),
             u'error': core.CallError(u'boom')}
    flags, body = core.serialize(value)
    peer_flags, peer_body = sys.argv[1].split(':')
    received = core.deserialize(int(peer_flags),
                                base64.b64decode(peer_body.encode('ascii')))
    return {
        'sent': '%d:%s' % (flags, base64.b64encode(body).decode('ascii')),
        'received': sorted('%s=%s' % (k, type(v).__name__)
                           for k, v in received.items()),
    }


result = {
    'version': list(sys.version_info[:2]),
    'codec': codec(),
    'serialization': serialization(),
    'interop': interop(),
    'mitogen_modules': sorted(
        n for n in sys.modules if n == 'mitogen' or n.startswith('mitogen.')),
}
print(json.dumps(result))
'''


def normal_peer_value():
    """A value serialized by this (normal) mitogen.core, as the vendored
    script's argument ``flags:base64``."""
    flags, body = mitogen.core.serialize({
        'blob': mitogen.core.Blob(b'b'), 'secret': mitogen.core.Secret('s'),
        'kwargs': mitogen.core.Kwargs({'k': 1}),
        'error': mitogen.core.CallError('boom')})
    return '%d:%s' % (flags, base64.b64encode(body).decode('ascii'))


@pytest.fixture
def vendored_app(tmp_path):
    """`tmp_path` holding ``yourapp/_vendor/mitogen_core.py`` (core.py
    alone) and ``check.py`` that exercises it."""
    vendor = tmp_path / 'yourapp' / '_vendor'
    vendor.mkdir(parents=True)
    (tmp_path / 'yourapp' / '__init__.py').write_text('')
    (vendor / '__init__.py').write_text('')
    shutil.copy(os.path.join(CORE_DIR, 'core.py'),
                str(vendor / 'mitogen_core.py'))
    (tmp_path / 'check.py').write_text(VENDORED_SCRIPT)
    return tmp_path


@pytest.mark.parametrize('interpreter', interpreters.params(
    ['2.7', '3.6', '3.13']), indirect=True)
def test_vendored_core_works_alone_without_importing_mitogen(
        interpreter, vendored_app):
    # -E: no PYTHONPATH; -S: no site-packages, so nothing named mitogen is
    # installed; the script's directory is sys.path[0].
    out = last_json(run([interpreter.path, '-E', '-S', 'check.py',
                         normal_peer_value()], cwd=str(vendored_app)))

    assert out['version'] == [int(n) for n in interpreter.version.split('.')]
    assert out['mitogen_modules'] == []
    assert out['codec'] == {'magic': 'MI', 'count': 2, 'equal': [True, True]}
    assert out['serialization'] == {
        'equal': True, 'blob': True, 'out_of_band': True,
        'refused': 'StreamError'}


@pytest.mark.parametrize('interpreter', interpreters.params(
    ['2.7', '3.6', '3.13']), indirect=True)
def test_vendored_core_exchanges_values_with_a_normal_peer(
        interpreter, vendored_app):
    out = last_json(run([interpreter.path, '-E', '-S', 'check.py',
                         normal_peer_value()], cwd=str(vendored_app)))
    sent_flags, sent_body = out['interop']['sent'].split(':')
    sent = mitogen.core.deserialize(int(sent_flags),
                                    base64.b64decode(sent_body))

    assert out['interop']['received'] == [
        'blob=Blob', 'error=CallError', 'kwargs=Kwargs', 'secret=Secret']
    assert {k: type(v).__name__ for k, v in sent.items()} == {
        'blob': 'Blob', 'big': 'Blob', 'secret': 'Secret',
        'kwargs': 'Kwargs', 'error': 'CallError'}
    assert sent['big'] == b'x' * 70000 and str(sent['error']) == 'boom'


# -- every module compiles where it runs -----------------------------------

COMPILE = (
    'import py_compile, sys\n'
    'out = sys.argv[1]\n'
    'for i, path in enumerate(sys.argv[2:]):\n'
    '    py_compile.compile(path, cfile="%s/%d.pyc" % (out, i), doraise=True)\n'
)


def package_modules():
    return sorted(glob.glob(os.path.join(PACKAGES, '*', 'mitogen', '*.py')))


def is_master_only(path):
    with open(path) as f:
        return MASTER_ONLY_MARKER in f.read().splitlines()


def child_modules():
    return [p for p in package_modules() if not is_master_only(p)]


def test_master_only_modules_are_marked():
    names = {os.path.basename(p) for p in package_modules()
             if is_master_only(p)}

    assert {'master.py', 'aio.py', 'fleet.py'} <= names
    assert 'parent.py' not in names and 'core.py' not in names


def test_child_modules_include_the_core_and_the_local_method():
    names = {os.path.basename(p) for p in child_modules()}

    assert {'__init__.py', 'core.py', 'parent.py', 'local.py',
            'utils.py'} <= names


def test_every_child_module_compiles_on_every_child_interpreter(
        interpreter, tmp_path):
    run([interpreter.path, '-E', '-S', '-c', COMPILE, str(tmp_path)]
        + child_modules())

    assert len(os.listdir(str(tmp_path))) == len(child_modules())


@pytest.mark.parametrize('interpreter', interpreters.params(
    ['3.9', '3.10', '3.11', '3.12', '3.13']), indirect=True)
def test_master_modules_compile_on_every_master_interpreter(
        interpreter, tmp_path):
    paths = package_modules()

    run([interpreter.path, '-E', '-S', '-c', COMPILE, str(tmp_path)] + paths)

    assert len(os.listdir(str(tmp_path))) == len(paths)
