# Copyright the mitogen contributors. BSD-3-Clause.
"""
The import statements of compiled code, read from its bytecode.

Every import statement compiles to the same three instructions, on every
Python this module supports::

    LOAD_CONST   level      (-1 on Python 2 without absolute_import)
    LOAD_CONST   fromlist   (None for "import x", a tuple of names else)
    IMPORT_NAME  module     (an index into co_names)

What differs between versions is how instructions are laid out:

* Python 2.7: one byte of opcode, followed by two bytes of argument for
  opcodes from ``HAVE_ARGUMENT`` on; ``EXTENDED_ARG`` supplies the high 16
  bits of the next argument. Instructions can only be decoded in order,
  which ``_instructions()`` does.
* Python 3.6+: two-byte "wordcode", opcode then argument byte, for every
  instruction; ``EXTENDED_ARG`` supplies the next argument's high 8 bits,
  and may repeat. From 3.11 some instructions are followed by inline cache
  entries: ``CACHE`` words, zero in ``co_code``. Every even offset starts a
  word, so ``_wordcode_imports()`` finds the IMPORT_NAME words by a byte
  search and decodes the two instructions before each backwards (neither
  LOAD_CONST nor EXTENDED_ARG has cache entries).

Opcode numbers change between versions, so they are always looked up by
name.

This module runs in children too, so it is written for Python 2.7 and 3.6+.
"""

__all__ = ['codeobj_imports']

import opcode
import sys

_LOAD_CONST = opcode.opmap['LOAD_CONST']
_IMPORT_NAME = opcode.opmap['IMPORT_NAME']
_EXTENDED_ARG = opcode.EXTENDED_ARG
_HAVE_ARGUMENT = opcode.HAVE_ARGUMENT
_WORDCODE = sys.version_info >= (3, 6)


def _instructions(co):
    """Yield `(opcode, arg)` for each instruction of Python 2 code object
    `co`, with ``EXTENDED_ARG`` folded into the argument it extends; `arg`
    is None for an instruction without one."""
    code = bytearray(co.co_code)
    i = 0
    n = len(code)
    extended = 0
    while i < n:
        op = code[i]
        if op >= _HAVE_ARGUMENT:
            arg = code[i + 1] | (code[i + 2] << 8) | extended
            i += 3
        else:
            arg = None
            i += 1
        if op == _EXTENDED_ARG:
            extended = arg << 16
            continue
        extended = 0
        yield op, arg


def codeobj_imports(co):
    """Yield `(level, modname, fromlist)` for each import statement at the
    module scope of code object `co`, in the order they were compiled.
    Imports in conditional blocks and ``try`` statements are included;
    imports inside functions, classes and lambdas (code objects nested in
    `co`) are not, as Mitogen documents: Mitogen for Ansible builds a
    module's dependencies from this, and imports made only when a function
    runs are served on demand instead of being sent ahead.

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
    if _WORDCODE:
        return _wordcode_imports(co)
    return _decoded_imports(co)


def _decoded_imports(co):
    # Every instruction decoded in order: Python 2's variable-length code
    # allows no other way.
    consts = co.co_consts
    names = co.co_names
    before_last = last = (None, None)
    for op, arg in _instructions(co):
        if (op == _IMPORT_NAME and before_last[0] == _LOAD_CONST and
                last[0] == _LOAD_CONST):
            fromlist = consts[last[1]]
            yield consts[before_last[1]], names[arg], tuple(fromlist or ())
        before_last, last = last, (op, arg)


# Wordcode makes every even offset the start of a word that is an opcode
# (or a zeroed cache entry), so the rare IMPORT_NAME words are found with a
# byte search and the two instructions before each are decoded backwards:
# decoding everything (as above) costs ~100x more on typical modules, and
# Mitogen for Ansible scans every module_utils file a module imports.
_IMPORT_NAME_BYTE = bytes(bytearray([_IMPORT_NAME]))


def _instruction_ending_at(code, i):
    """Decode the instruction whose opcode word is at even offset `i`,
    folding in the EXTENDED_ARG words before it: `(op, arg, j)`, where `j` is
    the offset of the word before the first prefix (-2 at the start)."""
    arg = code[i + 1]
    shift = 8
    j = i - 2
    while j >= 0 and code[j] == _EXTENDED_ARG:
        arg |= code[j + 1] << shift
        shift += 8
        j -= 2
    return code[i], arg, j


def _wordcode_imports(co):
    code = co.co_code
    consts = co.co_consts
    names = co.co_names
    i = code.find(_IMPORT_NAME_BYTE)
    while i != -1:
        if not i % 2:
            _, name, j = _instruction_ending_at(code, i)
            if j >= 2:
                op, fromlist, j = _instruction_ending_at(code, j)
                if op == _LOAD_CONST and j >= 0:
                    op, level, _ = _instruction_ending_at(code, j)
                    if op == _LOAD_CONST:
                        yield (consts[level], names[name],
                               tuple(consts[fromlist] or ()))
        i = code.find(_IMPORT_NAME_BYTE, i + 1)
