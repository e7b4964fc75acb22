"""
What a user gets from pip: the README's install command and first program
work in a clean virtual environment holding nothing but the built files; a
connection method whose distribution or extra is missing says what to
install; and this project never runs mixed with the ``mitogen``
distribution (upstream Mitogen), whichever was installed first, nor after
either was uninstalled again.
"""
import json
import os
import re
import sys
import textwrap

import pytest

import ansible_harness
from dists import ROOT, run

README = os.path.join(ROOT, 'README.md')


def readme_blocks():
    """``(language, text)`` of each fenced code block of README.md."""
    with open(README) as f:
        text = f.read()
    return re.findall(r'^```(\w*)\n(.*?)^```$', text, re.M | re.S)


def first_program():
    [program] = [body for lang, body in readme_blocks() if lang == 'python']
    return program


def readme_section(title):
    with open(README) as f:
        text = f.read()
    start = text.index('\n## %s\n' % (title,))
    end = text.find('\n## ', start + 1)
    return text[start:end if end >= 0 else None]


# -- the README ------------------------------------------------------------

def test_readme_opens_with_the_pip_install_command_of_a_user():
    lang, body = readme_blocks()[0]

    assert body.strip() == 'pip install mitogen-master mitogen-ssh'


def test_readme_first_program_is_at_most_ten_lines_of_code():
    code = [line for line in first_program().splitlines() if line.strip()]

    assert len(code) <= 10


def test_readme_development_section_starts_with_setup_run_and_test():
    blocks = re.findall(r'^```\w*\n(.*?)^```$', readme_section('Development'),
                        re.M | re.S)

    assert blocks[0].splitlines() == [
        'bash scripts/setup', '.venv/bin/python examples/hello.py']
    assert blocks[1].splitlines() == ['bash scripts/test']


# -- a clean install -------------------------------------------------------

@pytest.fixture(scope='module')
def user_venv(built_dists, tmp_path_factory):
    """What ``pip install mitogen-master mitogen-ssh`` makes, from the built
    files alone."""
    return built_dists.venv(tmp_path_factory.mktemp('user') / 'venv',
                            'mitogen-master', 'mitogen-ssh')


@pytest.fixture(scope='module')
def master_only_venv(built_dists, tmp_path_factory):
    return built_dists.venv(tmp_path_factory.mktemp('master') / 'venv',
                            'mitogen-master')


def run_first_program(python, tmp_path):
    (tmp_path / 'first.py').write_text(first_program())
    return run([python, 'first.py'], cwd=str(tmp_path), check=False)


def test_first_program_runs_after_the_readme_install(user_venv, tmp_path):
    rc, out = run_first_program(user_venv, tmp_path)

    assert rc == 0, out
    assert out.startswith('hello from ')


def test_readme_install_brings_exactly_the_needed_distributions(user_venv):
    out = run([user_venv, '-c',
               'import json, importlib.metadata as m;'
               'print(json.dumps(sorted(d.metadata["Name"] '
               'for d in m.distributions())))'])

    assert json.loads(out) == ['mitogen-core', 'mitogen-master',
                               'mitogen-ssh']


# A program that asks for a connection method and prints what happened.
ASK_FOR = textwrap.dedent('''
    import json, sys
    import mitogen.master, mitogen.parent
    name = sys.argv[1]
    with mitogen.master.Router() as router:
        result = {'hasattr': hasattr(router, name),
                  'in_dir': name in dir(router)}
        try:
            router.connect(name, hostname='unused.invalid')
        except mitogen.parent.TransportUnavailable as e:
            result['error'] = str(e)
        except mitogen.core.StreamError as e:
            result['reached'] = str(e)
    print(json.dumps(result))
''')


def ask_for(python, name):
    return json.loads(run([python, '-c', ASK_FOR, name]).splitlines()[-1])


def test_ssh_without_its_distribution_names_the_pip_install(
        master_only_venv):
    result = ask_for(master_only_venv, 'ssh')

    assert result['hasattr'] is False
    assert result['error'].endswith('pip install mitogen-ssh')


def test_container_method_without_its_distribution_names_the_pip_install(
        master_only_venv):
    result = ask_for(master_only_venv, 'podman')

    assert result['error'].endswith('pip install mitogen-containers')


def test_paramiko_without_the_extra_names_the_pip_install(user_venv):
    result = ask_for(user_venv, 'paramiko')

    assert result['hasattr'] is False
    assert result['in_dir'] is True
    assert "needs paramiko" in result['error']
    assert result['error'].endswith("pip install 'mitogen-ssh[paramiko]'")


@pytest.fixture(scope='module')
def paramiko_wheels():
    """A directory of wheels of the pinned Paramiko and what it needs,
    downloaded once (the only files not built here that an install test
    uses)."""
    with open(os.path.join(ROOT, 'scripts', 'requirements-test.txt')) as f:
        [pin] = [line.strip() for line in f if line.startswith('paramiko==')]
    target = os.path.join(ansible_harness.CACHE_DIR, pin.replace('==', '-'))
    marker = os.path.join(target, '.complete')
    if not os.path.exists(marker):
        rc, out = run([sys.executable, '-m', 'pip', 'download', '-q',
                       '--disable-pip-version-check', '-d', target, pin],
                      check=False, timeout=300)
        if rc:
            pytest.skip('cannot download %s from the package index:\n%s'
                        % (pin, out))
        open(marker, 'w').close()
    return target


def test_paramiko_extra_makes_the_method_available(
        built_dists, paramiko_wheels, tmp_path):
    python = built_dists.venv(tmp_path / 'venv', 'mitogen-ssh[paramiko]',
                              find_links=[paramiko_wheels])

    result = ask_for(python, 'paramiko')

    assert result['hasattr'] is True
    assert 'unused.invalid' in result['reached']


# -- coexistence with upstream mitogen ------------------------------------

@pytest.fixture(scope='module')
def upstream_wheel():
    try:
        return ansible_harness.mitogen_wheel()
    except RuntimeError as e:
        pytest.skip('cannot get the mitogen %s wheel: %s'
                    % (ansible_harness.MITOGEN_VERSION, e))


OURS = ('mitogen-master', 'mitogen-ssh')


def repair_commands(message, which):
    """The pip commands under `which` ("this project" or "upstream") in a
    refusal message, as pip arguments."""
    lines = message.splitlines()
    start = [i for i, line in enumerate(lines)
             if line.startswith('To keep') and which in line][0]
    commands = []
    for line in lines[start + 1:]:
        if not line.startswith('    '):
            break
        words = line.split()
        assert words[1:3] == ['-m', 'pip'], line
        commands.append(words[3:])
    return commands


def follow(built_dists, python, upstream_wheel, commands):
    for command in commands:
        args = [upstream_wheel if a.startswith('mitogen==') else a
                for a in command[1:] if a != '-y']
        built_dists.pip(python, command[0], *args)


def installed_in_order(built_dists, path, first, then):
    """A new venv at `path` where pip installed `first`, then `then`."""
    python = built_dists.venv(path, *first)
    built_dists.pip(python, 'install', *then)
    return python


@pytest.fixture
def ours_over_upstream(built_dists, upstream_wheel, tmp_path):
    return installed_in_order(built_dists, tmp_path / 'venv',
                              [upstream_wheel], OURS)


def test_ours_over_upstream_refuses_to_import_naming_the_fix(
        ours_over_upstream):
    rc, out = run([ours_over_upstream, '-c', 'import mitogen.master'],
                  check=False)

    assert rc == 1
    assert 'ForeignMitogenError' in out
    assert 'the distribution "mitogen" 0.3.54' in out
    assert '-m pip uninstall -y mitogen\n' in out
    assert ('-m pip install --force-reinstall --no-deps mitogen-core '
            'mitogen-master mitogen-ssh\n') in out


def test_repair_after_ours_over_upstream_gives_a_working_install(
        built_dists, upstream_wheel, ours_over_upstream, tmp_path):
    python = ours_over_upstream
    _, out = run([python, '-c', 'import mitogen'], check=False)

    follow(built_dists, python, upstream_wheel,
           repair_commands(out, 'this project'))
    rc, out = run_first_program(python, tmp_path)

    assert rc == 0, out
    assert run([python, '-m', 'mitogen', 'check']).count('mitogen-') == 3


def test_repair_to_upstream_after_ours_over_upstream_gives_upstream(
        built_dists, upstream_wheel, ours_over_upstream):
    python = ours_over_upstream
    _, out = run([python, '-c', 'import mitogen'], check=False)

    follow(built_dists, python, upstream_wheel,
           repair_commands(out, 'upstream'))
    names = run([python, '-c',
                 'import importlib.metadata as m, mitogen.core;'
                 'print(sorted(d.metadata["Name"] for d in m.distributions()))'
                 ';print(hasattr(mitogen.core, "DISTRIBUTION"))'])

    assert names.split('\n')[:2] == ["['mitogen']", 'False']


@pytest.fixture
def upstream_over_ours(built_dists, upstream_wheel, tmp_path):
    return installed_in_order(built_dists, tmp_path / 'venv', OURS,
                              [upstream_wheel])


def test_upstream_over_ours_refuses_this_projects_own_modules(
        upstream_over_ours):
    rc, out = run([upstream_over_ours, '-c', 'import mitogen.local'],
                  check=False)

    assert rc == 1
    assert 'ForeignMitogenError' in out
    assert 'was installed over this project' in out
    assert '-m pip uninstall -y mitogen\n' in out


def test_check_reports_files_upstream_overwrote_with_the_fix(
        upstream_over_ours):
    rc, out = run([upstream_over_ours, '-m', 'mitogen', 'check'],
                  check=False)

    assert rc == 1
    assert 'this project' in out
    assert '-m pip uninstall -y mitogen\n' in out


def test_uninstalling_upstream_installed_over_ours_is_reported(
        built_dists, upstream_over_ours, upstream_wheel, tmp_path):
    python = upstream_over_ours
    built_dists.pip(python, 'uninstall', 'mitogen')

    rc, out = run([python, '-m', 'mitogen', 'check'], check=False)
    follow(built_dists, python, upstream_wheel,
           repair_commands(out, 'this project'))

    assert rc == 1
    assert 'mitogen.core is missing' in out
    rc, out = run_first_program(python, tmp_path)
    assert rc == 0, out


def test_upstream_in_another_directory_stays_out_of_the_package(
        built_dists, upstream_wheel, user_venv, tmp_path):
    other = tmp_path / 'other'
    run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
         '--no-index', '--disable-pip-version-check', '--target', str(other),
         upstream_wheel])
    code = ('import sys; sys.path.append(%r)\n' % (str(other),)
            + 'import mitogen, mitogen.core, mitogen.master\n'
            + 'print(mitogen.__path__, hasattr(mitogen.core, "DISTRIBUTION"))')

    out = run([user_venv, '-c', code])

    assert str(other) not in out
    assert out.strip().endswith('True')
