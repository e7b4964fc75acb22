"""
Throwaway packages on the master's ``sys.path``, as the pytest plugin behind
the ``master_site`` fixture (registered in ``conftest.py``); test modules
wanting the same without its environment change build their own fixture on
:func:`builder`.  Also: a package only the master has
(:func:`master_only_package`) and the example third-party transport,
installed (:func:`install_example_transport`).
"""
import importlib
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
#: The sources of the example third-party transport distribution.
EXAMPLE_TRANSPORT = os.path.join(HERE, 'example_transport')


def builder(tmp_path, monkeypatch):
    """
    Generator for a fixture: yields ``build(files, root='site')``, which
    writes ``files`` ({relative path: text or bytes}; text is dedented; a
    path ending in ``/`` makes a directory) under ``tmp_path/root``, puts
    that directory first on ``sys.path`` and returns it.  Afterwards every
    module of those top-level names leaves ``sys.modules`` and the
    directories leave ``sys.path_importer_cache``.
    """
    tops = set()

    def build(files, root='site'):
        base = tmp_path / root
        base.mkdir(exist_ok=True)
        for relative, content in files.items():
            tops.add(relative.split('/')[0].split('.')[0])
            path = base / relative
            if relative.endswith('/'):
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                content = textwrap.dedent(content).encode('utf-8')
            path.write_bytes(content)
        monkeypatch.syspath_prepend(str(base))
        importlib.invalidate_caches()
        return base

    yield build
    for name in list(sys.modules):
        if name.partition('.')[0] in tops:
            del sys.modules[name]
    for key in list(sys.path_importer_cache):
        if isinstance(key, str) and key.startswith(str(tmp_path)):
            del sys.path_importer_cache[key]
    importlib.invalidate_caches()


@pytest.fixture
def master_site(tmp_path, monkeypatch):
    """
    ``master_site(files, root='site')``: :func:`builder`'s ``build``, with
    ``PYTHONPATH`` removed from the environment, so children started by the
    test can get the packages only through the importer.
    """
    monkeypatch.delenv('PYTHONPATH', raising=False)
    yield from builder(tmp_path, monkeypatch)


def master_only_package(tmp_path_factory, basename, package, module,
                        answer):
    """
    Generator for a module-scoped fixture: yields a new directory (mode
    700, so children of other accounts cannot read it) holding `package`,
    whose submodule `module` has ``answer()`` returning `answer`.  The
    directory is on the master's ``sys.path`` only until the fixture ends;
    then `package` also leaves ``sys.modules``.
    """
    site = tmp_path_factory.mktemp(basename)
    os.chmod(str(site), 0o700)
    directory = site / package
    directory.mkdir()
    (directory / '__init__.py').write_text(u'')
    (directory / (module + '.py')).write_text(textwrap.dedent(u'''\
        def answer():
            return %r
        ''' % (answer,)))
    sys.path.append(str(site))
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        for name in list(sys.modules):
            if name.split('.')[0] == package:
                del sys.modules[name]


def install_example_transport(tmp_path_factory, basename):
    """Install the example distribution (a wheel built from a copy of
    :data:`EXAMPLE_TRANSPORT`) into a new directory ``<basename>-site`` of
    its own and return that directory; skip without setuptools."""
    pytest.importorskip('setuptools', reason='building the example '
                        'distribution needs setuptools in the test venv')
    target = tmp_path_factory.mktemp(basename + '-site')
    build = tmp_path_factory.mktemp(basename + '-build')
    # Build from a copy: setuptools writes build/ and egg-info next to the
    # sources.
    source = str(build / 'src')
    shutil.copytree(EXAMPLE_TRANSPORT, source)
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
         '--no-build-isolation', '--no-index', '--target', str(target),
         '--cache-dir', str(build), source],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    if proc.returncode:
        pytest.fail('installing the example transport failed:\n'
                    + proc.stdout.decode(errors='replace'))
    return target
