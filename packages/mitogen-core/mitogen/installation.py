# Copyright the mitogen contributors. BSD-3-Clause.
"""
Coexistence with the ``mitogen`` distribution (upstream Mitogen).

Both projects install the import package ``mitogen`` with modules of the
same names (``core.py``, ``master.py``, ``parent.py``, ...), and pip does
not notice when two distributions write the same file: the second one
installed overwrites the first one's modules, and uninstalling either one
later deletes files the other still lists as its own. Rather than run on a
mix of both, this package refuses to import:

- when a ``mitogen`` distribution is installed in the same directory as
  this package (``mitogen/__init__.py`` checks, with
  :func:`refuse_foreign_neighbour`);
- when a module only this project has (``mitogen.local``,
  ``mitogen.become``, ...) is imported into upstream's package, because
  upstream was installed over this project (:func:`require_this_project`).

Either way :class:`ForeignMitogenError` says which commands repair the
environment. A ``mitogen`` distribution in another directory of
``sys.path`` clashes with no file: :func:`without_foreign_directories`
keeps its directory out of this package's ``__path__``.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

__all__ = [
    'ForeignMitogenError', 'foreign_metadata', 'refuse_foreign_neighbour',
    'repair_text', 'require_this_project', 'without_foreign_directories',
]

import os
import re
import sys

_FOREIGN_METADATA = re.compile(
    r'^mitogen(?:-([^-]+))?\.(?:dist|egg)-info$', re.IGNORECASE)


class ForeignMitogenError(ImportError):
    """This project's ``mitogen`` package and the ``mitogen`` distribution
    (upstream Mitogen) are installed over each other. The message gives
    the commands that keep one of them, whole."""


def foreign_metadata(directory):
    """Return ``(version, path)`` for each metadata directory of a
    distribution named ``mitogen`` directly in `directory` (version is
    None when its name does not carry one)."""
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return []
    found = []
    for entry in entries:
        match = _FOREIGN_METADATA.match(entry)
        if match:
            found.append((match.group(1), os.path.join(directory, entry)))
    return found


def without_foreign_directories(package_path, own_directory):
    """Return `package_path` without the directories (other than
    `own_directory`, where this package's ``__init__.py`` is) that sit
    beside a ``mitogen`` distribution's metadata."""
    own = os.path.realpath(own_directory)
    return [p for p in package_path
            if os.path.realpath(p) == own
            or not foreign_metadata(os.path.dirname(os.path.abspath(p)))]


def _ours():
    """Names of this project's installed distributions that put files into
    the ``mitogen`` package, mitogen-core first; empty without package
    metadata."""
    try:
        from importlib import metadata
    except ImportError:
        return []
    names = set()
    for dist in metadata.distributions():
        name = dist.metadata['Name'] or ''
        if name.lower().startswith('mitogen-'):
            names.add(name)
    return sorted(names, key=lambda n: (n != 'mitogen-core', n))


def repair_text(foreign_version=None):
    """The commands that keep one of the two projects, for this Python."""
    ours = ' '.join(_ours() or ['mitogen-core', 'mitogen-master'])
    upstream = 'mitogen==%s' % (foreign_version,) if foreign_version \
        else 'mitogen'
    pip = '%s -m pip' % (sys.executable or 'python',)
    return (
        'To keep this project (mitogen-core and the distributions built on '
        'it):\n'
        '    %(pip)s uninstall -y mitogen\n'
        '    %(pip)s install --force-reinstall --no-deps %(ours)s\n'
        'To keep upstream Mitogen instead:\n'
        '    %(pip)s uninstall -y %(ours)s\n'
        '    %(pip)s install --force-reinstall --no-deps %(upstream)s\n'
        'or give each its own virtual environment. Both install the '
        'package "mitogen" with modules of the same names, so they cannot '
        'share one.' % {'pip': pip, 'ours': ours, 'upstream': upstream})


def refuse_foreign_neighbour(own_directory):
    """Raise :class:`ForeignMitogenError` if a ``mitogen`` distribution is
    installed in the directory that holds `own_directory` (this package's
    directory)."""
    parent = os.path.dirname(os.path.abspath(own_directory))
    found = foreign_metadata(parent)
    if not found:
        return
    version, path = found[0]
    raise ForeignMitogenError(
        'mitogen: the distribution "mitogen"%s (upstream Mitogen, %s) is '
        'installed in %s, the same directory as this project\'s mitogen '
        'package: one overwrote modules of the other.\n%s' % (
            ' %s' % (version,) if version else '', path, parent,
            repair_text(version)))


def require_this_project():
    """Raise :class:`ForeignMitogenError` unless ``mitogen.core`` is this
    project's core: called on import by the modules upstream Mitogen does
    not have, which would otherwise run on upstream's core after upstream
    was installed over this project."""
    try:
        import mitogen.core
    except ImportError:
        # Deleted by "pip uninstall mitogen": upstream had overwritten it,
        # so its record of installed files names it.
        raise ForeignMitogenError(
            'mitogen: mitogen.core is missing from %s, probably deleted '
            'with the distribution "mitogen" (upstream Mitogen) that had '
            'been installed over this project.\n%s' % (
                os.path.dirname(os.path.abspath(__file__)), repair_text()))
    if getattr(mitogen.core, 'DISTRIBUTION', None) == 'mitogen-core':
        return
    core_file = getattr(mitogen.core, '__file__', None) or 'mitogen.core'
    found = foreign_metadata(os.path.dirname(os.path.dirname(
        os.path.abspath(core_file))))
    raise ForeignMitogenError(
        'mitogen: %s is not this project\'s core: the distribution '
        '"mitogen" (upstream Mitogen) was installed over this project\'s '
        'mitogen package, replacing its modules.\n%s' % (
            core_file, repair_text(found[0][0] if found else None)))
