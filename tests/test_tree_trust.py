"""
Specification of the trust chain at every hop of a tree: a compromised
context deep in the tree can neither borrow the identity or authority of
another context nor make anything but its own descendants run code, shut
down or load a module, and it cannot redirect routes.

The tree (built once for the module; see :func:`tree`)::

    M (master)
    +-- P                 parent of the compromised context
    |   +-- C             the compromised grandchild
    |   |   +-- D         C's own child
    |   +-- S             C's sibling
    |       +-- N         S's child (C's nephew)
    +-- U                 P's sibling (C's uncle)
        +-- K             U's child (C's cousin)

C "is compromised": the test runs :func:`support.trust_forge.send` in it,
which writes whatever header it is given straight onto C's stream to P,
so P sees exactly what a malicious C could write.  A forged message must
be stopped by the first honest context it reaches -- P -- which logs the
drop; P's records reach the master as ``mitogen.ctx.<P's name>``.  Every
refusal has a positive control showing the same message is accepted when
it is legitimate.

An attack on routes that is known to succeed (marked xfail) gets a fresh
tree of its own (:func:`fresh`), so the route it changes cannot spill into
other tests.

This is the thin real-process layer: every forgery, policy refusal and
route rule is specified on routers joined in memory
(:mod:`test_trust_memory`, fuzzed by :mod:`test_trust_fuzz`). What stays
here needs real children: the real handlers behind the policies (the
dispatcher runs the call, the importer imports the module, the context
shuts down), drops logged by a child reaching the master's log, the route
ownership a child's :class:`mitogen.parent.Router` checks for blocks of IDs
it passed down, and routing still working for a context started after the
attacks.
"""
import collections
import logging
import os
import sys
import uuid

import pytest

import mitogen.core
import mitogen.master
import waiting
from logcapture import wait_for_record
from mitogen.core import (ADD_ROUTE, CALL_FUNCTION, DEL_ROUTE, FORWARD_LOG,
                          FORWARD_MODULE, LOAD_MODULE, SHUTDOWN)

from support import trust_forge
from support import tree_helpers as th

#: Seconds a context waits for the reply to a message it sent.
REPLY_WAIT = 10.0

Tree = collections.namedtuple('Tree', 'router P C D S N U K')


def build_tree(router):
    def local(**kwargs):
        return router.local(python_path=sys.executable, **kwargs)
    p = local()
    c = local(via=p)
    d = local(via=c)
    s = local(via=p)
    n = local(via=s)
    u = local()
    k = local(via=u)
    tree = Tree(router, p, c, d, s, n, u, k)
    # Every context imports the helper modules now, so no test depends on
    # the order tests run in.
    router.drop_log_burst = 1 << 30
    for ctx in tree[1:]:
        ctx.call(trust_forge.context_id)
        ctx.call(th.pid)
        ctx.call(trust_forge.log_every_drop)
    return tree


def shut_down(tree):
    latches = [tree.P.shutdown(), tree.U.shutdown()]
    for latch in latches:
        latch.get(timeout=30)
    tree.P.shutdown(wait=True)
    tree.U.shutdown(wait=True)


@pytest.fixture(scope='module')
def tree():
    with mitogen.master.Router() as router:
        tree = build_tree(router)
        yield tree
        shut_down(tree)


@pytest.fixture
def fresh():
    """A tree of its own, for tests that attack routes."""
    with mitogen.master.Router() as router:
        tree = build_tree(router)
        yield tree
        shut_down(tree)


@pytest.fixture
def evidence(tmp_path):
    """A path a forged ``create_file`` call would create."""
    return str(tmp_path / ('ran-%s' % uuid.uuid4().hex))


#: ctx.call() that fails instead of hanging.
call = waiting.caller(REPLY_WAIT + 10)


def forge(ctx, dst, handle, **kwargs):
    """Run :func:`trust_forge.send` in `ctx` towards `dst` (a Context or an
    ID) and return its outcome."""
    dst_id = getattr(dst, 'context_id', dst)
    for key in ('src_id', 'auth_id'):
        if key in kwargs:
            kwargs[key] = getattr(kwargs[key], 'context_id', kwargs[key])
    return tuple(call(ctx, trust_forge.send, dst_id, handle, **kwargs))


def header(dst, src, auth, handle):
    """The start of ``repr(Message)`` for a message with this header."""
    ids = [getattr(x, 'context_id', x) for x in (dst, src, auth)]
    return 'Message(%r, %r, %r, %r,' % tuple(ids + [handle])


def logged_by(ctx, *needles):
    """Predicate: an ERROR of `ctx`'s ``mitogen`` logger (``mitogen.ctx.*``
    in the master, or the master's own ``mitogen`` logger when `ctx` is
    None) whose text holds every one of `needles`."""
    name = 'mitogen' if ctx is None else 'mitogen.ctx.%s' % (ctx.name,)

    def predicate(record):
        text = record.getMessage()
        return (record.name == name and record.levelno == logging.ERROR and
                getattr(record, 'mitogen_name', 'mitogen') == 'mitogen' and
                all(n in text for n in needles))
    return predicate


def dropped_by(ctx, dst, src, auth, handle, field='auth_id'):
    """Predicate: `ctx` logged that it dropped a message with this header
    because of the header field `field`."""
    return logged_by(ctx, 'dropped', header(dst, src, auth, handle),
                     'but %s' % (field,))


def delivered(caplog, token):
    """Whether a forged log record holding `token` was logged as such (not
    merely quoted in a report of its drop)."""
    return any(getattr(r, 'mitogen_name', None) == 'trust_forge' and
               token in r.getMessage() for r in caplog.records)


def master_sends(router, dst, handle, obj):
    """Route a message with the master's authority; return the outcome as
    :func:`trust_forge.describe_reply` would."""
    msg = mitogen.core.Message.pickled(obj, dst_id=dst.context_id,
                                       handle=handle)
    with mitogen.core.Receiver(router, persist=False) as recv:
        msg.reply_to = recv.handle
        router.route(msg)
        return trust_forge.describe_reply(recv, REPLY_WAIT)


def alive(ctx):
    return call(ctx, trust_forge.context_id) == ctx.context_id


def body(handle, evidence):
    """A request body for `handle`: runs ``create_file(evidence)``, shuts
    down, or loads a module named after `evidence`."""
    if handle == CALL_FUNCTION:
        return dict(obj=trust_forge.call_request(evidence))
    if handle == LOAD_MODULE:
        return dict(obj=trust_forge.load_module_request(
            module_name(evidence), u'forged'))
    return dict(data=b'')


def module_name(evidence):
    return 'tree_trust_%s' % (os.path.basename(evidence).replace('-', '_'),)


def assert_had_no_effect(ctx, handle, evidence):
    """The request `handle` did nothing in `ctx`, which still serves its
    parent."""
    assert not os.path.exists(evidence)
    assert alive(ctx)
    if handle == LOAD_MODULE:
        outcome = tuple(call(ctx, trust_forge.try_import,
                             module_name(evidence)))
        assert outcome[0] == 'ImportError', outcome


PRIVILEGED = [pytest.param(CALL_FUNCTION, id='CALL_FUNCTION'),
              pytest.param(SHUTDOWN, id='SHUTDOWN'),
              pytest.param(LOAD_MODULE, id='LOAD_MODULE')]


# ---------------------------------------------------------------------------
# Positive controls: the same messages, sent with authority, are accepted
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('target', ['P', 'C', 'D', 'S', 'N', 'K'])
def test_call_with_master_authority_runs_anywhere_in_the_tree(
        tree, target, evidence):
    ctx = getattr(tree, target)
    outcome = master_sends(tree.router, ctx, CALL_FUNCTION,
                           trust_forge.call_request(evidence))
    assert outcome == ('reply', evidence)
    assert os.path.exists(evidence)


def test_compromised_context_may_run_code_in_its_own_child(tree, evidence):
    outcome = forge(tree.C, tree.D, CALL_FUNCTION,
                    obj=trust_forge.call_request(evidence),
                    wait=REPLY_WAIT, direct=False)
    assert outcome == ('reply', evidence)
    assert os.path.exists(evidence)


def test_compromised_context_may_load_a_module_into_its_own_child(tree):
    name = 'tree_trust_control_%s' % uuid.uuid4().hex
    forge(tree.C, tree.D, LOAD_MODULE,
          obj=trust_forge.load_module_request(name, u'served'), direct=False)
    assert tuple(call(tree.D, trust_forge.try_import, name)) == \
        ('imported', 'served')


def test_honest_log_record_of_a_grandchild_reaches_the_master(tree, caplog):
    token = uuid.uuid4().hex
    assert forge(tree.C, 0, FORWARD_LOG,
                 data=trust_forge.forward_log_body(token)) == ('sent', None)
    record = wait_for_record(caplog, lambda r: (
        r.name == 'mitogen.ctx.%s' % (tree.C.name,) and
        token in r.getMessage()))
    assert record is not None
    assert record.mitogen_name == 'trust_forge'


# ---------------------------------------------------------------------------
# Forged identity or authority: dropped (and logged) by the first hop, P
# ---------------------------------------------------------------------------

def test_forged_master_src_id_to_the_master_is_dropped_by_the_parent(
        tree, caplog):
    token = uuid.uuid4().hex
    forge(tree.C, 0, FORWARD_LOG, data=trust_forge.forward_log_body(token),
          src_id=0)
    assert wait_for_record(caplog, dropped_by(tree.P, 0, 0, tree.C,
                                              FORWARD_LOG, 'src_id'))
    assert not delivered(caplog, token)


# Who C targets, and whose authority it claims: each the authority the
# target would obey; one per kind of hop (P itself, down to a sibling,
# across the master to a cousin). test_trust_memory tries every pair.
FORGERIES = [
    pytest.param('P', 0, id='parent-as-master'),
    pytest.param('S', 'P', id='sibling-as-parent'),
    pytest.param('K', 'U', id='cousin-as-uncle'),
]


@pytest.mark.parametrize('handle', PRIVILEGED)
@pytest.mark.parametrize('target,authority', FORGERIES)
def test_forged_authority_is_dropped_and_logged_by_the_parent(
        tree, caplog, evidence, target, authority, handle):
    dst = getattr(tree, target)
    auth = authority if authority == 0 else getattr(tree, authority)
    forge(tree.C, dst, handle, auth_id=auth, src_id=auth,
          **body(handle, evidence))
    assert wait_for_record(caplog, dropped_by(tree.P, dst, auth, auth,
                                              handle))
    assert_had_no_effect(dst, handle, evidence)


def test_forgery_by_a_deeper_context_is_dropped_and_logged_by_its_parent(
        tree, caplog, evidence):
    # D claims its grandparent's authority towards C's sibling: C, the
    # first hop, drops it; C's record travels through P to the master.
    forge(tree.D, tree.S, CALL_FUNCTION, auth_id=tree.P,
          obj=trust_forge.call_request(evidence))
    assert wait_for_record(caplog, dropped_by(tree.C, tree.S, tree.D, tree.P,
                                              CALL_FUNCTION))
    assert_had_no_effect(tree.S, CALL_FUNCTION, evidence)


# ---------------------------------------------------------------------------
# Honest requests without authority: refused by the target's policy
# ---------------------------------------------------------------------------

def test_call_from_a_grandchild_to_the_master_is_never_run(tree, evidence):
    outcome = forge(tree.C, 0, CALL_FUNCTION,
                    obj=trust_forge.call_request(evidence),
                    wait=REPLY_WAIT, direct=False)
    assert outcome[0] == 'dead', outcome
    assert not os.path.exists(evidence)


def test_forward_module_request_to_the_parent_is_refused(tree):
    # FORWARD_MODULE would make P push a module to S with P's authority.
    outcome = forge(tree.C, tree.P, FORWARD_MODULE,
                    obj=(tree.S.context_id, u'support.trust_forge'),
                    wait=REPLY_WAIT, direct=False)
    assert outcome == ('dead', 'refused by policy of context %d'
                       % (tree.P.context_id,))


# ---------------------------------------------------------------------------
# Routes: ADD_ROUTE / DEL_ROUTE only from an immediate child, for IDs it owns
# ---------------------------------------------------------------------------

def master_route(tree, ctx):
    stream = tree.router._stream_by_id.get(getattr(ctx, 'context_id', ctx))
    return None if stream is None else stream.protocol.remote_id


def assert_routes_intact(tree):
    """Every context is routed as built, and still answers."""
    for ctx in tree[1:]:
        first_hop = tree.U if ctx in (tree.U, tree.K) else tree.P
        assert master_route(tree, ctx) == first_hop.context_id, ctx
        assert alive(ctx)
    routes = call(tree.P, th.routes)
    for ctx in (tree.C, tree.D):
        assert routes[ctx.context_id] == tree.C.context_id
    for ctx in (tree.S, tree.N):
        assert routes[ctx.context_id] == tree.S.context_id
    for ctx in (tree.U, tree.K):
        assert ctx.context_id not in routes


@pytest.mark.parametrize('claim', ['uncle', 'cousin'])
def test_add_route_from_a_grandchild_for_an_id_outside_its_parents_subtree_is_refused(
        fresh, claim):
    tree = fresh
    target = (tree.U if claim == 'uncle' else tree.K).context_id
    forge(tree.C, tree.P, ADD_ROUTE, obj=(target, u'hijack'))
    assert target not in call(tree.P, th.routes)


def test_legitimate_routes_still_work_after_the_attacks(tree, caplog):
    forge(tree.C, tree.P, ADD_ROUTE, obj=(tree.S.context_id, u'hijack'))
    forge(tree.P, 0, ADD_ROUTE, obj=(tree.K.context_id, u'hijack'))
    forge(tree.C, 0, DEL_ROUTE, obj=tree.K.context_id)
    assert wait_for_record(caplog, logged_by(
        None, 'refused ADD_ROUTE for %r' % (tree.K.context_id,)))
    # A context started after the attacks is routed like any other.
    late = tree.router.local(via=tree.C, python_path=sys.executable)
    try:
        assert master_route(tree, late) == tree.P.context_id
        assert call(tree.P, th.routes)[late.context_id] == tree.C.context_id
        assert call(late, th.ids) == (
            late.context_id, [tree.C.context_id, tree.P.context_id, 0])
        assert_routes_intact(tree)
    finally:
        late.shutdown(wait=True)
