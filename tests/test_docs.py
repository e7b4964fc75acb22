"""
The documentation is part of the product: it must build with every
cross-reference resolved and without a single warning, API reference
included, from the source tree alone (no distribution installed); its
examples must run, and its troubleshooting page must explain every error
``python -m mitogen check`` recognises.
"""

import html
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

import interpreters
import mitogen.core
import mitogen.diagnostics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs')

try:
    import sphinx  # noqa: F401  (only checking that it is installed)
except ImportError:
    sphinx = None

needs_sphinx = pytest.mark.skipif(
    sphinx is None, reason='sphinx is not installed in this environment')

#: Runs Python without site-packages processing (-S): the .pth files of
#: the editable installs are not read, so ``mitogen`` is importable only
#: from the source tree; the venv's libraries (sphinx) stay on the path.
WITHOUT_INSTALLS = ([sys.executable, '-S'],
                    dict(os.environ,
                         PYTHONPATH=sysconfig.get_paths()['purelib']))


@pytest.fixture(scope='module')
def build(tmp_path_factory):
    out = tmp_path_factory.mktemp('docs') / 'html'
    argv, env = WITHOUT_INSTALLS
    result = subprocess.run(
        argv + ['-m', 'sphinx', '-n', '-W', '--keep-going', '-b', 'html',
                DOCS, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=300,
        env=env,
        cwd=str(tmp_path_factory.mktemp('docs-cwd')),
    )
    return result, out


def page_text(out, name):
    """The text of a built page, without its markup."""
    with open(str(out / name)) as fp:
        return html.unescape(re.sub(r'<[^>]+>', '', fp.read()))


def page_html(out, name):
    with open(str(out / name)) as fp:
        return fp.read()


@needs_sphinx
def test_build_environment_has_no_mitogen_installed(tmp_path):
    argv, env = WITHOUT_INSTALLS
    proc = subprocess.run(argv + ['-c', 'import mitogen'], env=env,
                          cwd=str(tmp_path), stderr=subprocess.PIPE)

    assert b"No module named 'mitogen'" in proc.stderr


@needs_sphinx
def test_documentation_builds_without_warnings(build):
    result, _ = build
    assert result.returncode == 0, 'sphinx-build failed:\n' + result.stdout


@needs_sphinx
def test_api_reference_documents_the_public_modules(build):
    _, out = build
    with open(str(out / 'api.html')) as fp:
        page = fp.read()
    for target in ('mitogen.main', 'mitogen.core.CallError.type_name',
                   'mitogen.parent.Context.call', 'mitogen.local.Connection',
                   'mitogen.master.Router', 'mitogen.utils.run_with_router',
                   'mitogen.paramiko.Connection', 'mitogen.fakessh.run',
                   'mitogen.parent.TransportUnavailable',
                   'mitogen.installation.ForeignMitogenError',
                   'mitogen.diagnostics.main'):
        assert 'id="%s"' % (target,) in page, target


@needs_sphinx
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


#: Pages a newcomer needs, and a text each must show.
NEWCOMER_PAGES = {
    'install.html': 'pip install mitogen-master mitogen-ssh',
    'quickstart.html': "if __name__ == '__main__':",
    'transports.html': 'mitogen-containers',
    'plugins.html': '[project.entry-points."mitogen.transports"]',
    'vendoring.html': 'yourapp._vendor.mitogen_core',
    'trust.html': 'Code only flows down the tree.',
    'troubleshooting.html': 'python -m mitogen check',
}


@needs_sphinx
@pytest.mark.parametrize('page', sorted(NEWCOMER_PAGES))
def test_newcomer_page_is_built_and_linked_from_the_index(build, page):
    _, out = build

    assert NEWCOMER_PAGES[page] in page_text(out, page)
    assert 'href="%s"' % (page,) in page_html(out, 'index.html')


def test_plugin_template_is_the_tested_example_distribution():
    with open(os.path.join(DOCS, 'plugins.rst')) as f:
        text = f.read()

    included = re.findall(r'^\.\. literalinclude:: (\S+)', text, re.M)
    assert [os.path.normpath(os.path.join(DOCS, p)) for p in included] == [
        os.path.join(ROOT, 'tests', 'example_transport', 'pyproject.toml'),
        os.path.join(ROOT, 'tests', 'example_transport',
                     'mitogen_example_transport', '__init__.py')]


@pytest.mark.parametrize('needle, fix', mitogen.diagnostics.LIKELY_FIXES)
def test_troubleshooting_explains_every_error_check_recognises(needle, fix):
    with open(os.path.join(DOCS, 'troubleshooting.rst')) as f:
        text = f.read().lower()

    assert needle.lower() in text


def code_blocks(name):
    with open(os.path.join(DOCS, name)) as f:
        text = f.read()
    return [textwrap.dedent(block) for block in re.findall(
        r'^\.\. code-block:: python\n\n((?:    .*\n|\n)+)', text, re.M)]


@pytest.mark.parametrize('interpreter', interpreters.params(
    ['2.7', '3.13']), indirect=True)
def test_vendoring_example_runs_with_a_vendored_copy(interpreter, tmp_path):
    vendor = tmp_path / 'yourapp' / '_vendor'
    vendor.mkdir(parents=True)
    (tmp_path / 'yourapp' / '__init__.py').write_text('')
    (vendor / '__init__.py').write_text('')
    shutil.copy(mitogen.core.__file__, str(vendor / 'mitogen_core.py'))
    [example] = code_blocks('vendoring.rst')
    (tmp_path / 'example.py').write_text(example)

    out = subprocess.check_output([interpreter.path, '-E', '-S',
                                   'example.py'], cwd=str(tmp_path))

    assert out.decode().strip() == \
        "{'job': 42, 'payload': [blob: 3 bytes]}"


@pytest.mark.parametrize('index, expected', [(0, 'hello from '),
                                             (2, 'child runs as process ')])
def test_quickstart_programs_run(index, expected, tmp_path):
    program = tmp_path / 'program.py'
    program.write_text(code_blocks('quickstart.rst')[index])

    out = subprocess.check_output([sys.executable, str(program)],
                                  cwd=str(tmp_path), timeout=60)

    assert out.decode().startswith(expected)
