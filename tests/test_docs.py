"""
The documentation is part of the product: it must build with every
cross-reference resolved and without a single warning, API reference
included.
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

pytestmark = pytest.mark.skipif(sphinx is None,
                                reason='sphinx is not installed in this environment')


@pytest.fixture(scope='module')
def build(tmp_path_factory):
    out = tmp_path_factory.mktemp('docs') / 'html'
    result = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-n', '-W', '--keep-going', '-b', 'html',
         DOCS, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=300,
    )
    return result, out


def test_documentation_builds_without_warnings(build):
    result, _ = build
    assert result.returncode == 0, 'sphinx-build failed:\n' + result.stdout


def test_api_reference_documents_the_public_modules(build):
    _, out = build
    with open(str(out / 'api.html')) as fp:
        page = fp.read()
    for target in ('mitogen.main', 'mitogen.core.CallError.type_name',
                   'mitogen.parent.Context.call', 'mitogen.local.Connection',
                   'mitogen.master.Router', 'mitogen.utils.run_with_router',
                   'mitogen.paramiko.Connection', 'mitogen.fakessh.run'):
        assert 'id="%s"' % (target,) in page, target


@pytest.mark.parametrize('page,example,targets', [
    ('aio.html', 'examples/aio_hello.py',
     ('mitogen.aio.Router.connect', 'mitogen.aio.Context.call',
      'mitogen.aio.Receiver', 'mitogen.aio.Select')),
    ('fleet.html', 'examples/fleet_local.py',
     ('mitogen.fleet.run', 'mitogen.fleet.arun', 'mitogen.fleet.HostResult',
      'mitogen.fleet.ProgressLine')),
])
def test_asyncio_and_fleet_pages_document_their_modules(build, page, example,
                                                        targets):
    _, out = build
    with open(str(out / page)) as fp:
        text = fp.read()
    for target in targets:
        assert 'id="%s"' % (target,) in text, target
    # The page shows the example the test suite runs (its docstring says
    # how to run it).
    assert example in text
