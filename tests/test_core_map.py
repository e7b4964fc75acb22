"""
Specification of core.py's map: its docstring lists the sections
``1. Title: ...`` in the order and with the titles of the code's
``# N. Title`` banners, and a section uses, by name, only what earlier
sections define, except for the forward references the docstring names.
"""
import ast
import re

import mitogen.core

#: (user, used) pairs of top-level names where a section uses a later one.
#: Each is explained in core.py's docstring.
FORWARD_REFERENCES = {
    ('Message', 'deserialize'),
    ('Message', 'serialize_parts'),
    ('_context_unpickler', 'Context'),
    ('_sender_unpickler', 'Context'),
    ('_sender_unpickler', 'Sender'),
}

BANNER = re.compile(r'^# -{70,}\n# (\d+)\. (.+)\n# -{70,}$', re.M)
ENTRY = re.compile(r'^(\d+)\. ([^:\n]+)[:.]', re.M)


def source():
    path = mitogen.core.__file__
    if path.endswith('.pyc'):
        path = path[:-1]
    with open(path) as f:
        return f.read()


def banners(text):
    """[(number, title, line)] of every section banner."""
    return [(int(m.group(1)), m.group(2),
             text.count('\n', 0, m.start()) + 2)
            for m in BANNER.finditer(text)]


def section_of(line, sections):
    found = 0
    for number, _, start in sections:
        if start <= line:
            found = number
    return found


def top_level_names(node):
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    return []


def forward_references(text):
    sections = banners(text)
    tree = ast.parse(text)
    defined = {}
    for node in tree.body:
        for name in top_level_names(node):
            defined.setdefault(name, section_of(node.lineno, sections))
    found = set()
    for node in tree.body:
        here = section_of(node.lineno, sections)
        for user in top_level_names(node):
            for sub in ast.walk(node):
                if (isinstance(sub, ast.Name) and sub.id in defined
                        and defined[sub.id] > here):
                    found.add((user, sub.id))
    return found


def test_docstring_lists_the_sections_of_the_code_in_order():
    listed = [(int(n), title.strip()) for n, title in
              ENTRY.findall(mitogen.core.__doc__)]
    in_code = [(n, title) for n, title, _ in banners(source())]

    assert listed == in_code
    assert [n for n, _ in in_code] == list(range(1, len(in_code) + 1))


def test_every_top_level_definition_sits_in_a_numbered_section():
    text = source()
    first = banners(text)[0][2]
    early = [name for node in ast.parse(text).body
             if node.lineno < first
             for name in top_level_names(node) if name != '__all__']

    assert early == []


def test_sections_use_only_earlier_ones_but_for_the_documented_references():
    assert forward_references(source()) == FORWARD_REFERENCES


def test_the_docstring_explains_each_forward_reference():
    doc = mitogen.core.__doc__
    exceptions = doc[doc.index('Each section uses only the ones before it'):]
    for user, used in sorted(FORWARD_REFERENCES):
        assert user in exceptions, user
        assert used in exceptions, used


def test_the_parent_authority_policy_sits_with_the_router():
    text = source()
    sections = banners(text)
    where = dict((node.name, section_of(node.lineno, sections))
                 for node in ast.parse(text).body
                 if isinstance(node, (ast.FunctionDef, ast.ClassDef)))

    assert where['has_parent_authority'] == where['Router']
    assert where['Blob'] == where['Secret'] == where['Kwargs']
    assert [title for n, title, _ in sections
            if n == where['Blob']] == ['Value types']
