"""
The distributions of ``packages/`` as a user gets them: sdists built from a
copy of each folder, wheels built from those sdists (so an sdist that lacks
a file makes a broken wheel), and fresh virtual environments that install
them with pip from those files alone (``--no-index``), as the pytest plugin
behind the session fixture ``built_dists`` (registered in ``conftest.py``).

Builds use the setuptools of the test venv without build isolation: no
network is needed.
"""
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGES = os.path.join(ROOT, 'packages')
#: Survives between runs (listed in .gitignore).
CACHE_DIR = os.path.join(HERE, '.cache')

#: Every distribution of the workspace: a folder of packages/ with a
#: pyproject.toml (none when this module is loaded outside the checkout, as
#: the nested test runs of test_infra do).
DISTRIBUTIONS = sorted(
    d for d in (os.listdir(PACKAGES) if os.path.isdir(PACKAGES) else ())
    if os.path.isfile(os.path.join(PACKAGES, d, 'pyproject.toml')))


def run(argv, check=True, **kwargs):
    """Run `argv` with no PYTHONPATH and no standard input; return its
    output (stdout and stderr). With `check`, a non-zero exit fails the
    test showing that output."""
    env = dict(kwargs.pop('env', os.environ))
    env.pop('PYTHONPATH', None)
    proc = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, timeout=kwargs.pop('timeout', 180),
        **kwargs)
    out = proc.stdout.decode('utf-8', 'replace')
    if check and proc.returncode != 0:
        pytest.fail('%s exited %d:\n%s' % (
            ' '.join(map(str, argv)), proc.returncode, out), pytrace=False)
    return out if check else (proc.returncode, out)


class Built(object):
    """The files built from packages/: :attr:`directory` holds every sdist
    and wheel (a pip ``--find-links`` directory)."""

    def __init__(self, directory):
        self.directory = directory

    def files(self, suffix):
        return sorted(glob.glob(os.path.join(self.directory, '*' + suffix)))

    def file_of(self, distribution, suffix):
        prefix = distribution.replace('-', '_') + '-'
        [path] = [p for p in self.files(suffix)
                  if os.path.basename(p).startswith(prefix)]
        return path

    def venv(self, path, *requirements, **kwargs):
        """A new virtual environment at `path` (no pip of its own) with
        `requirements` installed by pip from the built files and the
        directories of `find_links` only; returns its python."""
        run([sys.executable, '-m', 'venv', '--without-pip', str(path)])
        python = os.path.join(str(path), 'bin', 'python')
        if requirements:
            self.pip(python, 'install', *requirements, **kwargs)
        return python

    def pip(self, python, command, *args, **kwargs):
        """Run ``pip COMMAND ARGS`` (the test venv's pip) on the virtual
        environment of `python`, with no index: only the built files and
        `find_links` can be installed."""
        links = [self.directory] + list(kwargs.pop('find_links', ()))
        argv = [sys.executable, '-m', 'pip', '--python', python, command,
                '--disable-pip-version-check', '-q']
        if command == 'install':
            argv += ['--no-index']
            for link in links:
                argv += ['--find-links', str(link)]
        elif command == 'uninstall':
            argv += ['-y']
        return run(argv + list(args), **kwargs)


def build_all(base):
    """Build the sdist of every distribution from a copy of its folder,
    then its wheel from that sdist, into ``base/dist``."""
    for module in ('setuptools',):
        if importlib.util.find_spec(module) is None:
            pytest.skip('%s is not installed in %s: scripts/setup installs '
                        'it' % (module, sys.prefix))
    out = os.path.join(str(base), 'dist')
    os.makedirs(out)
    for name in DISTRIBUTIONS:
        # Build from a copy: an in-tree build writes build/ and egg-info
        # into the checkout that other tests import from.
        source = os.path.join(str(base), 'src', name)
        shutil.copytree(os.path.join(PACKAGES, name), source,
                        ignore=shutil.ignore_patterns(
                            'build', '*.egg-info', '__pycache__'))
        run([sys.executable, '-c',
             'import sys\n'
             'from setuptools import build_meta\n'
             'print(build_meta.build_sdist(sys.argv[1]))', out],
            cwd=source)
    for sdist in sorted(glob.glob(os.path.join(out, '*.tar.gz'))):
        run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
             '--no-build-isolation', '--no-index',
             '--disable-pip-version-check', '-w', out, sdist])
    return Built(out)


def sdist_members(path):
    """Names inside an sdist, without its top directory."""
    with tarfile.open(path) as archive:
        return sorted(n.split('/', 1)[1] for n in archive.getnames()
                      if '/' in n)


@pytest.fixture(scope='session')
def built_dists(tmp_path_factory):
    """:class:`Built`: every distribution of packages/, built once per
    session."""
    return build_all(tmp_path_factory.mktemp('built'))
