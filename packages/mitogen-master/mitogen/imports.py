# Copyright the mitogen contributors. BSD-3-Clause.
"""
The import statements of compiled code, read from its bytecode.

Every import statement compiles to the same three instructions, on every
Python this module supports::

    LOAD_CONST   level      (-1 on Python 2 without absolute_import)
    LOAD_CONST   fromlist   (None for "import x", a tuple of names else)
    IMPORT_NAME  module     (an index into co_names)

What differs between versions is how instructions are laid out, which
``_instructions()`` hides:

* Python 2.7: one byte of opcode, followed by two bytes of argument for
  opcodes from ``HAVE_ARGUMENT`` on; ``EXTENDED_ARG`` supplies the high 16
  bits of the next argument.
* Python 3.6+: two-byte "wordcode", opcode then argument byte, for every
  instruction; ``EXTENDED_ARG`` supplies the next argument's high 8 bits,
  and may repeat.
* Python 3.11+: some instructions are followed by inline cache entries
  (``CACHE`` words, zero in ``co_code``), counted by
  ``opcode._inline_cache_entries``: a list by opcode on 3.11 and 3.12, a
  dict by name on 3.13. Opcode numbers change between versions, so they
  are always looked up by name.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

import opcode
import sys
import types

_LOAD_CONST = opcode.opmap['LOAD_CONST']
_IMPORT_NAME = opcode.opmap['IMPORT_NAME']
_EXTENDED_ARG = opcode.EXTENDED_ARG
_HAVE_ARGUMENT = opcode.HAVE_ARGUMENT
_WORDCODE = sys.version_info >= (3, 6)


def _cache_entries():
    table = getattr(opcode, '_inline_cache_entries', None)
    if table is None:
        return {}
    if isinstance(table, dict):
        return dict((opcode.opmap[name], n) for name, n in table.items()
                    if n and name in opcode.opmap)
    return dict((op, n) for op, n in enumerate(table) if n)


#: Inline cache words that follow each opcode, where there are any.
_CACHES = _cache_entries()


def _instructions(co):
    """Yield `(opcode, arg)` for each instruction of code object `co`, with
    ``EXTENDED_ARG`` folded into the argument it extends and cache entries
    skipped; `arg` is None for an instruction without one (Python 2)."""
    code = bytearray(co.co_code)
    i = 0
    n = len(code)
    extended = 0
    while i < n:
        op = code[i]
        if _WORDCODE:
            arg = code[i + 1] | extended
            i += 2 + 2 * _CACHES.get(op, 0)
        elif op >= _HAVE_ARGUMENT:
            arg = code[i + 1] | (code[i + 2] << 8) | extended
            i += 3
        else:
            arg = None
            i += 1
        if op == _EXTENDED_ARG:
            extended = arg << (8 if _WORDCODE else 16)
            continue
        extended = 0
        yield op, arg


def codeobj_imports(co):
    """Yield `(level, modname, fromlist)` for each import statement compiled
    into the code object `co` and the code objects nested in it (functions,
    classes, lambdas, comprehensions), in that order.

    `level` is the number of leading dots of a relative import, 0 for an
    absolute one, and -1 on Python 2 for a statement that may be either
    (no ``from __future__ import absolute_import``). `modname` is the
    module named after ``import`` or ``from`` without its dots, ``''`` for
    ``from . import x``. `fromlist` is the tuple of names imported by
    ``from ... import``, ``('*',)`` for a star import, and ``()`` for a
    plain ``import``::

        import a.b              ->  (0, 'a.b', ())
        from ..c import d, e    ->  (2, 'c', ('d', 'e'))
        from . import f         ->  (1, '', ('f',))
    """
    consts = co.co_consts
    names = co.co_names
    before_last = last = (None, None)
    for op, arg in _instructions(co):
        if (op == _IMPORT_NAME and before_last[0] == _LOAD_CONST and
                last[0] == _LOAD_CONST):
            fromlist = consts[last[1]]
            yield consts[before_last[1]], names[arg], tuple(fromlist or ())
        before_last, last = last, (op, arg)
    for const in consts:
        if isinstance(const, types.CodeType):
            for found in codeobj_imports(const):
                yield found
