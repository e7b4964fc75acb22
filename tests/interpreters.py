"""
Find the Python interpreters this machine has, for tests that run children
(or masters) on every supported version.

Children must work on CPython 2.7 and 3.6 - 3.13; :data:`WANTED` lists them.
An interpreter is looked for, in this order, as ``pythonX.Y`` in

1. every pyenv installation (``$PYENV_ROOT``, ``~/.pyenv``, ``/root/.pyenv``),
   newest patch release first: ``<root>/versions/*/bin/pythonX.Y``;
2. ``/usr/local/bin`` and ``/usr/bin``;
3. each directory of ``PATH``,

skipping pyenv *shims* (scripts that pick an interpreter by pyenv's
configuration and fail for versions it does not select).  Each candidate is
run once to confirm the version it reports; results are cached for the
whole test session.
"""
import collections
import functools
import glob
import os
import re
import subprocess

#: Every interpreter version a child must run on, oldest first.
WANTED = ('2.7', '3.6', '3.7', '3.8', '3.9', '3.10', '3.11', '3.12', '3.13')

#: A found interpreter: ``version`` is "X.Y", ``path`` absolute.
Interpreter = collections.namedtuple('Interpreter', 'version path')

_PROBE = 'import sys; print("%d.%d" % sys.version_info[:2])'


def _pyenv_roots():
    roots = []
    for root in (os.environ.get('PYENV_ROOT'),
                 os.path.expanduser('~/.pyenv'), '/root/.pyenv'):
        if root and os.path.isdir(root) and root not in roots:
            roots.append(root)
    return roots


def _version_key(path):
    """Sort key for ``.../versions/3.11.7/bin/python3.11``: newest first."""
    release = path.split(os.sep)[-3]
    return [-int(n) if n.isdigit() else 0 for n in re.split(r'[.\-]', release)]


def _is_shim(path):
    if os.sep + 'shims' + os.sep in path:
        return True
    try:
        with open(path, 'rb') as f:
            head = f.read(512)
    except OSError:
        return True
    return head.startswith(b'#!') and b'pyenv' in head


def candidates(version):
    """Yield paths that may be ``python<version>``, best first."""
    name = 'python' + version
    for root in _pyenv_roots():
        pattern = os.path.join(root, 'versions', '*', 'bin', name)
        for path in sorted(glob.glob(pattern), key=_version_key):
            yield path
    dirs = ['/usr/local/bin', '/usr/bin']
    dirs += [d for d in os.environ.get('PATH', '').split(os.pathsep) if d]
    for d in dirs:
        yield os.path.join(d, name)


@functools.lru_cache(maxsize=None)
def probe(path):
    """Return the "X.Y" version `path` reports, or None if it does not run."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return None
    if _is_shim(path):
        return None
    try:
        out = subprocess.run(
            [path, '-c', _PROBE], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.decode('ascii', 'replace').strip() or None


@functools.lru_cache(maxsize=None)
def find(version):
    """Return the :class:`Interpreter` for "X.Y", or None if absent."""
    for path in candidates(version):
        if probe(path) == version:
            return Interpreter(version, path)
    return None


def find_interpreters():
    """Return an :class:`Interpreter` for every version of :data:`WANTED`
    found on this machine, oldest first."""
    return [i for i in map(find, WANTED) if i is not None]


def require(version):
    """Return the :class:`Interpreter` for "X.Y", or skip the calling test."""
    found = find(version)
    if found is None:
        import pytest
        pytest.skip('python%s not installed on this machine' % version)
    return found


def params(versions=WANTED):
    """A ``pytest.param`` (id ``pyX.Y``) for each of `versions`, for::

        @pytest.mark.parametrize('interpreter', interpreters.params(
            ['2.7', '3.13']), indirect=True)

    Every version stays a parameter whether installed or not, so a missing
    one shows up as a skip."""
    import pytest
    return [pytest.param(v, id='py' + v) for v in versions]
