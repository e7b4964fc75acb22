"""
Specification of ``router.doas()`` (:mod:`mitogen.doas`): a child started
through ``doas -u <username>`` (OpenDoas, Debian package ``doas``), typing
the password at doas's prompt, and refused by its rules with doas's
message. Wrong and missing passwords are tested by
``tests/test_login_failures.py``; bulk data and shutdown by
``tests/test_conformance.py``.

The rules are those ``tests/users.py`` writes to ``/etc/doas.conf``: root
becomes anyone without a password, mitopw anyone with its password. The
master (root) becomes mitopw through sudo, then asks for mitonp ``via=``
that context, so mitopw's doas is the one that prompts.
"""
import pytest

import interpreters
import mitogen.doas
import mitogen.parent
from support import become_funcs as funcs


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


def test_refusal_by_the_rules_raises_eof_error(router, doas_rules):
    # mitonp has no doas rule: doas refuses before asking anything.
    middle = router.sudo(username=doas_rules.nopass,
                         python_path=doas_rules.python)
    with pytest.raises(mitogen.parent.EofError) as info:
        router.doas(username=doas_rules.user, python_path=doas_rules.python,
                    via=middle)
    assert 'not permitted' in str(info.value)


@pytest.mark.parametrize('interpreter', interpreters.params(['2.7', '3.13']),
                         indirect=True)
def test_doas_through_an_intermediate_on_each_python(router, doas_rules,
                                                     interpreter):
    middle = router.local(python_path=interpreter.path)
    context = router.doas(username=doas_rules.nopass,
                          python_path=doas_rules.python, via=middle)
    assert context.call(funcs.identity)[0] == doas_rules.uid(
        doas_rules.nopass)
