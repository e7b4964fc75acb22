"""
The master side of mitogen: locating the modules children ask for, and
serving them.

This module only ever runs in the master, so it may use any syntax of the
master's Python (3.9 and later).
"""
# master-only module

from __future__ import annotations

__all__ = [
    'Broker', 'LogForwarder', 'ModuleFinder', 'ModuleResponder',
    'ModuleSource', 'Router', 'neutralize_main',
]

import ast
import atexit
import dataclasses
import importlib.machinery
import logging
import os
import re
import sys
import sysconfig
import types
import zlib
from typing import Any

import mitogen
import mitogen.core
import mitogen.parent


# ---- Module finder ----
#
# A child asks for modules by name, and a compromised child may ask for any
# name at all.  The finder therefore never imports anything on a child's
# behalf: it walks the same path machinery the import system uses
# (``PathFinder.find_spec`` from the top-level package down, through each
# parent's search locations), reads files, and parses source with ``ast``.
# The only module objects it looks at are ones the master already imported,
# and it reads their ``__dict__`` without triggering attribute hooks
# (``__getattr__``, lazy loaders), so looking at them runs no code.

_SOURCE_SUFFIXES = tuple(importlib.machinery.SOURCE_SUFFIXES)
_BYTECODE_SUFFIXES = tuple(importlib.machinery.BYTECODE_SUFFIXES)
_EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)

# Kinds of module the finder can locate; only the first two can be served.
_SOURCE = 'source'
_NAMESPACE = 'namespace'
_EXTENSION = 'extension'
_SOURCELESS = 'sourceless'
_NOT_ON_DISK = 'not-on-disk'


@dataclasses.dataclass(frozen=True)
class ModuleSource:
    """
    A module the master can send to a child, as found by
    :meth:`ModuleFinder.find`.
    """

    #: Fully qualified name of the module, e.g. ``'pkg.sub.mod'``.
    fullname: str
    #: Path of the source file on the master (a package's ``__init__.py``),
    #: or ``None`` for a namespace package, which has no file.
    path: str | None
    #: The source exactly as stored on disk, so the child compiles it with
    #: its own encoding declaration; ``b''`` for a namespace package.
    source: bytes
    #: True for packages, namespace packages included.
    is_pkg: bool
    #: True for a :pep:`420` namespace package.
    is_namespace: bool
    #: For a package, the sorted fully qualified names of the submodules and
    #: subpackages the master could serve from any of the package's
    #: directories; a child treats every other name below the package as
    #: absent without asking.  ``None`` for a plain module.
    pkg_present: list[str] | None


class _Location:
    """Where, and as what kind of file, the master found one module."""

    __slots__ = ('kind', 'origin', 'search')

    def __init__(self, kind, origin, search):
        #: One of the kind constants above.
        self.kind = kind
        #: File the module is loaded from, or None for a namespace package.
        self.origin = origin
        #: Directories a package's submodules are searched in; None for a
        #: plain module.
        self.search = search


def _is_valid_name(fullname):
    # Each part becomes a file name during the search: a part such as
    # '/etc/passwd' or '..' must never reach os.path.join.
    return (
        isinstance(fullname, str)
        and fullname != ''
        and all(part.isidentifier() for part in fullname.split('.'))
    )


def _ancestors(fullname):
    """``'a.b.c'`` -> ``['a', 'a.b']``, outermost first."""
    parts = fullname.split('.')
    return ['.'.join(parts[:i]) for i in range(1, len(parts))]


def _module_globals(fullname):
    """
    The ``__dict__`` of ``sys.modules[fullname]`` if that is a module object,
    else None.  ``object.__getattribute__`` bypasses ``__getattribute__``
    overrides of lazy modules, and a dict lookup bypasses module-level
    ``__getattr__``, so this never runs code in the module.
    """
    module = sys.modules.get(fullname)
    if module is None or not issubclass(type(module), types.ModuleType):
        return None
    try:
        namespace = object.__getattribute__(module, '__dict__')
    except AttributeError:
        return None
    return namespace if isinstance(namespace, dict) else None


def _module_spec(namespace):
    spec = namespace.get('__spec__')
    if issubclass(type(spec), importlib.machinery.ModuleSpec):
        return spec
    return None


def _path_entries(path):
    """The string entries of a ``__path__``-like object, or ``[]``."""
    if isinstance(path, (list, tuple)):
        return [entry for entry in path if isinstance(entry, str)]
    try:
        # A namespace package's _NamespacePath recomputes itself from its
        # parent's __path__ when iterated, which fails if the parent left
        # sys.modules.
        return [entry for entry in list(path) if isinstance(entry, str)]
    except (TypeError, KeyError, AttributeError):
        return []


def _namespace_portions(tail, search):
    portions = []
    for entry in search:
        directory = os.path.join(os.getcwd() if entry == '' else entry, tail)
        if os.path.isdir(directory) and directory not in portions:
            portions.append(directory)
    return portions


def _kind_of_file(path):
    if path.endswith(_SOURCE_SUFFIXES):
        return _SOURCE if os.path.isfile(path) else _NOT_ON_DISK
    if path.endswith(_EXTENSION_SUFFIXES):
        return _EXTENSION
    if path.endswith(_BYTECODE_SUFFIXES):
        return _SOURCELESS
    return _NOT_ON_DISK


def _location_from_spec(spec, tail, search):
    if spec.origin is None and spec.submodule_search_locations is not None:
        # Portions are computed here rather than by iterating the spec's
        # _NamespacePath, which looks up the parent in sys.modules and so
        # fails for a package the master never imported.
        return _Location(_NAMESPACE, None, _namespace_portions(tail, search))
    if isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
        kind = _EXTENSION
    elif isinstance(spec.loader, importlib.machinery.SourcelessFileLoader):
        kind = _SOURCELESS
    elif isinstance(spec.origin, str):
        kind = _kind_of_file(spec.origin)
    else:
        return None
    package_search = None
    if spec.submodule_search_locations is not None:
        package_search = list(spec.submodule_search_locations)
    return _Location(kind, spec.origin, package_search)


def _search(fullname, tail, search):
    """Locate ``fullname`` in ``search`` (``sys.path`` if None)."""
    try:
        spec = importlib.machinery.PathFinder.find_spec(fullname, search)
    except KeyError:
        # PathFinder only gets as far as building a _NamespacePath when it
        # found nothing but namespace portions, and that constructor looks
        # the parent package up in sys.modules: KeyError when the master
        # never imported it.
        portions = _namespace_portions(tail, search)
        return _Location(_NAMESPACE, None, portions) if portions else None
    if spec is None:
        return None
    return _location_from_spec(spec, tail, sys.path if search is None else search)


def _location_from_sys_modules(fullname):
    """
    Locate a module the master already imported but the path search cannot
    find, e.g. because its directory has since left ``sys.path``.  Only a
    module registered under its own name counts: an alias such as
    ``sys.modules['pkg.compat'] = json`` would run ``json``'s code under the
    wrong name in a child.
    """
    namespace = _module_globals(fullname)
    if namespace is None:
        return None
    spec = _module_spec(namespace)
    if namespace.get('__name__') != fullname and (
            spec is None or spec.name != fullname):
        return None
    path = namespace.get('__path__')
    search = None if path is None else _path_entries(path)
    filename = namespace.get('__file__')
    if isinstance(filename, str) and os.path.isfile(filename):
        return _Location(_kind_of_file(filename), filename, search)
    if filename is None and search:
        return _Location(_NAMESPACE, None, [
            entry for entry in search if os.path.isdir(entry)
        ])
    return None


def _extend_search(location, fullname):
    """
    Add the directories in the live ``__path__`` of an imported package to
    those the spec search found: packages such as ``mitogen`` itself extend
    ``__path__`` at import time (``pkgutil.extend_path``), and a child must
    see every submodule the master can import.
    """
    namespace = _module_globals(fullname)
    if namespace is None or namespace.get('__name__') != fullname:
        return
    path = namespace.get('__path__')
    if path is None:
        return
    merged = _path_entries(path)
    merged.extend(entry for entry in location.search if entry not in merged)
    location.search = merged


def _stdlib_dirs():
    paths = sysconfig.get_paths()
    dirs = []
    for key in ('stdlib', 'platstdlib'):
        path = paths.get(key)
        if path:
            path = os.path.realpath(path)
            if path not in dirs:
                dirs.append(path)
    return dirs


def _is_in_stdlib_dir(path, stdlib_dirs):
    path = os.path.realpath(path)
    for directory in stdlib_dirs:
        if path == directory or not path.startswith(directory + os.sep):
            continue
        relative = path[len(directory) + 1:].split(os.sep)
        if 'site-packages' not in relative and 'dist-packages' not in relative:
            return True
    return False


def _is_within(path, directory):
    return path != directory and path.startswith(directory.rstrip(os.sep) + os.sep)


def _resource_parts(relative):
    """
    Split a child-supplied ``'/'``-separated resource path into parts, or
    return None if it could name anything outside the package directory
    lexically (absolute paths, ``..``, other separators, NUL).
    """
    if not isinstance(relative, str) or '\0' in relative:
        return None
    if relative.startswith('/') or os.path.isabs(relative):
        return None
    parts = relative.split('/')
    for part in parts:
        if part in ('', '.', '..'):
            return None
        if os.sep in part or (os.altsep and os.altsep in part):
            return None
    return parts


def _is_main_guard(test):
    """True for ``__name__ == '__main__'`` and ``'__main__' == __name__``."""
    if not isinstance(test, ast.Compare) or len(test.ops) != 1:
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = (test.left, test.comparators[0])
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == '__name__']
    strings = [
        s for s in sides
        if isinstance(s, ast.Constant) and isinstance(s.value, str)
        and s.value == '__main__'
    ]
    return len(names) == 1 and len(strings) == 1


def neutralize_main(source: bytes) -> bytes:
    """
    Return ``source`` with everything from its first top-level
    ``if __name__ == '__main__':`` guard (or ``'__main__' == __name__``, with
    either kind of quotes) to the end removed, so a child that loads the
    master's ``__main__`` module defines its functions and classes without
    running the program.  Lines before the guard are kept byte for byte, so
    line numbers in tracebacks stay those of the master's file.

    Source without a guard, and source the master's Python cannot parse, is
    returned unchanged.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return source
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_guard(node.test):
            # bytes.splitlines() breaks at exactly the line endings the
            # tokenizer counts (\n, \r\n, \r), so lineno indexes it.
            lines = source.splitlines(keepends=True)
            return b''.join(lines[:node.lineno - 1])
    return source


def _statement_fields():
    # Statement lists a compound statement holds.  Import statements only
    # occur in these, never inside expressions, so a walk through them
    # alone finds every import, several times faster than ast.walk().
    fields = {
        ast.FunctionDef: ('body',),
        ast.AsyncFunctionDef: ('body',),
        ast.ClassDef: ('body',),
        ast.If: ('body', 'orelse'),
        ast.For: ('body', 'orelse'),
        ast.AsyncFor: ('body', 'orelse'),
        ast.While: ('body', 'orelse'),
        ast.With: ('body',),
        ast.AsyncWith: ('body',),
        ast.Try: ('body', 'handlers', 'orelse', 'finalbody'),
        ast.ExceptHandler: ('body',),
    }
    for name, names in [
        ('TryStar', ('body', 'handlers', 'orelse', 'finalbody')),  # 3.11+
        ('Match', ('cases',)),  # 3.10+
        ('match_case', ('body',)),  # 3.10+
    ]:
        if hasattr(ast, name):
            fields[getattr(ast, name)] = names
    return fields


_STATEMENT_FIELDS = _statement_fields()


def _iter_import_statements(body):
    stack = list(reversed(body))
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is ast.Import or kind is ast.ImportFrom:
            yield node
            continue
        # Pushed last field first, so statements pop in source order.
        for field in reversed(_STATEMENT_FIELDS.get(kind, ())):
            stack.extend(reversed(getattr(node, field)))


# Parsing is nearly all the cost of preloading (about 0.1 ms per KiB of
# source), and most modules import everything near the top.  So only the
# part of a file up to its last import statement is parsed when that can be
# done exactly:
#
# - every import statement contains the keyword ``import``, never touching
#   an identifier character, so no import statement starts after the last
#   such word found by _last_import_word();
# - the prefix is cut just before the first line after that word that
#   starts in column 0 with a letter, ``_`` or ``@``.  If the cut falls
#   inside a string, brackets or a backslash continuation the prefix does
#   not parse, and the whole file is parsed instead.  If the prefix parses,
#   the tokenizer was between top-level statements there, so the prefix's
#   statements, and their import statements, are those of the whole file
#   (a compound statement may lose an ``else`` clause, which holds no
#   import).
#
# A consequence: a file that is broken only after its last import (say,
# Python 2 ``print`` statements) still yields its imports.
_TOP_LEVEL_LINE = re.compile(rb'^[A-Za-z_@]', re.MULTILINE)


def _is_word_byte(byte):
    # Bytes of non-ASCII characters count: they can only be part of an
    # identifier next to the word, never a keyword's neighbour.
    return byte == b'_' or byte.isalnum() or byte >= b'\x80'


def _last_import_word(source):
    end = len(source)
    while True:
        start = source.rfind(b'import', 0, end)
        if start < 0:
            return -1
        before = source[start - 1:start] if start else b''
        after = source[start + 6:start + 7]
        if not (before and _is_word_byte(before)) and not (
                after and _is_word_byte(after)):
            return start
        end = start


def _parse_imports_prefix(source, filename):
    last = _last_import_word(source)
    if last < 0:
        return None
    newline = source.find(b'\n', last)
    match = None if newline < 0 else _TOP_LEVEL_LINE.search(source, newline + 1)
    if match is not None:
        try:
            return ast.parse(source[:match.start()], filename)
        except (SyntaxError, ValueError):
            pass
    return ast.parse(source, filename)


def _scan_imports(source, filename):
    """
    The import statements of ``source`` in source order, each reduced to
    what resolution needs, ``(level, module, names)``: ``import a.b`` is
    ``(0, 'a.b', None)``, ``from ..m import x, y`` is ``(2, 'm', ('x',
    'y'))`` and ``from . import *`` is ``(1, None, ())``.
    """
    try:
        tree = _parse_imports_prefix(source, filename)
    except (SyntaxError, ValueError, RecursionError):
        # Python 2-only or broken source is still served; the child reports
        # its own error if it cannot compile it either.
        return ()
    if tree is None:
        return ()
    records = []
    for node in _iter_import_statements(tree.body):
        if isinstance(node, ast.Import):
            records.extend((0, alias.name, None) for alias in node.names)
        else:
            names = tuple(a.name for a in node.names if a.name != '*')
            records.append((node.level, node.module, names))
    return tuple(records)


def _resolve_records(records, base_package):
    """
    Absolute module names an import of ``records`` may load, in source order
    and without duplicates.  ``base_package`` anchors relative imports: the
    package itself for a package, the parent for a plain module.
    """
    names = []
    seen = set()

    def add(name):
        if name not in seen:
            seen.add(name)
            names.append(name)

    base_parts = base_package.split('.') if base_package else []
    for level, module, imported in records:
        if level:
            keep = len(base_parts) - (level - 1)
            if keep <= 0:
                continue
            anchor = '.'.join(base_parts[:keep])
            target = anchor + '.' + module if module else anchor
        else:
            target = module
        if not _is_valid_name(target):
            continue
        for ancestor in _ancestors(target):
            add(ancestor)
        add(target)
        for name in imported or ():
            add(target + '.' + name)
    return names


def _submodule_name(entry):
    """
    The submodule name a directory entry provides to its package, if the
    master could serve it: a ``.py`` file, a directory with an
    ``__init__.py``, or a directory with no ``__init__`` at all, which the
    import system treats as a namespace package.
    """
    name = entry.name
    try:
        is_dir = entry.is_dir()
    except OSError:
        return None
    if is_dir:
        if not name.isidentifier() or name == '__pycache__':
            return None
        init = os.path.join(entry.path, '__init__')
        if any(os.path.isfile(init + s) for s in _SOURCE_SUFFIXES):
            return name
        suffixes = _BYTECODE_SUFFIXES + _EXTENSION_SUFFIXES
        if any(os.path.exists(init + s) for s in suffixes):
            return None
        return name
    for suffix in _SOURCE_SUFFIXES:
        if name.endswith(suffix):
            stem = name[:-len(suffix)]
            if stem.isidentifier() and stem != '__init__':
                return stem
    return None


class ModuleFinder:
    """
    Locate modules on the master and decide whether a child may be sent
    them.

    The finder is pure logic over the master's file system and
    ``sys.modules``; it never imports a module on a child's behalf, since a
    child chooses the names it asks for.  Modules are located the way the
    import system would (``sys.path``, each parent package's search
    directories) and, failing that, through a module the master already
    imported from a ``.py`` file.

    The standard library, built-in modules, native extension modules and
    modules present only as bytecode are never served:
    :meth:`why_not_served` says why.
    """

    def __init__(self):
        self._stdlib_dirs = _stdlib_dirs()
        # Scanning is cached per file as (mtime_ns, size, records); an
        # edited file is rescanned on the next request.
        self._scan_cache = {}
        # Modules found in a file, kept across requests: searching sys.path
        # costs several stat() calls per entry, on the broker thread, for
        # every related module of every request. A hit is checked with one
        # stat() of its file. Misses and namespace packages (which gain
        # portions as sys.path grows) are searched afresh each time.
        self._located = {}

    # -- Locating -------------------------------------------------------

    def _locate(self, fullname, memo):
        """
        The location of ``fullname`` or None.  ``memo`` holds the results
        of one request, so resolving many related names visits each package
        once.  The walk is iterative, from the top-level package down, and
        stops at the first missing parent: a child may send a name with
        thousands of parts.
        """
        if fullname in memo:
            return memo[fullname]
        parts = fullname.split('.')
        location = None
        for depth in range(1, len(parts) + 1):
            name = '.'.join(parts[:depth])
            if name in memo:
                location = memo[name]
            else:
                known = self._located.get(name)
                if known is not None and os.path.isfile(known.origin):
                    location = known
                else:
                    location = self._locate_one(name, parts[depth - 1],
                                                location)
                    if location is not None and location.origin and \
                            location.kind != _NAMESPACE:
                        self._located[name] = location
                memo[name] = location
            if location is None:
                break
        memo[fullname] = location
        return location

    @staticmethod
    def _locate_one(fullname, tail, parent_location):
        search = None
        if '.' in fullname:
            if parent_location.search is None:
                return None
            search = parent_location.search
        location = _search(fullname, tail, search)
        if location is None:
            return _location_from_sys_modules(fullname)
        if location.search is not None:
            _extend_search(location, fullname)
        return location

    def _is_stdlib(self, top, memo):
        key = ('stdlib', top)
        if key not in memo:
            memo[key] = self._decide_stdlib(top, memo)
        return memo[key]

    def _decide_stdlib(self, top, memo):
        if top in getattr(sys, 'stdlib_module_names', ()):
            return True
        # Python 3.9 has no list of names, and later ones omit the stdlib's
        # own test packages: decide by where the module lives.
        location = self._locate(top, memo)
        if location is None:
            return False
        paths = [location.origin] if location.origin else location.search
        return bool(paths) and all(
            _is_in_stdlib_dir(path, self._stdlib_dirs) for path in paths
        )

    def _refusal(self, fullname, memo):
        # Resolving one module's relations asks about the same names many
        # times (~90 per module of a package): decided once per request.
        key = ('refusal', fullname)
        if key not in memo:
            memo[key] = self._decide_refusal(fullname, memo)
        return memo[key]

    def _decide_refusal(self, fullname, memo):
        if fullname in sys.builtin_module_names:
            return '%r is a built-in module' % (fullname,)
        location = self._locate(fullname, memo)
        if location is not None and location.kind == _EXTENSION:
            return (
                '%r is a native extension module (%s) and cannot be sent '
                'to a child' % (fullname, os.path.basename(location.origin))
            )
        if self._is_stdlib(fullname.partition('.')[0], memo):
            return (
                "%r is part of the standard library of the master's "
                'Python; children use their own' % (fullname,)
            )
        if location is None:
            return None
        if location.kind == _SOURCELESS:
            return (
                '%r is only available as bytecode (%s) without source, and '
                'cannot be sent to a child'
                % (fullname, os.path.basename(location.origin))
            )
        if location.kind == _NOT_ON_DISK:
            return (
                '%r was found at %r, which is not a Python source file on '
                "the master's file system" % (fullname, location.origin)
            )
        return None

    def _servable(self, fullname, memo):
        """The location of a module that may be served, else None."""
        if self._refusal(fullname, memo) is not None:
            return None
        return self._locate(fullname, memo)

    # -- __main__ -------------------------------------------------------

    def _main_file(self):
        namespace = _module_globals('__main__')
        if namespace is None:
            return None, None
        filename = namespace.get('__file__')
        if not isinstance(filename, str):
            return None, namespace
        return filename, namespace

    def _find_main(self):
        filename, _ = self._main_file()
        if filename is None or _kind_of_file(filename) != _SOURCE:
            return None
        source = self._read(filename)
        if source is None:
            return None
        return ModuleSource(
            fullname='__main__',
            path=filename,
            source=neutralize_main(source),
            is_pkg=False,
            is_namespace=False,
            pkg_present=None,
        )

    def _main_refusal(self):
        filename, _ = self._main_file()
        if filename is None:
            return None
        kind = _kind_of_file(filename)
        if kind == _SOURCELESS:
            return (
                "'__main__' is only available as bytecode (%s) without "
                'source, and cannot be sent to a child'
                % (os.path.basename(filename),)
            )
        if kind != _SOURCE:
            return (
                "'__main__' was loaded from %r, which is not a Python source "
                "file on the master's file system" % (filename,)
            )
        return None

    # -- Public interface -----------------------------------------------

    def find(self, fullname) -> ModuleSource | None:
        """
        Return the :class:`ModuleSource` for ``fullname``, or ``None`` when
        the master cannot find it or must not serve it (see
        :meth:`why_not_served`).

        ``'__main__'`` is served from the file of the master's main module,
        through :func:`neutralize_main`; it is ``None`` when the main module
        has no source file (an interactive session).
        """
        if fullname == '__main__':
            return self._find_main()
        if not _is_valid_name(fullname):
            return None
        memo = {}
        location = self._servable(fullname, memo)
        if location is None:
            return None
        pkg_present = None
        if location.search is not None:
            pkg_present = self._list_submodules(fullname, location.search)
        if location.kind == _NAMESPACE:
            return ModuleSource(
                fullname=fullname,
                path=None,
                source=b'',
                is_pkg=True,
                is_namespace=True,
                pkg_present=pkg_present,
            )
        source = self._read(location.origin)
        if source is None:
            return None
        return ModuleSource(
            fullname=fullname,
            path=location.origin,
            source=source,
            is_pkg=location.search is not None,
            is_namespace=False,
            pkg_present=pkg_present,
        )

    def why_not_served(self, fullname) -> str | None:
        """
        Return a sentence saying why ``fullname`` must not be sent to a
        child, or ``None`` when it can be served or simply does not exist.

        Refused are built-in modules, native extension modules (``.so``,
        ``.pyd``), every module of the standard library of the master's
        Python (children use their own), modules present only as bytecode,
        and modules found somewhere other than a source file on disk, such
        as inside a zip archive.
        """
        if fullname == '__main__':
            return self._main_refusal()
        if not _is_valid_name(fullname):
            return None
        return self._refusal(fullname, {})

    def find_related(self, fullname) -> list[str]:
        """
        Return the names of the modules ``fullname`` will probably import,
        for preloading into a child along with it.

        Import statements are read from source with ``ast`` (anywhere in the
        module: inside functions and ``try`` blocks too; ``__import__`` and
        ``importlib`` calls are not followed), resolved to modules the
        master can serve, and followed transitively within the top-level
        package of ``fullname``.  For ``'__main__'`` every servable module it
        imports is listed, but only imports inside the main module's own
        package (when run with ``python -m``) are followed further.  Source
        the master's Python cannot parse up to its last import statement
        (Python 2-only code, say) contributes no imports, and is still
        served.  Scans are cached per file until its size or modification
        time changes.

        The list is deterministic and dependency first: each module comes
        after its parent packages and, where import cycles allow, after the
        modules it imports.  It omits ``fullname`` and the packages
        containing it, which a child has always imported by the time it asks
        for ``fullname``.
        """
        memo = {}
        if fullname == '__main__':
            return self._related_to_main(memo)
        if not _is_valid_name(fullname):
            return []
        location = self._servable(fullname, memo)
        if location is None:
            return []
        top = fullname.partition('.')[0]
        direct = [
            name for name in self._imports_of(fullname, location)
            if name.partition('.')[0] == top
            and self._servable(name, memo) is not None
        ]
        return self._dependency_order(fullname, direct, top, memo)

    def _related_to_main(self, memo):
        filename, namespace = self._main_file()
        if filename is None or _kind_of_file(filename) != _SOURCE:
            return []
        spec = _module_spec(namespace)
        base = spec.parent if spec is not None else namespace.get('__package__')
        if not isinstance(base, str):
            base = ''
        records = self._records(filename, main=True)
        direct = [
            name for name in _resolve_records(records, base)
            if self._servable(name, memo) is not None
        ]
        home = base.partition('.')[0] or None
        return self._dependency_order('__main__', direct, home, memo)

    def _imports_of(self, fullname, location):
        if location.kind != _SOURCE:
            return []
        is_pkg = location.search is not None
        base = fullname if is_pkg else fullname.rpartition('.')[0]
        return _resolve_records(self._records(location.origin), base)

    def _dependency_order(self, root, direct, top, memo):
        """
        Order ``root``'s dependency graph by a depth-first post-order walk
        from ``root``: a module is emitted once everything it imports has
        been.  Parents are a module's first dependencies.  Only modules in
        the top-level package ``top`` are expanded.
        """
        present = {root, *_ancestors(root)}

        def dependencies(name):
            deps = [
                ancestor for ancestor in _ancestors(name)
                if ancestor not in present
                and self._servable(ancestor, memo) is not None
            ]
            if name.partition('.')[0] == top:
                location = self._locate(name, memo)
                deps.extend(
                    dep for dep in self._imports_of(name, location)
                    if dep.partition('.')[0] == top
                    and self._servable(dep, memo) is not None
                )
            return [dep for dep in deps if dep not in present]

        visited = set(present)
        order = []
        stack = [(root, iter([d for d in direct if d not in present]))]
        while stack:
            name, pending = stack[-1]
            for dep in pending:
                if dep not in visited:
                    visited.add(dep)
                    stack.append((dep, iter(dependencies(dep))))
                    break
            else:
                stack.pop()
                order.append(name)
        order.pop()  # root

        # An import cycle through a package can put a submodule before its
        # package; packages must always arrive first.
        included = set(order)
        result = []
        emitted = set()
        for name in order:
            for ancestor in _ancestors(name) + [name]:
                if ancestor in included and ancestor not in emitted:
                    emitted.add(ancestor)
                    result.append(ancestor)
        return result

    # -- Files ----------------------------------------------------------

    @staticmethod
    def _read(path):
        try:
            with open(path, 'rb') as fp:
                return fp.read()
        except OSError:
            return None

    def _records(self, path, main=False):
        try:
            st = os.stat(path)
        except OSError:
            return ()
        key = (path, main)
        cached = self._scan_cache.get(key)
        if cached is not None and cached[:2] == (st.st_mtime_ns, st.st_size):
            return cached[2]
        source = self._read(path)
        if source is None:
            return ()
        if main:
            source = neutralize_main(source)
        records = _scan_imports(source, path)
        self._scan_cache[key] = (st.st_mtime_ns, st.st_size, records)
        return records

    @staticmethod
    def _list_submodules(fullname, search):
        names = set()
        for directory in search:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                name = _submodule_name(entry)
                if name is not None:
                    names.add(fullname + '.' + name)
        return sorted(names)

    def _package_dirs(self, package):
        if not _is_valid_name(package):
            return []
        location = self._servable(package, {})
        if location is None or location.search is None:
            return []
        return [d for d in location.search if os.path.isdir(d)]

    def get_resource(self, package, resource) -> bytes | None:
        """
        Return the contents of the data file ``resource`` inside the
        directory (or, for a namespace package, the first of the directories)
        of ``package``, for ``importlib.resources`` in a child.

        ``resource`` is a relative, ``'/'``-separated path and may name a
        file in a subdirectory.  Return ``None`` if the package cannot be
        served, the file does not exist, or the path is refused: absolute
        paths, ``..`` and ``.`` parts, and anything that resolves (following
        symbolic links) outside the package directory.
        """
        parts = _resource_parts(resource)
        if parts is None:
            return None
        for directory in self._package_dirs(package):
            base = os.path.realpath(directory)
            path = os.path.realpath(os.path.join(base, *parts))
            if _is_within(path, base) and os.path.isfile(path):
                return self._read(path)
        return None

    def list_resources(self, package, subdir='') -> list[tuple[str, bool]] | None:
        """
        Return the sorted ``(name, is_dir)`` entries of the directory
        ``subdir`` (relative and ``'/'``-separated; ``''`` for the package
        directory itself) across every directory of ``package``, for
        traversing ``importlib.resources.files()`` and ``contents()`` in a
        child.

        Entries that resolve outside the package directory are left out.
        Return ``None`` if the package cannot be served, ``subdir`` is
        refused by the rules of :meth:`get_resource`, or no directory of
        that name exists.
        """
        parts = [] if subdir == '' else _resource_parts(subdir)
        if parts is None:
            return None
        found = False
        entries = {}
        for directory in self._package_dirs(package):
            base = os.path.realpath(directory)
            target = os.path.realpath(os.path.join(base, *parts))
            if parts and not _is_within(target, base):
                continue
            try:
                names = os.listdir(target)
            except OSError:
                continue
            found = True
            for name in names:
                path = os.path.realpath(os.path.join(target, name))
                if _is_within(path, base) and name not in entries:
                    entries[name] = os.path.isdir(path)
        if not found:
            return None
        return sorted(entries.items())



# ---------------------------------------------------------------------------
# Serving modules to children
# ---------------------------------------------------------------------------

_LOG = logging.getLogger('mitogen')


#: What a child gets when it imports ``mitogen.master``: this module is
#: master-only (it need not compile on a child's Python), yet programs
#: import it at the top of scripts whose functions children run.
CHILD_MASTER_STUB = b'''"""
Stand-in for mitogen.master inside a child context: the master side of
mitogen runs only in the master process.
"""
import mitogen.core


class _MasterOnly(object):
    def __init__(self, *args, **kwargs):
        raise mitogen.core.Error(
            'mitogen.master.%s can only be used in the master process. If '
            'a child is importing your script (__main__) to run one of its '
            'functions, the code that creates the router runs at its top '
            "level: put it under an if __name__ == '__main__': guard"
            % (type(self).__name__,))


class Router(_MasterOnly):
    pass


class Broker(_MasterOnly):
    pass
'''


class ModuleResponder:
    """Answers :data:`mitogen.core.GET_MODULE` requests from children with
    :data:`mitogen.core.LOAD_MODULE` messages.

    Before the requested module it sends the modules that the request will
    lead to (see :meth:`ModuleFinder.find_related`) and that the requesting
    context has not been sent yet, so that importing a package of many
    interdependent modules costs a few round trips instead of one each.

    Each answer is a :class:`mitogen.core.ModuleRecord`.
    """

    #: Most compressed bytes of related modules preloaded in answer to one
    #: request.
    preload_budget = 4 * 1024 * 1024

    def __init__(self, router):
        self._router = router
        self._finder = ModuleFinder()
        self._cache = {}
        #: context_id -> names already sent to it
        self._sent = {}
        #: Prefixes of module names that may be served; ``['']`` serves
        #: every module (see :meth:`whitelist_prefix`).
        self.whitelist = ['']
        #: Prefixes of module names that are never served.
        self.blacklist = []
        self._modifiers = {}
        #: Count of GET_MODULE requests answered.
        self.get_module_count = 0
        #: Count of LOAD_MODULE messages sent.
        self.good_load_module_count = 0
        self.bad_load_module_count = 0
        router.add_handler(fn=self._on_get_module,
                           handle=mitogen.core.GET_MODULE)
        router.add_handler(fn=self._on_get_resource,
                           handle=mitogen.core.GET_RESOURCE)

    def __repr__(self):
        return 'ModuleResponder'

    def whitelist_prefix(self, fullname):
        """Serve only modules named `fullname` or below it (and those of
        earlier calls). The first call restricts serving from everything to
        :mod:`mitogen` plus `fullname`."""
        if self.whitelist == ['']:
            self.whitelist = ['mitogen']
        self.whitelist.append(fullname)

    def blacklist_prefix(self, fullname):
        """Never serve modules named `fullname` or below it."""
        self.blacklist.append(fullname)

    def add_source_modifier(self, fullname, func):
        """Serve module `fullname` with its source passed through
        ``func(fullname, path, source, is_pkg)``, which returns ``(path,
        source, is_pkg)`` (source is bytes). Several modifiers of one
        module run in the order they were added."""
        self._modifiers.setdefault(fullname, []).append(func)
        self._cache.pop(fullname, None)

    @staticmethod
    def _matches(fullname, prefix):
        return (prefix == '' or fullname == prefix or
                fullname.startswith(prefix + '.'))

    def _list_refusal(self, fullname):
        if fullname in ('__main__', 'mitogen.master'):
            return None
        if any(self._matches(fullname, p) for p in self.blacklist):
            return 'it is on the master\'s blacklist'
        if not any(self._matches(fullname, p) for p in self.whitelist):
            return 'it is not on the master\'s whitelist'
        return None

    def _modified(self, fullname, src):
        path, source, is_pkg = src.path, src.source, src.is_pkg
        for func in self._modifiers.get(fullname, ()):
            path, source, is_pkg = func(fullname, path, source, is_pkg)
        return path, source

    def _build_record(self, fullname):
        refusal = self._list_refusal(fullname)
        if refusal:
            return mitogen.core.ModuleRecord.absent(fullname, refusal)
        record = self._cache.get(fullname)
        if record is not None:
            return record
        if fullname == 'mitogen.master':
            record = mitogen.core.ModuleRecord.found(
                fullname, None, 'mitogen/master.py',
                mitogen.core.Blob(zlib.compress(CHILD_MASTER_STUB)))
            self._cache[fullname] = record
            return record
        reason = self._finder.why_not_served(fullname)
        src = None if reason else self._finder.find(fullname)
        if src is None:
            # A reason means "refused"; None means simply not found.
            record = mitogen.core.ModuleRecord.absent(fullname, reason or None)
        else:
            related = [] if fullname == '__main__' else \
                self._finder.find_related(fullname)
            pkg_present = src.pkg_present
            if src.is_pkg and pkg_present is None:
                pkg_present = []
            path, source = self._modified(fullname, src)
            # Level 6: a record is compressed once and sent to every child
            # that asks. Measured on 2.4 MB of real sources: level 1 is 2.2x
            # faster (61 against 138 us per KB) but 16 % bigger, which costs
            # more than it saves once a few children fetch it over a network;
            # level 9 is 2.9x slower for 0.5 % less.
            record = mitogen.core.ModuleRecord.found(
                fullname, pkg_present, path,
                mitogen.core.Blob(zlib.compress(source, 6)), related)
        if fullname != '__main__':
            self._cache[fullname] = record
        return record

    def _send(self, context_id, record):
        if record.is_found:
            self.good_load_module_count += 1
        else:
            self.bad_load_module_count += 1
        self._router.route(record.to_message(dst_id=context_id))

    def _on_get_module(self, msg):
        if msg.is_dead:
            return
        fullname = msg.data.decode('utf-8', 'replace')
        self.get_module_count += 1
        try:
            if not mitogen.core.is_module_name(fullname):
                # Not worth a search (and never worth a traceback): the
                # requester hears that it is absent.
                record = mitogen.core.ModuleRecord.absent(fullname)
            else:
                record = self._build_record(fullname)
        except Exception as e:
            _LOG.exception('%r: while finding %r', self, fullname)
            record = mitogen.core.ModuleRecord.absent(
                fullname, 'the master failed to read it: %s' % (e,))
        sent = self._sent.setdefault(msg.src_id, set())
        budget = self.preload_budget
        for name in record.related:
            if name in sent:
                continue
            try:
                related = self._build_record(name)
            except Exception:
                continue
            if not related.is_found:
                continue
            budget -= len(related.compressed)
            if budget < 0:
                # Imports found inside functions count as related too, so
                # a module deep in a large package can relate to hundreds
                # of others; past the budget the child asks for what it
                # really uses.
                break
            sent.add(name)
            self._send(msg.src_id, related)
        sent.add(fullname)
        self._send(msg.src_id, record)

    def forward_modules(self, context, fullnames):
        """Send the modules `fullnames` (with the packages holding them and
        the modules they import) to `context` before it asks. For a context reached through
        intermediates, each intermediate on the way caches them too and the
        last one delivers them (:data:`mitogen.core.FORWARD_MODULE`)."""
        path = []
        via = getattr(context, 'via', None)
        while via is not None:
            path.insert(0, via)
            via = getattr(via, 'via', None)
        names = []
        for fullname in fullnames:
            parts = fullname.split('.')
            for i in range(1, len(parts) + 1):
                name = '.'.join(parts[:i])
                if name not in names:
                    names.append(name)
        # Preloading: what importing them will ask for travels with them.
        for name in list(names):
            for related in self._build_record(name).related:
                if related not in names:
                    names.append(related)
        for name in names:
            record = self._build_record(name)
            if not record.is_found:
                continue
            for hop in path or [context]:
                sent = self._sent.setdefault(hop.context_id, set())
                if name not in sent:
                    sent.add(name)
                    self._send(hop.context_id, record)
            if path:
                self._router.route(mitogen.core.Message.pickled(
                    (context.context_id, name), dst_id=path[-1].context_id,
                    handle=mitogen.core.FORWARD_MODULE))

    def _on_get_resource(self, msg):
        if msg.is_dead:
            return
        try:
            kind, package, name = msg.unpickle()
            package = mitogen.core.to_text(package)
            name = mitogen.core.to_text(name)
            if kind == 'read':
                data = self._finder.get_resource(package, name)
                result = mitogen.core.Blob(data) if data is not None else None
            else:
                result = self._finder.list_resources(package, name)
        except Exception as e:
            result = mitogen.core.CallError(e)
        msg.reply(result)


class LogForwarder:
    """Logs :data:`mitogen.core.FORWARD_LOG` records of children on loggers
    named ``mitogen.ctx.<context name>``. Each record also carries the
    original logger name as ``mitogen_name`` and the sending context as
    ``mitogen_context``."""

    def __init__(self, router):
        self._router = router
        self._cache = {}
        router.add_handler(fn=self._on_forward_log,
                           handle=mitogen.core.FORWARD_LOG)

    def __repr__(self):
        return 'LogForwarder'

    def _on_forward_log(self, msg):
        if msg.is_dead:
            return
        context = self._router.context_by_id(msg.src_id)
        try:
            name, level, text = msg.data.decode('utf-8', 'replace') \
                .split('\x00', 2)
            level = int(level)
        except ValueError:
            self._router._refuse(msg, self._router.stream_by_id(msg.src_id),
                                 'bad log record from %r', context)
            return
        logger = self._cache.get(msg.src_id)
        if logger is None or logger.name != 'mitogen.ctx.%s' % (
                context.name,):
            logger = logging.getLogger('mitogen.ctx.%s' % (
                context.name or msg.src_id,))
            self._cache[msg.src_id] = logger
        if logger.isEnabledFor(level):
            rec = logger.makeRecord(logger.name, level, '(unknown file)', 0,
                                    text, (), None)
            rec.mitogen_name = name
            rec.mitogen_context = context
            logger.handle(rec)


class Broker(mitogen.core.Broker):
    """The master's :class:`mitogen.core.Broker`: on shutdown it asks every
    child to shut down and waits up to :attr:`shutdown_timeout` seconds for
    them to disconnect.

    :param bool install_watcher: when true (the default), a program that
        never shuts the broker down still ends its children cleanly: the
        broker is shut down and joined when the interpreter exits
        (an ``atexit`` hook). Pass False in processes that manage that
        themselves, such as processes forked from a program that already
        runs a broker.
    :param poller_class: as for :class:`mitogen.core.Broker`.
    """
    shutdown_timeout = 5.0

    def __init__(self, install_watcher: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if install_watcher:
            atexit.register(self._shutdown_at_exit)
            mitogen.core.listen(
                self, 'exit', lambda: atexit.unregister(self._shutdown_at_exit))

    def _shutdown_at_exit(self):
        self.shutdown()
        self.join()


class Router(mitogen.parent.Router):
    """The master's router: serves modules (:class:`ModuleResponder`) and
    logs children's records (:class:`LogForwarder`).

    Use it as a context manager to shut everything down on exit::

        with mitogen.master.Router() as router:
            print(router.local().call(os.getpid))

    :param Broker broker: broker to use; a new one when None.
    :param int max_message_size: largest message accepted or sent, and
        passed on to children; 128 MiB when None.
    """
    broker_class = Broker

    def __init__(self, broker: Broker | None = None,
                 max_message_size: int | None = None) -> None:
        if broker is None:
            broker = self.broker_class()
        if max_message_size:
            self.max_message_size = max_message_size
        super().__init__(broker)
        self.responder = ModuleResponder(self)
        self.log_forwarder = LogForwarder(self)

    def enable_debug(self) -> None:
        """Log at DEBUG level in this process and every child started after
        this call."""
        logging.getLogger('mitogen').setLevel(logging.DEBUG)

