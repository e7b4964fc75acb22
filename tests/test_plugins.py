"""
Connection methods are plugins: a third-party distribution that declares an
entry point in the ``mitogen.transports`` group is found by
``router.connect(name)`` and ``router.<name>()``, and works through
``via=``, where the intermediate imports it through the importer.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.join(HERE, 'example_transport')
MASTER = os.path.join(HERE, 'support', 'plugin_master.py')


@pytest.fixture(scope='module')
def plugin_site(tmp_path_factory):
    """The example distribution installed (wheel built from tests/) into a
    directory of its own, which only the master program will have on its
    path."""
    pytest.importorskip('setuptools', reason='building the example '
                        'distribution needs setuptools in the test venv')
    target = tmp_path_factory.mktemp('plugin-site')
    build = tmp_path_factory.mktemp('plugin-build')
    # Build from a copy: setuptools writes build/ and egg-info next to the
    # sources.
    source = str(build / 'src')
    shutil.copytree(PLUGIN, source)
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
         '--no-build-isolation', '--no-index', '--target', str(target),
         '--cache-dir', str(build), source],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    if proc.returncode:
        pytest.fail('installing the example transport failed:\n'
                    + proc.stdout.decode(errors='replace'))
    return target


@pytest.fixture(scope='module')
def results(plugin_site):
    env = dict(os.environ, PYTHONPATH=str(plugin_site))
    proc = subprocess.run([sys.executable, MASTER], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors='replace')
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def test_installed_distribution_registers_its_entry_point(plugin_site):
    code = ('import importlib.metadata as m, json;'
            'eps = m.entry_points(group="mitogen.transports");'
            'print(json.dumps({e.name: e.value for e in eps}))')
    env = dict(os.environ, PYTHONPATH=str(plugin_site))
    out = subprocess.check_output([sys.executable, '-c', code], env=env)
    found = json.loads(out)
    assert found['example'] == 'mitogen_example_transport:Connection'
    assert found['local'] == 'mitogen.local:Connection'


def test_third_party_method_is_found_by_connect(results):
    assert results['direct'] == ['example', 'direct']


def test_third_party_method_is_an_attribute_of_the_router(results):
    assert results['attribute'] == ['example', 'attribute']


def test_third_party_method_works_through_an_intermediate(results):
    name, middle, label = results['via']
    assert label == 'proxied'
    assert name.startswith(middle + '.example.')


def test_unknown_method_is_a_clear_error(results):
    assert "no connection method named 'no-such-method'" in results['missing']
    assert 'no_such_method' in results['missing_attr']
