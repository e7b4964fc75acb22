"""
Specification of ``router.sudo()`` (:mod:`mitogen.sudo`): a child started
through ``sudo -u <username>``, with Mitogen's arguments, typing a password
when sudo asks for one (recognised in any language, since the prompt is
ours), and leaving no process behind an intermediate. Wrong and missing
passwords are tested by ``tests/test_login_failures.py``; bulk data and
shutdown by ``tests/test_conformance.py``.

The accounts come from the ``test_users`` fixture (``tests/users.py``).
Password tests run sudo as mitopw: the master (root) first becomes mitopw
without a password, then asks for mitonp ``via=`` that context, so mitopw's
sudo is the one that prompts.
"""
import os

import pytest

import interpreters
import mitogen.core
import mitogen.sudo
import procs
from support import become_funcs as funcs

@pytest.fixture
def as_mitopw(router, test_users):
    """A context running as mitopw, whose sudo asks for mitopw's
    password."""
    return router.sudo(username=test_users.passwd,
                       python_path=test_users.python)


def test_sudo_is_registered_in_the_transports_entry_point_group():
    from importlib import metadata
    eps = metadata.entry_points().select(group='mitogen.transports',
                                         name='sudo')
    assert [ep.value for ep in eps] == ['mitogen.sudo:Connection']


def test_sudo_runs_the_child_as_the_target_account(router, test_users):
    context = router.sudo(username=test_users.nopass,
                          python_path=test_users.python)
    uid = test_users.uid(test_users.nopass)
    assert context.call(funcs.identity)[:2] == (uid, uid)


def test_context_is_named_after_the_account(router, test_users):
    context = router.sudo(username=test_users.nopass,
                          python_path=test_users.python)
    assert context.name == 'sudo.%s' % (test_users.nopass,)


def test_username_defaults_to_root(router):
    context = router.sudo()
    assert context.name == 'sudo.root'
    assert context.call(funcs.identity)[:2] == (0, 0)


def test_password_is_typed_when_sudo_asks(router, test_users, as_mitopw):
    context = router.sudo(username=test_users.nopass,
                          python_path=test_users.python,
                          password=test_users.password, via=as_mitopw)
    assert context.call(funcs.identity)[0] == test_users.uid(
        test_users.nopass)
    assert context.name == 'sudo.%s.sudo.%s' % (test_users.passwd,
                                                 test_users.nopass)


@pytest.mark.parametrize('language', ['de', 'fr', 'ru', 'ja'])
def test_prompts_are_recognised_whatever_sudo_language(
        router, test_users, monkeypatch, language):
    # sudo keeps LANGUAGE and LC_* across env_reset, so mitopw's sudo
    # speaks `language` (its catalogs are installed with it).
    monkeypatch.setenv('LANGUAGE', language)
    monkeypatch.setenv('LC_ALL', 'C.UTF-8')
    middle = router.sudo(username=test_users.passwd,
                         python_path=test_users.python)
    assert middle.call(funcs.environ_get, 'LANGUAGE') == language
    context = router.sudo(username=test_users.nopass,
                          python_path=test_users.python,
                          password=test_users.password, via=middle)
    assert context.call(funcs.identity)[0] == test_users.uid(
        test_users.nopass)
    with pytest.raises(mitogen.sudo.PasswordError):
        router.sudo(username=test_users.nopass,
                    python_path=test_users.python, password='wrong',
                    via=middle)


def test_environment_is_reset_by_default(router, test_users, monkeypatch):
    monkeypatch.setenv('MITOGEN_SUDO_PROBE', 'kept')
    context = router.sudo(username=test_users.nopass,
                          python_path=test_users.python)
    assert context.call(funcs.environ_get, 'MITOGEN_SUDO_PROBE') is None


def test_preserve_env_keeps_the_invoking_environment(router, test_users,
                                                     monkeypatch):
    monkeypatch.setenv('MITOGEN_SUDO_PROBE', 'kept')
    context = router.sudo(username=test_users.nopass,
                          python_path=test_users.python, preserve_env=True)
    assert context.call(funcs.environ_get, 'MITOGEN_SUDO_PROBE') == 'kept'


def test_preserve_env_alone_keeps_the_invoking_home(router, test_users,
                                                    monkeypatch):
    monkeypatch.setenv('HOME', '/nonexistent-invoking-home')
    context = router.sudo(username=test_users.nopass,
                          python_path=test_users.python, preserve_env=True)
    assert context.call(funcs.environ_get, 'HOME') == \
        '/nonexistent-invoking-home'


def test_set_home_sets_the_target_home(router, test_users, monkeypatch):
    monkeypatch.setenv('HOME', '/nonexistent-invoking-home')
    context = router.sudo(username=test_users.nopass,
                          python_path=test_users.python, preserve_env=True,
                          set_home=True)
    assert context.call(funcs.environ_get, 'HOME') == test_users.home(
        test_users.nopass)


def test_login_starts_in_the_target_home(router, test_users):
    context = router.sudo(username=test_users.nopass,
                          python_path=test_users.python, login=True)
    home = test_users.home(test_users.nopass)
    assert context.call(funcs.getcwd) == home
    assert context.call(funcs.environ_get, 'HOME') == home


def test_sudo_args_choose_the_account(router, test_users):
    context = router.sudo(sudo_args=['-u', test_users.nopass],
                          python_path=test_users.python)
    assert context.name == 'sudo.%s' % (test_users.nopass,)
    assert context.call(funcs.identity)[0] == test_users.uid(
        test_users.nopass)


def test_sudo_args_string_preserves_env(router, test_users, monkeypatch):
    monkeypatch.setenv('MITOGEN_SUDO_PROBE', 'kept')
    context = router.sudo(sudo_args='-E -u %s' % (test_users.nopass,),
                          python_path=test_users.python)
    assert context.call(funcs.environ_get, 'MITOGEN_SUDO_PROBE') == 'kept'


@pytest.mark.parametrize('sudo_args, expected', [
    ([], {}),
    (['-u', 'alice'], {'username': 'alice'}),
    (['-ualice'], {'username': 'alice'}),
    (['--user=alice'], {'username': 'alice'}),
    (['-E', '-H'], {'preserve_env': True, 'set_home': True}),
    (['-EH'], {'preserve_env': True, 'set_home': True}),
    (['--preserve-env', '--set-home', '--login'],
     {'preserve_env': True, 'set_home': True, 'login': True}),
    (['-i'], {'login': True}),
    (['-r', 'role_r', '-t', 'type_t'],
     {'selinux_role': 'role_r', 'selinux_type': 'type_t'}),
    (['-H', '-S', '-n'], {'set_home': True}),
    ('-H -u "bob"', {'set_home': True, 'username': 'bob'}),
])
def test_sudo_args_are_parsed_into_options(sudo_args, expected):
    assert mitogen.sudo.parse_sudo_args(sudo_args) == expected


@pytest.mark.parametrize('sudo_args', [
    ['-k'], ['--askpass'], ['-u'], ['-g', 'wheel'], ['whoami'],
])
def test_unsupported_sudo_args_raise_stream_error(sudo_args):
    with pytest.raises(mitogen.core.StreamError):
        mitogen.sudo.Options(max_message_size=1 << 20, sudo_args=sudo_args)


def test_explicit_arguments_win_over_sudo_args():
    options = mitogen.sudo.Options(max_message_size=1 << 20,
                                   username='carol', preserve_env=False,
                                   sudo_args=['-u', 'alice', '-E'])
    assert (options.username, options.preserve_env) == ('carol', False)


def test_boot_command_carries_the_options():
    options = mitogen.sudo.Options(
        max_message_size=1 << 20, username='alice', sudo_path='/opt/sudo',
        preserve_env=True, set_home=True, login=True, selinux_role='r',
        selinux_type='t', python_path='/usr/bin/python3')
    argv = mitogen.sudo.Connection(options, None).get_boot_command()
    prompt = argv[argv.index('-p') + 1]
    assert argv[:3] == ['/opt/sudo', '-u', 'alice']
    assert set(['-E', '-H', '-i']) <= set(argv[:argv.index('--')])
    assert argv[argv.index('-r') + 1] == 'r'
    assert argv[argv.index('-t') + 1] == 't'
    assert '%' not in prompt
    assert argv[argv.index('--') + 1:][:2] == ['/usr/bin/python3', '-c']


def test_each_connection_has_its_own_prompt():
    options = mitogen.sudo.Options(max_message_size=1 << 20)
    first = mitogen.sudo.Connection(options, None).sudo_prompt
    second = mitogen.sudo.Connection(options, None).sudo_prompt
    assert first != second


def test_missing_sudo_program_raises_stream_error(router):
    with pytest.raises(mitogen.core.StreamError) as info:
        router.sudo(sudo_path='/nonexistent/sudo')
    assert '/nonexistent/sudo' in str(info.value)


def test_intermediate_shutdown_leaves_no_process_behind(router, test_users,
                                                        as_mitopw):
    context = router.sudo(username=test_users.nopass,
                          python_path=test_users.python,
                          password=test_users.password, via=as_mitopw)
    pids = context.call(funcs.ancestors, os.getpid())
    as_mitopw.shutdown(wait=True)
    assert procs.wait_all_gone(pids) == []


@pytest.mark.parametrize('interpreter', interpreters.params(), indirect=True)
def test_sudo_through_an_intermediate_on_each_python(router, test_users,
                                                     interpreter):
    # The intermediate runs mitogen.sudo on `interpreter`.
    middle = router.local(python_path=interpreter.path)
    context = router.sudo(username=test_users.nopass,
                          python_path=test_users.python, via=middle)
    assert context.call(funcs.identity)[0] == test_users.uid(
        test_users.nopass)
