"""
The documentation is part of the product: it must build with every
cross-reference resolved and without a single warning.
"""

import os
import subprocess
import sys

import pytest

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs')

try:
    import sphinx  # noqa: F401  (only checking that it is installed)
except ImportError:
    sphinx = None


@pytest.mark.skipif(sphinx is None, reason='sphinx is not installed in this environment')
def test_documentation_builds_without_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-n', '-W', '--keep-going', '-b', 'html',
         DOCS, str(tmp_path / 'html')],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=300,
    )
    assert result.returncode == 0, 'sphinx-build failed:\n' + result.stdout
