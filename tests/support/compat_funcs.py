"""
Functions tests/test_compat.py runs in children of every Python version, to
check the Mitogen-compatible helpers there. Python 2.7 compatible.
"""
import __future__
import ast
import glob
import os
import sys

import mitogen.core

PY2 = sys.version_info < (3,)


def core_helpers():
    """Results of the 2/3 helpers of mitogen.core, as plain values."""
    c = mitogen.core
    r, w = c.pipe()
    try:
        w.write(c.b('through the pipe'))
        piped = r.read(16)
        pipe_cloexec = [_cloexec(f.fileno()) for f in (r, w)]
    finally:
        r.close()
        w.close()
    a, b = c.socketpair()
    try:
        a.sendall(c.b('x'))
        received = b.recv(1)
        blocking = [c.get_blocking(s.fileno()) for s in (a, b)]
        pair_cloexec = [_cloexec(s.fileno()) for s in (a, b)]
        c.set_blocking(a.fileno(), False)
        after_set = c.get_blocking(a.fileno())
    finally:
        a.close()
        b.close()
    return {
        u'b': c.b('abc'),
        u'b_bytes': c.b(b'abc'),
        u'str_partition': c.str_partition(u'k=v=w', u'='),
        u'str_rpartition': c.str_rpartition(u'k=v=w', u'='),
        u'bytes_partition': c.bytes_partition(b'k=v', b'='),
        u'paths': [isinstance(p, c.FsPathTypes) for p in (u'/a', b'/a', 1)],
        u'types': [isinstance(u'', c.UnicodeType), isinstance(b'', c.BytesType),
                  isinstance(2 ** 70, c.integer_types)],
        u'iteritems': sorted(c.iteritems({u'a': 1, u'b': 2})),
        u'next': c.next(iter([7])),
        u'any': [c.any([0, 1]), c.any([])],
        u'import_module': c.import_module('os.path').__name__ in (
            'posixpath', 'os.path'),
        u'piped': piped,
        u'pipe_cloexec': pipe_cloexec,
        u'received': received,
        u'blocking': blocking,
        u'pair_cloexec': pair_cloexec,
        u'after_set': after_set,
    }


def _cloexec(fd):
    import fcntl
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


def profile_to_stats(name):
    """Run a function through an enabled profiling hook in this context and
    return the path of the stats file and the functions it names."""
    import pstats
    mitogen.core.enable_profiling()
    result = mitogen.core._profile_hook(name, sorted, [3, 1, 2])
    path = mitogen.core._profile_path(name)
    stats = pstats.Stats(path)
    names = sorted(set(mitogen.core.to_text(func[2])
                       for func in stats.stats))
    os.unlink(path)
    return result, mitogen.core.to_text(path), names


def echo_length(data):
    return len(data)


def call_spec_text():
    import mitogen.parent
    return mitogen.core.to_text(
        str(mitogen.parent.CallSpec(os.path.join, (u'a',), {'b': 1})))


def returncode_texts():
    import mitogen.parent
    return [mitogen.core.to_text(mitogen.parent.returncode_to_str(n))
            for n in (0, 1, -9, -15)]


def fork_and_convert(how):
    """Fork a process that ends `how` ('exit3' or 'kill'); return what
    mitogen.fork._convert_exit_status() makes of its wait status."""
    import signal
    import mitogen.fork
    pid = os.fork()
    if pid == 0:
        if how == 'kill':
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    return mitogen.fork._convert_exit_status(status)


def on_fork_twice():
    import mitogen.fork
    mitogen.fork.on_fork()
    mitogen.fork.on_fork()
    return True


def levels_for(name):
    import mitogen.utils
    return list(mitogen.utils._levelname_to_levels(name))


def stacks_of_this_process():
    import mitogen.debug
    return mitogen.core.to_text(mitogen.debug.format_stacks())


# ---------------------------------------------------------------------------
# mitogen.imports against ast
# ---------------------------------------------------------------------------

def _statically_false(test):
    # The compiler drops "if 0:" blocks (and "if False:" on Python 3),
    # imports included.
    if type(test).__name__ not in ('Num', 'Constant', 'NameConstant'):
        return False
    if hasattr(test, 'value'):
        return not test.value
    return not test.n


#: Nodes whose bodies run in a scope of their own: codeobj_imports() leaves
#: their imports out.
_LOCAL_SCOPES = tuple(getattr(ast, name) for name in (
    'FunctionDef', 'AsyncFunctionDef', 'ClassDef', 'Lambda')
    if hasattr(ast, name))


def _ast_imports(tree, absolute):
    found = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _statically_false(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((0 if absolute else -1, alias.name, ()))
        elif isinstance(node, ast.ImportFrom):
            level = node.level or (0 if absolute else -1)
            found.append((level, node.module or '',
                          tuple(alias.name for alias in node.names)))
        todo.extend(child for child in ast.iter_child_nodes(node)
                    if not isinstance(child, _LOCAL_SCOPES))
    return found


def _imports_mismatch(source, filename):
    """None when mitogen.imports finds the imports ast finds in `source`,
    else a description of the difference. Repeats are not compared: 3.9+
    compiles a ``finally`` body twice, imports in it included."""
    import mitogen.imports
    tree = ast.parse(source, filename)
    co = compile(source, filename, 'exec', 0, True)
    absolute = not PY2 or bool(
        co.co_flags & __future__.absolute_import.compiler_flag)
    expected = set(_ast_imports(tree, absolute))
    got = list(mitogen.imports.codeobj_imports(co))
    for level, modname, fromlist in got:
        if not (isinstance(level, int) and isinstance(modname, str) and
                isinstance(fromlist, tuple)):
            return '%s: bad types in %r' % (filename,
                                            (level, modname, fromlist))
    if set(got) != expected:
        return '%s: missing %r, extra %r' % (
            filename, sorted(expected - set(got)),
            sorted(set(got) - expected))
    return None


def _corpus():
    stdlib = os.path.dirname(os.__file__)
    paths = glob.glob(os.path.join(stdlib, '*.py'))
    for package in ('asyncio', 'email', 'json', 'logging', 'importlib',
                    'concurrent/futures', 'xml/etree', 'multiprocessing'):
        paths += glob.glob(os.path.join(stdlib, package, '*.py'))
    return sorted(paths)


def imports_corpus():
    """Check mitogen.imports against ast on this Python's standard
    library; return (files, imports found, relative imports found,
    mismatches)."""
    import mitogen.imports
    files = imports = relative = 0
    mismatches = []
    for path in _corpus():
        with open(path, 'rb') as f:
            source = f.read()
        try:
            co = compile(source, path, 'exec', 0, True)
        except SyntaxError:
            continue
        files += 1
        found = list(mitogen.imports.codeobj_imports(co))
        imports += len(found)
        relative += len([t for t in found if t[0] > 0])
        problem = _imports_mismatch(source, path)
        if problem:
            mismatches.append(problem)
    return files, imports, relative, mismatches


def imports_of(source):
    """codeobj_imports() of `source`, as lists."""
    import mitogen.imports
    co = compile(source, '<test>', 'exec', 0, True)
    return [[level, mitogen.core.to_text(modname),
             [mitogen.core.to_text(name) for name in fromlist]]
            for level, modname, fromlist in mitogen.imports.codeobj_imports(co)]


def imports_with_extended_args(count):
    """Imports of a module holding `count` constants and names before its
    imports, so that their arguments need EXTENDED_ARG; None when found
    as ast finds them, else the difference."""
    lines = ['v%d = %d' % (i, i) for i in range(count)]
    lines += ['import big.module', 'from .rel import (x, y)',
              'from . import z', 'from os.path import *', 'def f():',
              '    from far.away import w', '    import q.r']
    source = '\n'.join(lines) + '\n'
    return _imports_mismatch(source, '<extended %d>' % (count,))
