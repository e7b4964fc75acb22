"""
Specification of the trust rules, on routers joined in memory
(:mod:`memnet`): source verification, the authority of ancestors,
route ownership, the unidirectional rule and dead replies, at every hop of
a tree, in milliseconds and without a process.

Each test gets a fresh tree from :func:`memnet.tree`: the tree of
:mod:`test_tree_trust`, with C the compromised grandchild below P, C's
child D, its sibling S (S's child N), its uncle U (U's child K).

A forgery is a frame written as it is onto C's stream to P
(:meth:`memnet.Node.send_up`), so P reads exactly what a malicious C could
write; an honest request goes through C's router. Every refusal has a
positive control: the same message with authority is accepted.
"""
import collections

import pytest

import mitogen.core
from mitogen.core import (ADD_ROUTE, CALL_FUNCTION, DEL_ROUTE, LOAD_MODULE,
                          SHUTDOWN, Message)

import memnet
from memnet import OPEN_HANDLE, PRIVILEGED_HANDLES, reply_of

Tree = collections.namedtuple('Tree', 'net M P C D S N U K')


@pytest.fixture
def tree():
    net, nodes = memnet.tree()
    return Tree(net, *[nodes[name] for name in memnet.TREE])


@pytest.fixture
def log():
    with memnet.DropLog() as log:
        yield log


def forged(src, dst, handle, src_id=None, auth_id=None, reply_to=0,
           obj=u'forged'):
    """A message from `src` to `dst` whose header claims `src_id` and
    `auth_id` (nodes or IDs; `src`'s own by default)."""
    def ident(x):
        return getattr(x, 'context_id', x)
    src_id = ident(src if src_id is None else src_id)
    auth_id = ident(src_id if auth_id is None else auth_id)
    return Message.pickled(obj, dst_id=ident(dst), handle=handle,
                           src_id=src_id, auth_id=auth_id, reply_to=reply_to)


def nothing_delivered(tree, handles=PRIVILEGED_HANDLES + (OPEN_HANDLE,)):
    return [(node, h) for node in tree[1:] for h in handles
            if node.delivered_to(h)]


def master_route(tree, target):
    stream = tree.M.router._stream_by_id.get(getattr(target, 'context_id',
                                                     target))
    return None if stream is None else stream.protocol.remote_id


# ---------------------------------------------------------------------------
# The router's identity
# ---------------------------------------------------------------------------

def test_router_identity_follows_the_package_globals_by_default(
        monkeypatch):
    router = mitogen.core.Router(memnet.StubBroker())
    assert (router.context_id, router.parent_ids) == (0, [])
    monkeypatch.setattr(mitogen, 'context_id', 7)
    monkeypatch.setattr(mitogen, 'parent_ids', [3, 0])
    assert (router.context_id, router.parent_ids) == (7, [3, 0])


def test_router_identity_given_to_the_constructor_overrides_the_globals():
    router = mitogen.core.Router(memnet.StubBroker(), context_id=5,
                                 parent_ids=(2, 0))
    assert (router.context_id, router.parent_ids) == (5, [2, 0])
    assert mitogen.context_id == 0


def test_message_for_a_router_carries_its_identity():
    router = mitogen.core.Router(memnet.StubBroker(), context_id=5,
                                 parent_ids=[0])
    msg = Message(router=router)
    assert (msg.src_id, msg.auth_id) == (5, 5)
    assert (Message().src_id, Message().auth_id) == (0, 0)


def test_has_parent_authority_reads_the_identity_of_the_receiving_router():
    router = mitogen.core.Router(memnet.StubBroker(), context_id=5,
                                 parent_ids=[2, 0])
    for auth_id, expected in [(5, True), (2, True), (0, True), (3, False)]:
        msg = Message(auth_id=auth_id, router=router)
        assert mitogen.core.has_parent_authority(msg) is expected, auth_id


def test_each_router_of_the_tree_delivers_only_its_own_messages(tree):
    for node in tree[2:]:
        tree.net.call(tree.M, node)
    for node in tree[2:]:
        got = node.delivered_to(OPEN_HANDLE)
        assert [m.dst_id for m in got] == [node.context_id]
        assert [m.src_id for m in got] == [0]


# ---------------------------------------------------------------------------
# Positive controls: messages with authority are accepted
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('handle', PRIVILEGED_HANDLES)
def test_master_authority_is_obeyed_anywhere_in_the_tree(tree, handle):
    for node in tree[2:]:
        tree.net.send(tree.M, forged(tree.M, node, handle))
        assert len(node.delivered_to(handle)) == 1, node


@pytest.mark.parametrize('handle', PRIVILEGED_HANDLES)
def test_a_context_may_command_its_own_child(tree, handle):
    tree.net.send(tree.C, forged(tree.C, tree.D, handle))
    assert [m.auth_id for m in tree.D.delivered_to(handle)] == \
        [tree.C.context_id]


def test_forgery_vehicle_is_well_formed_when_written_honestly(tree):
    # The frame C writes raw is routed like any other when it tells the
    # truth: refusals below are caused by the header, not the framing.
    tree.C.send_up(forged(tree.C, tree.M, OPEN_HANDLE))
    tree.net.pump()
    assert len(tree.M.delivered_to(OPEN_HANDLE)) == 1


@pytest.mark.parametrize('target', 'M P S N U K'.split())
def test_honest_message_to_an_open_handle_is_routed_anywhere(tree, target):
    node = getattr(tree, target)
    tree.net.send(tree.C, forged(tree.C, node, OPEN_HANDLE))
    assert [m.src_id for m in node.delivered_to(OPEN_HANDLE)] == \
        [tree.C.context_id]


# ---------------------------------------------------------------------------
# Honest requests without authority: refused by the target's policy
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('handle', PRIVILEGED_HANDLES)
@pytest.mark.parametrize('target', 'M P S N U K'.split())
def test_request_to_a_non_descendant_is_refused_with_a_dead_reply(
        tree, log, target, handle):
    node = getattr(tree, target)
    recv = tree.net.call(tree.C, node, handle)
    outcome = reply_of(recv)
    assert outcome[0] == 'dead' and 'refused' in outcome[1], outcome
    assert nothing_delivered(tree) == []
    assert log.drops('refused by the policy of handle %d' % (handle,))


# ---------------------------------------------------------------------------
# Forged identity or authority: dropped and logged by the first hop
# ---------------------------------------------------------------------------

# Every context C could claim to be, other than itself and its own child.
CLAIMS = 'M P S N U K'.split()
TARGETS = 'M P C D S N U K'.split()


@pytest.mark.parametrize('handle', PRIVILEGED_HANDLES + (OPEN_HANDLE,))
@pytest.mark.parametrize('claim', CLAIMS)
@pytest.mark.parametrize('target', TARGETS)
def test_forged_authority_is_dropped_by_the_parent(
        tree, log, target, claim, handle):
    tree.C.send_up(forged(tree.C, getattr(tree, target), handle,
                          src_id=getattr(tree, claim), reply_to=1000))
    tree.net.pump()
    assert nothing_delivered(tree) == []
    assert tree.C.delivered == []   # no dead reply reaches the forger
    assert len(log.drops('auth_id')) == 1
    assert tree.P.router.drop_counts == {tree.C.context_id: 1}


@pytest.mark.parametrize('handle', PRIVILEGED_HANDLES + (OPEN_HANDLE,))
@pytest.mark.parametrize('claim', CLAIMS)
@pytest.mark.parametrize('target', TARGETS)
def test_forged_authority_with_honest_src_id_is_dropped_by_the_parent(
        tree, log, target, claim, handle):
    tree.C.send_up(forged(tree.C, getattr(tree, target), handle,
                          auth_id=getattr(tree, claim)))
    tree.net.pump()
    assert nothing_delivered(tree) == []
    assert len(log.drops('auth_id')) == 1


@pytest.mark.parametrize('claim', CLAIMS)
@pytest.mark.parametrize('target', TARGETS)
def test_forged_src_id_with_honest_authority_is_dropped_by_the_parent(
        tree, log, target, claim):
    tree.C.send_up(forged(tree.C, getattr(tree, target), OPEN_HANDLE,
                          src_id=getattr(tree, claim), auth_id=tree.C))
    tree.net.pump()
    assert nothing_delivered(tree) == []
    assert len(log.drops('src_id')) == 1


def test_forgery_by_a_deeper_context_is_dropped_by_its_own_parent(tree, log):
    tree.D.send_up(forged(tree.D, tree.S, CALL_FUNCTION, src_id=tree.M))
    tree.net.pump()
    assert nothing_delivered(tree) == []
    assert tree.C.router.drop_counts == {tree.D.context_id: 1}
    assert tree.P.router.drop_counts == {}


def test_child_claiming_its_parents_authority_towards_itself_is_dropped(
        tree, log):
    tree.C.send_up(forged(tree.C, tree.C, CALL_FUNCTION, src_id=tree.P))
    tree.net.pump()
    assert nothing_delivered(tree) == []
    assert len(log.drops('auth_id')) == 1


def test_unknown_flags_are_dropped(tree, log):
    msg = forged(tree.C, tree.M, OPEN_HANDLE)
    msg.flags = 0x80
    tree.C.send_up(msg)
    tree.net.pump()
    assert nothing_delivered(tree) == []
    assert log.drops('unknown flags')


# ---------------------------------------------------------------------------
# Routes: ADD_ROUTE / DEL_ROUTE only from an immediate child, for IDs it owns
# ---------------------------------------------------------------------------

def routes_intact(tree):
    for node in tree[2:]:
        first_hop = tree.U if node in (tree.U, tree.K) else tree.P
        if master_route(tree, node) != first_hop.context_id:
            return False
    return True


def unused_id_of(tree, owner):
    """The last ID of a block the master gave `owner`: given to nobody."""
    blocks = [b for b in tree.M.router.id_allocator._blocks
              if b[2] == owner.context_id]
    return blocks[0][1] - 1


def add_route_from(tree, node, target_id):
    msg = forged(node, tree.M, ADD_ROUTE, obj=(target_id, u'hijack'))
    if node.parent is tree.M:
        node.send_up(msg)
        tree.net.pump()
    else:
        tree.net.send(node, msg)


@pytest.mark.parametrize('target', ['K', 'S', 'new'])
def test_add_route_from_a_grandchild_to_the_master_is_refused(
        tree, log, target):
    target_id = unused_id_of(tree, tree.P) if target == 'new' else \
        getattr(tree, target).context_id
    add_route_from(tree, tree.C, target_id)
    assert log.drops('only accepted from an immediate child')
    assert routes_intact(tree)
    assert target != 'new' or master_route(tree, target_id) is None


@pytest.mark.parametrize('claim', ['master', 'sibling', 'nephew',
                                   'unallocated', 'siblings-block'])
def test_add_route_from_a_child_for_an_id_it_does_not_own_is_refused(
        tree, log, claim):
    target_id = {
        'master': 0,
        'sibling': tree.U.context_id,
        'nephew': tree.K.context_id,
        'unallocated': tree.M.router.id_allocator.next_id + 5000,
        'siblings-block': unused_id_of(tree, tree.U),
    }[claim]
    add_route_from(tree, tree.P, target_id)
    assert log.drops('ADD_ROUTE')
    assert routes_intact(tree)
    assert claim in ('sibling', 'nephew') or \
        master_route(tree, target_id) is None


def test_add_route_from_a_child_for_an_id_in_its_own_block_is_accepted(
        tree, log):
    target_id = unused_id_of(tree, tree.P)
    add_route_from(tree, tree.P, target_id)
    assert log.drops() == []
    assert master_route(tree, target_id) == tree.P.context_id


def test_route_owner_of_the_master_names_the_child_given_each_id(tree):
    router = tree.M.router
    assert router.route_owner(tree.P.context_id) == 0
    assert router.route_owner(tree.C.context_id) == tree.P.context_id
    assert router.route_owner(tree.K.context_id) == tree.U.context_id
    assert router.route_owner(router.id_allocator.next_id) == 0


def test_route_owner_of_a_router_that_hands_out_no_ids_is_unknown():
    router = mitogen.core.Router(memnet.StubBroker(), context_id=5)
    assert router.route_owner(6) is None


def test_add_route_with_a_forged_source_is_dropped_by_the_parent(tree, log):
    tree.C.send_up(forged(tree.C, tree.M, ADD_ROUTE, src_id=tree.P,
                          obj=(unused_id_of(tree, tree.P), u'hijack')))
    tree.net.pump()
    assert len(log.drops('auth_id')) == 1
    assert routes_intact(tree)


@pytest.mark.parametrize('claim', ['M', 'P', 'S', 'N'])
def test_add_route_from_a_grandchild_to_its_parent_for_a_foreign_id_is_refused(
        tree, log, claim):
    target_id = getattr(tree, claim).context_id
    tree.net.send(tree.C, forged(tree.C, tree.P, ADD_ROUTE,
                                 obj=(target_id, u'hijack')))
    assert log.drops('refused ADD_ROUTE for %r' % (target_id,))
    assert routes_intact(tree)
    assert tree.P.router.stream_by_id(target_id) is not tree.C.down


@pytest.mark.parametrize('target', ['U', 'K', 'S'])
def test_del_route_from_a_grandchild_to_the_master_is_ignored(
        tree, log, target):
    tree.net.send(tree.C, forged(tree.C, tree.M, DEL_ROUTE,
                                 obj=getattr(tree, target).context_id))
    assert log.drops('only accepted from an immediate child')
    assert routes_intact(tree)


@pytest.mark.parametrize('target', ['U', 'K', 'P', 'M'])
def test_del_route_from_a_child_outside_its_subtree_is_ignored(
        tree, log, target):
    node = getattr(tree, target)
    fired = []
    mitogen.core.listen(tree.M.router.context_by_id(node.context_id),
                        'disconnect', lambda: fired.append(True))
    tree.P.send_up(forged(tree.P, tree.M, DEL_ROUTE, obj=node.context_id))
    tree.net.pump()
    assert routes_intact(tree)
    assert fired == []
    assert reply_of(tree.net.call(tree.M, tree.K))[0] == 'none'
    assert len(tree.K.delivered_to(OPEN_HANDLE)) == 1


@pytest.mark.parametrize('target', ['S', 'N', 'P'])
def test_del_route_from_a_grandchild_to_its_parent_outside_its_subtree_is_ignored(
        tree, target):
    node = getattr(tree, target)
    tree.net.send(tree.C, forged(tree.C, tree.P, DEL_ROUTE,
                                 obj=node.context_id))
    assert routes_intact(tree)
    routes = tree.P.router._stream_by_id
    assert routes[tree.S.context_id] is routes[tree.N.context_id] is \
        tree.S.down


def test_del_route_from_a_child_for_its_own_descendant_is_obeyed(tree):
    tree.P.send_up(forged(tree.P, tree.M, DEL_ROUTE, obj=tree.C.context_id))
    tree.net.pump()
    assert master_route(tree, tree.C) is None
    assert master_route(tree, tree.D) == tree.P.context_id


def test_del_route_from_the_parent_for_an_ancestor_is_ignored(tree):
    tree.net.send(tree.M, forged(tree.M, tree.C, DEL_ROUTE,
                                 obj=tree.P.context_id))
    assert tree.C.router.stream_by_id(tree.P.context_id) is tree.C.up


# ---------------------------------------------------------------------------
# The unidirectional rule
# ---------------------------------------------------------------------------

@pytest.fixture
def uni(tree):
    tree.M.router.unidirectional = True
    return tree


def test_unidirectional_master_refuses_messages_between_children(uni, log):
    outcome = reply_of(uni.net.call(uni.C, uni.K))
    assert outcome[0] == 'dead'
    assert 'unidirectional' in outcome[1]
    assert uni.K.delivered == []
    assert log.drops('unidirectional routing forbids')


def test_unidirectional_master_still_routes_up_and_down(uni, log):
    uni.net.call(uni.C, uni.M)
    uni.net.call(uni.M, uni.K)
    assert len(uni.M.delivered_to(OPEN_HANDLE)) == 1
    assert len(uni.K.delivered_to(OPEN_HANDLE)) == 1
    assert log.drops() == []


def test_unidirectional_rule_applies_only_to_the_router_that_has_it(uni):
    # P does not forbid it, so C reaches its sibling through P.
    uni.net.call(uni.C, uni.S)
    assert len(uni.S.delivered_to(OPEN_HANDLE)) == 1


# ---------------------------------------------------------------------------
# Dead replies
# ---------------------------------------------------------------------------

def test_message_to_a_handle_without_handler_gets_a_dead_reply(tree):
    outcome = reply_of(tree.net.call(tree.C, tree.K, handle=5555))
    assert outcome[0] == 'dead'
    assert 'no handler for handle 5555' in outcome[1]


def test_message_to_an_unknown_context_gets_a_dead_reply(tree):
    outcome = reply_of(tree.net.call(tree.C, 999999))
    assert outcome[0] == 'dead'
    assert 'no route to context 999999' in outcome[1]


def test_message_to_a_disconnected_context_gets_a_dead_reply(tree):
    tree.K.up.on_disconnect(tree.net.broker)
    tree.net.pump()
    outcome = reply_of(tree.net.call(tree.C, tree.K))
    assert outcome[0] == 'dead'
    assert 'no route' in outcome[1]


def test_dead_message_is_never_answered(tree, log):
    tree.net.send(tree.C, Message.dead(u'gone', dst_id=tree.K.context_id,
                                       handle=5555, router=tree.C.router))
    assert tree.C.delivered == [] and tree.net.broker.deferred == \
        collections.deque()
    assert log.drops() == []


def test_forged_message_gets_no_dead_reply(tree, log):
    recv = mitogen.core.Receiver(tree.C.router)
    tree.C.send_up(forged(tree.C, tree.K, 5555, src_id=tree.S,
                          reply_to=recv.handle))
    tree.net.pump()
    assert reply_of(recv) == ('none', None)
    assert len(log.drops('auth_id')) == 1


def test_lost_context_wakes_a_receiver_waiting_for_it_far_away(tree):
    # C talked to K, so every hop between them tells C when K is gone.
    tree.net.call(tree.C, tree.K)
    recv = mitogen.core.Receiver(tree.C.router,
                                 respondent=tree.C.router.context_by_id(
                                     tree.K.context_id))
    tree.K.up.on_disconnect(tree.net.broker)
    tree.net.pump()
    outcome = reply_of(recv)
    assert outcome[0] == 'dead'
    assert 'disconnected' in outcome[1]


def test_destinations_remembered_for_a_child_are_bounded(tree):
    tree.P.router._egress_limit = 3
    for dst_id in range(500000, 500010):
        tree.net.call(tree.C, dst_id)
    assert len(tree.C.down.protocol.egress_ids) == 3


def test_message_that_would_go_back_where_it_came_from_is_refused(tree, log):
    # P routes D via C; a frame from C for D would be sent straight back.
    tree.C.send_up(forged(tree.C, tree.D, OPEN_HANDLE, reply_to=1000))
    tree.net.pump()
    assert tree.D.delivered == []
    assert log.drops('would be sent back')
