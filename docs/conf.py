"""
Sphinx configuration for the mitogen documentation.

Build with warnings as errors and every cross-reference checked::

    sphinx-build -n -W -b html docs docs/_build/html
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# The package spans several distributions, each in its own folder; putting
# every one of them on the path (mitogen-core first, its __init__.py makes
# the package) lets autodoc import ``mitogen.*`` from a plain checkout,
# without installing anything.
_PACKAGES = os.path.join(HERE, os.pardir, 'packages')
sys.path[:0] = [
    os.path.abspath(os.path.join(_PACKAGES, name))
    for name in sorted(os.listdir(_PACKAGES),
                       key=lambda name: name != 'mitogen-core')]

import mitogen  # noqa: E402  (needs the path set up above)

project = 'mitogen'
author = 'the mitogen authors'
copyright = 'the mitogen authors'
release = '.'.join(str(part) for part in mitogen.__version__)
version = '.'.join(str(part) for part in mitogen.__version__[:2])

extensions = ['sphinx.ext.autodoc']

exclude_patterns = ['_build']

# Standard-library names cannot be linked: the build must work offline, so
# there is no intersphinx.  The pages spell them as literals; docstrings that
# use a role for one are listed here, so that it renders as plain code.
nitpick_ignore = [
    ('py:data', 'sys.meta_path'),
    ('py:func', 'repr'),
    ('py:func', 'str'),
    ('py:mod', 'importlib.resources'),
    # The type variable of type comments (mitogen.utils): "the type the
    # function returns", not a class of its own.
    ('py:class', '_T'),
]

autoclass_content = 'both'
# Optional dependencies of some distributions' modules (extras): the
# reference documents them whether or not they are installed.
autodoc_mock_imports = ['paramiko']
autodoc_member_order = 'bysource'

html_theme = 'alabaster'
# Wide enough for error messages and pip commands in code blocks to show
# whole, without a scroll bar.
html_theme_options = {'page_width': '1160px', 'sidebar_width': '220px'}
html_title = 'mitogen %s' % release
