"""
Specification of ``router.doas()`` (:mod:`mitogen.doas`): a child started
through ``doas -u <username>`` (OpenDoas, Debian package ``doas``), typing
the password at doas's prompt, failing fast with
:class:`mitogen.parent.PasswordError` when it is wrong or missing, and
leaving no process behind.

The rules are those ``tests/users.py`` writes to ``/etc/doas.conf``: root
becomes anyone without a password, mitopw anyone with its password. The
master (root) becomes mitopw through sudo, then asks for mitonp ``via=``
that context, so mitopw's doas is the one that prompts.
"""
import os
import shutil
import time

import pytest

import interpreters
import mitogen.core
import mitogen.doas
import mitogen.parent
import procs
import users
from support import become_funcs as funcs

#: Seconds within which a refused or missing password must be reported.
PROMPTLY = 5.0


@pytest.fixture
def as_mitopw(router, doas_rules):
    return router.sudo(username=doas_rules.passwd,
                       python_path=doas_rules.python)


def test_doas_is_registered_in_the_transports_entry_point_group():
    from importlib import metadata
    eps = metadata.entry_points().select(group='mitogen.transports',
                                         name='doas')
    assert [ep.value for ep in eps] == ['mitogen.doas:Connection']


def test_doas_runs_the_child_as_the_target_account(router, doas_rules):
    context = router.doas(username=doas_rules.nopass,
                          python_path=doas_rules.python)
    uid = doas_rules.uid(doas_rules.nopass)
    assert context.call(funcs.identity)[:2] == (uid, uid)
    assert context.name == 'doas.%s' % (doas_rules.nopass,)


def test_password_is_typed_when_doas_asks(router, doas_rules, as_mitopw):
    context = router.doas(username=doas_rules.nopass,
                          python_path=doas_rules.python,
                          password=doas_rules.password, via=as_mitopw)
    assert context.call(funcs.identity)[0] == doas_rules.uid(
        doas_rules.nopass)
    assert context.name == 'sudo.%s.doas.%s' % (doas_rules.passwd,
                                                 doas_rules.nopass)


def test_wrong_password_raises_password_error_promptly(router, doas_rules,
                                                       as_mitopw):
    started = time.monotonic()
    with pytest.raises(mitogen.doas.PasswordError) as info:
        router.doas(username=doas_rules.nopass,
                    python_path=doas_rules.python,
                    password='not-' + doas_rules.password, via=as_mitopw)
    assert time.monotonic() - started < PROMPTLY
    assert 'incorrect' in str(info.value)


def test_missing_password_raises_its_own_error_at_once(router, doas_rules,
                                                       as_mitopw):
    started = time.monotonic()
    with pytest.raises(mitogen.doas.PasswordError) as info:
        router.doas(username=doas_rules.nopass,
                    python_path=doas_rules.python, via=as_mitopw)
    assert time.monotonic() - started < 2.0
    assert 'password is required but none was given' in str(info.value)


def test_refusal_by_the_rules_raises_eof_error(router, doas_rules):
    # mitonp has no doas rule: doas refuses before asking anything.
    middle = router.sudo(username=doas_rules.nopass,
                         python_path=doas_rules.python)
    with pytest.raises(mitogen.parent.EofError) as info:
        router.doas(username=doas_rules.user, python_path=doas_rules.python,
                    via=middle)
    assert 'not permitted' in str(info.value)


def test_shutdown_leaves_no_process_behind(router, doas_rules):
    context = router.doas(username=doas_rules.nopass,
                          python_path=doas_rules.python)
    pids = context.call(funcs.ancestors, os.getpid())
    context.shutdown(wait=True)
    assert procs.wait_all_gone(pids) == []


@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.13']),
                         indirect=True)
def test_doas_through_an_intermediate_on_each_python(router, doas_rules,
                                                     interpreter):
    middle = router.local(python_path=interpreter.path)
    context = router.doas(username=doas_rules.nopass,
                          python_path=doas_rules.python, via=middle)
    assert context.call(funcs.identity)[0] == doas_rules.uid(
        doas_rules.nopass)
