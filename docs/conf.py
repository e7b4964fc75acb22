"""
Sphinx configuration for the mitogen documentation.

Build with warnings as errors and every cross-reference checked::

    sphinx-build -n -W -b html docs docs/_build/html
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# The package spans several distributions, each in its own folder; putting
# them on the path lets autodoc import ``mitogen.*`` from a plain checkout,
# without installing anything.
for _dist in ('mitogen-master', 'mitogen-core'):
    sys.path.insert(0, os.path.join(HERE, os.pardir, 'packages', _dist))

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
]

autoclass_content = 'both'
autodoc_member_order = 'bysource'

html_theme = 'alabaster'
html_title = 'mitogen %s' % release
