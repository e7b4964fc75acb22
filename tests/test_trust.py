"""
Specification of the trust chain, with real children: no child can make its
parent or a sibling run code, shut down or load a module, and no child can
speak with the identity or authority of another context.

- The master runs no CALL_FUNCTION request, whoever sends it.
- Source verification: a message is dropped (and an error logged on the
  ``mitogen`` logger) unless it arrived on the stream the router would use
  to reach its ``auth_id`` and its ``src_id``.
- ``has_parent_authority``: a child accepts CALL_FUNCTION, SHUTDOWN and
  LOAD_MODULE only under the authority of itself or an ancestor, so an
  honest sibling's request is refused.

Every refusal has a positive control: the same message sent with authority
is accepted, so a refusal cannot pass just because the message was
malformed. The forging code runs in the children, from
:mod:`support.trust_forge`.

This is the thin real-process layer of these rules: every forgery case is
specified on routers joined in memory (:mod:`test_trust_memory`, fuzzed by
:mod:`test_trust_fuzz`). The cases kept here show the rules hold in real
children: the real dispatcher, importer and shutdown handler refuse a
sibling, a refused call leaves no trace on disk, the master (which has no
dispatcher) runs nothing, and a drop is logged by the master's router.
"""
import logging
import os
import sys
import uuid

import pytest

import mitogen.core
import mitogen.master
import waiting
from logcapture import wait_for_record
from mitogen.core import CALL_FUNCTION, FORWARD_LOG, LOAD_MODULE, SHUTDOWN

from support import trust_forge

#: Seconds a child waits for the reply to a message it sent.
REPLY_WAIT = 10.0


@pytest.fixture(scope='module')
def router():
    with mitogen.master.Router() as router:
        yield router


@pytest.fixture
def pair(router):
    """Two sibling children of the master, A and B, shut down afterwards."""
    a = router.local(python_path=sys.executable)
    b = router.local(python_path=sys.executable)
    yield a, b
    for latch in [ctx.shutdown() for ctx in (a, b)]:
        latch.get(timeout=10)
    for ctx in (a, b):
        ctx.shutdown(wait=True)  # disconnected already: waits for the exit


@pytest.fixture
def evidence(tmp_path):
    """A path a forged ``create_file`` call would create."""
    return str(tmp_path / ('ran-%s' % uuid.uuid4().hex))


#: ctx.call() that fails instead of hanging.
call = waiting.caller(REPLY_WAIT + 10)


def forge(ctx, *args, **kwargs):
    """Run :func:`trust_forge.send` in `ctx` and return its outcome."""
    return tuple(call(ctx, trust_forge.send, *args, **kwargs))


def drop_logged(*needles):
    """Predicate: an ERROR on the ``mitogen`` logger reporting a dropped
    message, whose text holds every one of `needles`."""
    def predicate(record):
        text = record.getMessage()
        return (record.name == 'mitogen' and
                record.levelno == logging.ERROR and
                'dropped' in text and
                all(n in text for n in needles))
    return predicate


def forwarded_log(ctx, token):
    """Predicate: a child's record, forwarded to the master, that holds
    `token`, logged as coming from `ctx`."""
    def predicate(record):
        return (record.name == 'mitogen.ctx.%s' % (ctx.name,) and
                token in record.getMessage())
    return predicate


def master_sends(router, dst, handle, obj, reply=True):
    """Route a message with the master's authority; return the outcome as
    :func:`trust_forge.describe_reply` would."""
    msg = mitogen.core.Message.pickled(obj, dst_id=dst.context_id,
                                       handle=handle)
    if not reply:
        router.route(msg)
        return None
    with mitogen.core.Receiver(router, persist=False) as recv:
        msg.reply_to = recv.handle
        router.route(msg)
        return trust_forge.describe_reply(recv, REPLY_WAIT)


# ---------------------------------------------------------------------------
# Positive controls: the messages the children forge are well formed
# ---------------------------------------------------------------------------

def test_call_request_with_master_authority_runs_in_a_child(
        router, pair, evidence):
    _, b = pair
    outcome = master_sends(router, b, CALL_FUNCTION,
                           trust_forge.call_request(evidence))
    assert outcome == ('reply', evidence)
    assert os.path.exists(evidence)


def test_load_module_with_master_authority_is_imported_by_a_child(
        router, pair):
    _, b = pair
    name = 'trust_control_%s' % uuid.uuid4().hex
    master_sends(router, b, LOAD_MODULE,
                 trust_forge.load_module_request(name, u'served'),
                 reply=False)
    assert tuple(call(b, trust_forge.try_import, name)) == \
        ('imported', u'served')


def test_honest_forward_log_from_a_child_is_logged(router, pair, caplog):
    a, _ = pair
    token = uuid.uuid4().hex
    assert forge(a, 0, FORWARD_LOG,
                 data=trust_forge.forward_log_body(token)) == ('sent', None)
    assert wait_for_record(caplog, forwarded_log(a, token))


# ---------------------------------------------------------------------------
# (a) The master runs no code at a child's request
# ---------------------------------------------------------------------------

def test_child_call_function_to_master_is_never_run(router, pair, evidence):
    a, _ = pair
    outcome = forge(a, 0, CALL_FUNCTION,
                    obj=trust_forge.call_request(evidence),
                    wait=REPLY_WAIT, direct=False)
    assert outcome[0] == 'dead', outcome
    assert not os.path.exists(evidence)


# ---------------------------------------------------------------------------
# (b) Forged master identity or authority
# ---------------------------------------------------------------------------

def test_forged_src_id_zero_to_master_is_dropped_and_logged(
        router, pair, caplog):
    a, _ = pair
    token = uuid.uuid4().hex
    forge(a, 0, FORWARD_LOG, data=trust_forge.forward_log_body(token),
          src_id=0)
    assert wait_for_record(caplog, drop_logged('src_id'))
    assert not any(token in r.getMessage() and r.name != 'mitogen'
                   for r in caplog.records)


# ---------------------------------------------------------------------------
# (c) An honest sibling has no authority over another
# ---------------------------------------------------------------------------

def test_sibling_call_function_is_refused_by_policy(router, pair, evidence):
    a, b = pair
    outcome = forge(a, b.context_id, CALL_FUNCTION,
                    obj=trust_forge.call_request(evidence),
                    wait=REPLY_WAIT, direct=False)
    assert outcome[0] == 'dead', outcome
    assert 'refused' in outcome[1]
    assert not os.path.exists(evidence)
    # B keeps serving its parent.
    assert call(b, trust_forge.create_file, evidence) == evidence


def test_sibling_shutdown_is_refused_and_the_child_keeps_running(
        router, pair):
    a, b = pair
    outcome = forge(a, b.context_id, SHUTDOWN, data=b'', wait=REPLY_WAIT,
                    direct=False)
    assert outcome[0] == 'dead', outcome
    assert 'refused' in outcome[1]
    assert call(b, trust_forge.context_id) == b.context_id
    assert not router._respondent_gone(b)


def test_sibling_load_module_is_refused_and_never_imported(router, pair):
    a, b = pair
    name = 'trust_forged_%s' % uuid.uuid4().hex
    outcome = forge(a, b.context_id, LOAD_MODULE,
                    obj=trust_forge.load_module_request(name, u'forged'),
                    wait=REPLY_WAIT, direct=False)
    assert outcome[0] == 'dead', outcome
    assert 'refused' in outcome[1]
    result = tuple(call(b, trust_forge.try_import, name))
    assert result[0] == 'ImportError', result


# ---------------------------------------------------------------------------
# (d) A child cannot claim to be its sibling
# ---------------------------------------------------------------------------

def test_child_claiming_sibling_authority_cannot_make_it_run_code(
        router, pair, evidence, caplog):
    # B trusts its own context ID: a message reaching B with auth_id B
    # would run. The master must stop it.
    a, b = pair
    forge(a, b.context_id, CALL_FUNCTION,
          obj=trust_forge.call_request(evidence),
          src_id=b.context_id, auth_id=b.context_id)
    assert wait_for_record(caplog, drop_logged('auth_id'))
    assert not os.path.exists(evidence)
    assert call(b, trust_forge.context_id) == b.context_id
