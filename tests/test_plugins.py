"""
Connection methods are plugins: a third-party distribution that declares an
entry point in the ``mitogen.transports`` group is found by
``router.connect(name)`` and ``router.<name>()``, and works through
``via=``, where the intermediate imports it through the importer.
"""
import json
import os
import subprocess
import sys

import pytest

import sites

HERE = os.path.dirname(os.path.abspath(__file__))
MASTER = os.path.join(HERE, 'support', 'plugin_master.py')


@pytest.fixture(scope='module')
def plugin_site(tmp_path_factory):
    """The example distribution installed (wheel built from tests/) into a
    directory of its own, which only the master program will have on its
    path."""
    return sites.install_example_transport(tmp_path_factory, 'plugin')


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
