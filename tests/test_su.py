"""
Specification of ``router.su()`` (:mod:`mitogen.su`): a child started
through ``su <username> -c ...`` with all of its stdio on a raw
pseudo-terminal, typing the password when su asks for it, whatever the
language of the prompt, telling a refused password in any language, and
leaving no process behind an intermediate. Wrong and missing passwords
are tested by ``tests/test_login_failures.py``; bulk data and shutdown by
``tests/test_conformance.py``.

Password tests run su as mitouser: the master (root) becomes mitouser
without a password, then asks for mitopw ``via=`` that context, so
mitouser's su is the one that prompts. Prompts in other languages come from
PAM's own translations, selected with ``LANGUAGE`` (the machine has only the
C locales, and ``LC_ALL=C.UTF-8`` lets gettext use them).
"""
import gettext
import glob
import os
import stat
import sys
import time

import pytest

import interpreters
import mitogen.become
import mitogen.core
import mitogen.parent
import mitogen.su
import procs
from support import become_funcs as funcs

#: Seconds within which a refused password must be reported: PAM delays a
#: failed authentication by about 2-3 s.
PROMPTLY = 8.0

PAM_CATALOGS = '/usr/share/locale/%s/LC_MESSAGES/Linux-PAM.mo'


@pytest.fixture
def as_mitouser(router, test_users):
    """A context running as mitouser, whose su asks for passwords."""
    return router.su(username=test_users.user, python_path=test_users.python)


def pam_prompt(language):
    """PAM's ``Password:`` prompt in `language`, from its catalog."""
    path = PAM_CATALOGS % (language,)
    if not os.path.exists(path):
        pytest.skip('no PAM translation for %s on this machine (%s)'
                    % (language, path))
    with open(path, 'rb') as f:
        return gettext.GNUTranslations(f).gettext('Password: ')


def speak(monkeypatch, language):
    monkeypatch.setenv('LANGUAGE', language)
    monkeypatch.setenv('LC_ALL', 'C.UTF-8')


def test_su_is_registered_in_the_transports_entry_point_group():
    from importlib import metadata
    eps = metadata.entry_points().select(group='mitogen.transports',
                                         name='su')
    assert [ep.value for ep in eps] == ['mitogen.su:Connection']


def test_root_becomes_the_account_without_a_password(router, test_users):
    context = router.su(username=test_users.user,
                        python_path=test_users.python)
    uid = test_users.uid(test_users.user)
    assert context.call(funcs.identity)[:2] == (uid, uid)


def test_context_is_named_after_the_account(router, test_users):
    context = router.su(username=test_users.user,
                        python_path=test_users.python)
    assert context.name == 'su.%s' % (test_users.user,)


def test_password_is_typed_when_su_asks(router, test_users, as_mitouser):
    context = router.su(username=test_users.passwd,
                        python_path=test_users.python,
                        password=test_users.password, via=as_mitouser)
    assert context.call(funcs.identity)[0] == test_users.uid(
        test_users.passwd)
    assert context.name == 'su.%s.su.%s' % (test_users.user,
                                             test_users.passwd)


def test_unknown_account_raises_eof_error_with_su_message(router):
    with pytest.raises(mitogen.parent.EofError) as info:
        router.su(username='mitogen-no-such-user')
    assert 'does not exist' in str(info.value)


@pytest.mark.parametrize('language', ['de', 'fr', 'es', 'ru', 'ja', 'zh_CN'])
def test_prompt_in_any_language_is_recognised(router, test_users,
                                              monkeypatch, language):
    # The missing-password error quotes the prompt su printed: it is the
    # translated one, and it was recognised.
    translated = pam_prompt(language)
    assert translated != 'Password: ', 'catalog has no translation'
    speak(monkeypatch, language)
    middle = router.su(username=test_users.user,
                       python_path=test_users.python)
    with pytest.raises(mitogen.su.PasswordError) as info:
        router.su(username=test_users.passwd, python_path=test_users.python,
                  via=middle)
    assert translated.strip() in str(info.value)


@pytest.mark.parametrize('language', ['de', 'ru', 'ja'])
def test_password_is_typed_at_a_translated_prompt(router, test_users,
                                                  monkeypatch, language):
    pam_prompt(language)
    speak(monkeypatch, language)
    middle = router.su(username=test_users.user,
                       python_path=test_users.python)
    context = router.su(username=test_users.passwd,
                        python_path=test_users.python,
                        password=test_users.password, via=middle)
    assert context.call(funcs.identity)[0] == test_users.uid(
        test_users.passwd)


def test_translated_refusal_raises_password_error(router, test_users,
                                                  monkeypatch):
    # su's "Authentication failure" comes out in Russian, which no default
    # incorrect_prompts entry matches: su's exit status tells it.
    pam_prompt('ru')
    speak(monkeypatch, 'ru')
    middle = router.su(username=test_users.user,
                       python_path=test_users.python)
    started = time.monotonic()
    with pytest.raises(mitogen.su.PasswordError) as info:
        router.su(username=test_users.passwd, python_path=test_users.python,
                  password='wrong', via=middle)
    assert time.monotonic() - started < PROMPTLY
    assert 'incorrect' in str(info.value)


@pytest.mark.parametrize('prompt', [
    'Password: ', 'Passwort: ', 'Mot de passe : ', 'Contraseña: ',
    'Пароль: ', 'パスワード:', '密码： ', '암호: ', 'ពាក្យសម្ងាត់\xa0៖ ',
    '\rdoas (alice@host) password: ', 'Last login: today\nPassword: ',
    b'Passwort: ', 'Пароль: '.encode('utf-8'),
])
def test_recogniser_accepts_prompts_in_many_languages(prompt):
    assert mitogen.become.looks_like_prompt(prompt)


@pytest.mark.parametrize('output', [
    '', '   ', 'Password: \n', 'su: Authentication failure\n',
    'Last login: Mon Nov 27 on pts/0\n', 'Password', 'loading...',
])
def test_recogniser_rejects_other_output(output):
    assert not mitogen.become.looks_like_prompt(output)


def test_recogniser_accepts_every_pam_translation_on_this_machine():
    catalogs = glob.glob(PAM_CATALOGS % ('*',))
    if not catalogs:
        pytest.skip('no PAM translations installed')
    refused = {}
    for path in catalogs:
        with open(path, 'rb') as f:
            prompt = gettext.GNUTranslations(f).gettext('Password: ')
        if not mitogen.become.looks_like_prompt(prompt):
            refused[path] = prompt
    assert refused == {}


FAKE_SU = '''\
#!%(python)s
# A stand-in for su with a prompt that ends in no colon: asks on its pty,
# then runs the command, or complains and waits forever.
import os, sys, time
sys.stdout.write(os.environ["FAKE_SU_PROMPT"]); sys.stdout.flush()
line = sys.stdin.readline().rstrip("\\n")
if line != os.environ["FAKE_SU_PASSWORD"]:
    sys.stdout.write("fake-su: nope\\n"); sys.stdout.flush()
    time.sleep(60)
    sys.exit(1)
os.execv("/bin/sh", ["sh", "-c", sys.argv[3]])
'''


@pytest.fixture
def fake_su(tmp_path, monkeypatch):
    path = tmp_path / 'fake-su'
    path.write_text(FAKE_SU % {'python': sys.executable})
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv('FAKE_SU_PROMPT', 'Enter secret> ')
    monkeypatch.setenv('FAKE_SU_PASSWORD', 'sesame')
    return str(path)


def test_password_prompt_marks_a_prompt_without_colon(router, fake_su):
    context = router.su(su_path=fake_su, password='sesame',
                        password_prompt='enter SECRET')
    assert context.call(funcs.identity)[0] == os.getuid()


def test_prompt_without_colon_is_not_answered_unless_named(router, fake_su):
    with pytest.raises(mitogen.core.TimeoutError) as info:
        router.su(su_path=fake_su, password='sesame', connect_timeout=1.5)
    assert 'Enter secret>' in str(info.value)


def test_incorrect_prompts_end_the_wait_at_once(router, fake_su):
    started = time.monotonic()
    with pytest.raises(mitogen.su.PasswordError) as info:
        router.su(su_path=fake_su, password='wrong',
                  password_prompt='secret>',
                  incorrect_prompts=['FAKE-SU: NOPE'])
    assert time.monotonic() - started < 2.0
    assert 'fake-su: nope' in str(info.value).lower()


@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.6']),
                         indirect=True)
def test_non_ascii_prompt_is_quoted_through_an_intermediate(
        router, fake_su, monkeypatch, interpreter):
    monkeypatch.setenv('FAKE_SU_PROMPT', 'Пароль: ')
    middle = router.local(python_path=interpreter.path)
    with pytest.raises(mitogen.su.PasswordError) as info:
        router.su(su_path=fake_su, via=middle)
    assert 'Пароль:' in str(info.value)


def test_command_is_quoted_for_the_target_shell():
    options = mitogen.su.Options(max_message_size=1 << 20, username='alice',
                                 su_path='/bin/su',
                                 python_path=["/opt/it's python", '-B'])
    argv = mitogen.su.Connection(options, None).get_boot_command()
    assert argv[:4] == ['/bin/su', 'alice', '-c', argv[3]]
    assert argv[3].startswith("'/opt/it'\\''s python' -B -c '")


def test_all_byte_values_pass_both_ways_through_the_raw_pty(router,
                                                            test_users):
    context = router.su(username=test_users.user,
                        python_path=test_users.python)
    data = bytes(range(256)) * 64
    assert context.call(funcs.echo, data) == data
    assert context.call(funcs.make_bytes, len(data)) == data


def test_disconnect_leaves_no_process_behind(router, test_users,
                                             as_mitouser):
    context = router.su(username=test_users.passwd,
                        python_path=test_users.python,
                        password=test_users.password, via=as_mitouser)
    pids = context.call(funcs.ancestors, os.getpid())
    router.disconnect(as_mitouser)
    assert procs.wait_all_gone(pids) == []


@pytest.mark.parametrize('interpreter', interpreters.params(), indirect=True)
def test_su_through_an_intermediate_on_each_python(router, test_users,
                                                   interpreter):
    # The intermediate runs mitogen.su on `interpreter`.
    middle = router.local(python_path=interpreter.path)
    context = router.su(username=test_users.user,
                        python_path=test_users.python, via=middle)
    assert context.call(funcs.identity)[0] == test_users.uid(
        test_users.user)

