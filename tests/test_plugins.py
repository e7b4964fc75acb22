"""
Connection methods are plugins: a third-party distribution that declares an
entry point in the ``mitogen.transports`` group is found by
``router.connect(name)`` and ``router.<name>()``, and works through
``via=``, where the intermediate imports it through the importer. Every
method, built-in or not, is listed by ``dir(router)`` and has the signature
and documentation of its options; ``hasattr(router, name)`` never raises;
two distributions registering one name get a warning naming both.
"""
import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

import mitogen.parent
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


def test_registered_error_of_a_method_keeps_its_type_through_via(results):
    error_type = ['mitogen_example_transport', 'LabelError']
    assert results['refused'][:2] == error_type
    assert results['refused_via'][:2] == error_type
    assert 'NUL byte' in results['refused_via'][2]
    assert results['refused_via'][2].endswith('(via %s)' % (
        results['via'][1],))


def test_unknown_method_is_a_clear_error(results):
    assert "no connection method named 'no-such-method'" in results['missing']
    assert 'no_such_method' in results['missing_attr']


def test_third_party_method_is_listed_by_dir(results):
    assert results['in_dir'] is True


def test_third_party_method_has_the_signature_of_its_options(results):
    assert results['signature'].startswith(
        "(*, via=None, name=None, label='example', env_path='/usr/bin/env', ")
    assert 'python_path=None' in results['signature']


def test_third_party_method_has_the_documentation_of_its_options(results):
    assert "'example' connection method" in results['doc']
    assert 'value given to ``MITOGEN_EXAMPLE_LABEL``' in results['doc']


@pytest.mark.parametrize('name', ['local', 'fork', 'sudo', 'su', 'doas',
                                  'ssh', 'paramiko'])
def test_every_installed_method_is_listed_by_dir(router, name):
    assert name in dir(router)


def test_built_in_local_method_has_the_signature_of_its_options(router):
    parameters = inspect.signature(router.local).parameters

    assert {'via', 'name', 'python_path', 'connect_timeout'} <= set(
        parameters)
    assert "'local' connection method" in router.local.__doc__


def test_method_attribute_has_the_signature_of_its_options(router):
    parameters = inspect.signature(router.ssh).parameters

    assert parameters['hostname'].default is inspect.Parameter.empty
    assert parameters['check_host_keys'].default == 'enforce'
    assert all(p.kind == p.KEYWORD_ONLY for p in parameters.values())
    assert 'max_message_size' not in parameters


def test_method_attribute_documents_the_method(router):
    doc = router.sudo.__doc__

    assert "'sudo' connection method (mitogen.sudo.Connection)" in doc
    assert ':param str sudo_path:' in doc
    assert router.sudo.__name__ == 'sudo'


def test_hasattr_is_false_for_an_unknown_method(router):
    assert hasattr(router, 'no_such_method') is False
    assert getattr(router, 'no_such_method', 'absent') == 'absent'


def test_hasattr_is_false_for_a_method_whose_module_fails_to_import(
        router, monkeypatch):
    monkeypatch.setitem(mitogen.parent.BUILTIN_TRANSPORTS, 'broken',
                        'no_such_module_anywhere:Connection')

    assert hasattr(router, 'broken') is False


# Two distributions, each registering a connection method named "dup".
DUPLICATE_SITE = {
    'first_dup-1.0.dist-info/METADATA':
        'Metadata-Version: 2.1\nName: first-dup\nVersion: 1.0\n',
    'first_dup-1.0.dist-info/entry_points.txt':
        '[mitogen.transports]\ndup = mitogen.local:Connection\n',
    'second_dup-1.0.dist-info/METADATA':
        'Metadata-Version: 2.1\nName: second-dup\nVersion: 1.0\n',
    'second_dup-1.0.dist-info/entry_points.txt':
        '[mitogen.transports]\ndup = mitogen.sudo:Connection\n',
}

DUPLICATE_PROGRAM = textwrap.dedent('''
    import json, sys, warnings
    sys.path.insert(0, sys.argv[1])
    import mitogen.parent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        cls = mitogen.parent.resolve_transport('dup')
        mitogen.parent._transport_cache.clear()
        mitogen.parent.resolve_transport('dup')
    print(json.dumps({
        'chosen': '%s:%s' % (cls.__module__, cls.__name__),
        'warnings': [[w.category.__name__, str(w.message)] for w in caught],
    }))
''')


def run_in_site(site, program, tmp_path):
    """Write `site` ({relative path: text or bytes}) under `tmp_path`, run
    `program` with it first on sys.path and return its output's last
    line."""
    for relative, data in site.items():
        path = tmp_path / relative
        path.parent.mkdir(exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
    out = subprocess.check_output(
        [sys.executable, '-c', program, str(tmp_path)])
    return out.decode().splitlines()[-1]


def test_two_distributions_registering_one_name_warn_naming_both(tmp_path):
    found = json.loads(run_in_site(DUPLICATE_SITE, DUPLICATE_PROGRAM,
                                   tmp_path))

    [[category, message]] = found['warnings']
    assert category == 'RuntimeWarning'
    assert 'first-dup (mitogen.local:Connection)' in message
    assert 'second-dup (mitogen.sudo:Connection)' in message
    # The one used is the one the warning names, every time.
    chosen = {'first-dup': 'mitogen.local:Connection',
              'second-dup': 'mitogen.sudo:Connection'}[
        message.split('using the one from ')[1].split('.')[0]]
    assert found['chosen'] == chosen


# A method's distribution beside one whose METADATA cannot be decoded.
BROKEN_NEIGHBOUR_SITE = {
    'broken_neighbour-1.0.dist-info/METADATA': b'Name: \xff\xfe broken\n',
    'one_method-1.0.dist-info/METADATA':
        b'Metadata-Version: 2.1\nName: one-method\nVersion: 1.0\n',
    'one_method-1.0.dist-info/entry_points.txt':
        b'[mitogen.transports]\nonly = mitogen.local:Connection\n',
}

BROKEN_NEIGHBOUR_PROGRAM = textwrap.dedent('''
    import sys
    sys.path.insert(0, sys.argv[1])
    import mitogen.parent
    cls = mitogen.parent.resolve_transport('only')
    print('%s:%s' % (cls.__module__, cls.__name__))
''')


def test_undecodable_metadata_of_an_unrelated_distribution_is_not_read(
        tmp_path):
    assert run_in_site(BROKEN_NEIGHBOUR_SITE, BROKEN_NEIGHBOUR_PROGRAM,
                       tmp_path) == 'mitogen.local:Connection'
