"""
Specification of trees of contexts, with real local children: contexts
started through other contexts (``via=``), the routes every ancestor keeps
to them, the context IDs they are given, modules served to them by their
intermediates, and what happens to a subtree when one of its contexts
goes away.

Shape of the trees used below: ``M`` is the master; ``I``, ``I1``, ``I2``
are its children (intermediates); ``G``, ``G1``, ``G2`` are grandchildren;
deeper contexts are named after the seed's ssh1 -> sudo1 -> ssh2 -> sudo2
example or numbered along a chain.  Functions the contexts run live in
:mod:`support.tree_helpers`.
"""
import os
import signal
import sys
import threading
import time

import pytest

import interpreters
import leakcheck
import mitogen.core
import mitogen.master
import mitogen.parent

from support import tree_helpers as th

#: Seconds any single wait in these tests may take before it fails.
WAIT = 10.0
#: Seconds within which a broken tree must fail the calls pending in it.
PROMPT = 10.0


def interp(version):
    """Path of python`version`, or skip the test naming what is missing."""
    return interpreters.require(version).path


@pytest.fixture(scope='module')
def router():
    with mitogen.master.Router() as router:
        yield router


def _shut_down(contexts):
    latches = [ctx.shutdown() for ctx in contexts]
    for latch in latches:
        latch.get(timeout=30)
    for ctx in contexts:
        ctx.shutdown(wait=True)  # disconnected already: waits for the exit


@pytest.fixture
def spawn(router):
    """``spawn(via=None, **kwargs)``: start a local context (through `via`
    when given) on the module's router; every context started directly
    from the master is shut down after the test, taking its subtree with
    it."""
    roots = []

    def start(via=None, **kwargs):
        kwargs.setdefault('python_path', sys.executable)
        if via is None:
            ctx = router.local(**kwargs)
            roots.append(ctx)
        else:
            ctx = router.local(via=via, **kwargs)
        return ctx

    yield start
    _shut_down(roots)


def chain(spawn, paths, first=None):
    """Start a chain of contexts, one per interpreter path in `paths`, each
    through the previous one (the first through `first`, or the master);
    return them in order."""
    contexts = []
    via = first
    for path in paths:
        via = spawn(via=via, python_path=path)
        contexts.append(via)
    return contexts


def gone(pid):
    """True once `pid` no longer runs (gone or a zombie awaiting reaping by
    whoever inherited it)."""
    status = leakcheck.process_status(pid)
    return status is None or status[1] == 'Z'


def wait_until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def route_of(router, context):
    """ID of the neighbour the master sends messages for `context` (or a
    context ID) to, or None when it has no route."""
    stream = router._stream_by_id.get(getattr(context, 'context_id', context))
    return None if stream is None else stream.protocol.remote_id


def watch(context):
    """Record the ``disconnect`` signal of a master-side Context."""
    fired = []
    mitogen.core.listen(context, 'disconnect', lambda: fired.append(True))
    return fired


# ---------------------------------------------------------------------------
# 1. via=: contexts started through other contexts
# ---------------------------------------------------------------------------

def test_grandchild_started_via_a_child_runs_calls(spawn):
    i = spawn()
    g = spawn(via=i)
    g_pid = g.call(th.pid)
    assert g_pid not in (os.getpid(), i.call(th.pid))
    assert g.call(th.ids) == (g.context_id, [i.context_id, 0])


def test_grandchild_is_a_child_process_of_its_intermediate(spawn):
    i = spawn()
    g = spawn(via=i)
    g_pid = g.call(th.pid)
    assert leakcheck.process_status(g_pid)[0] == i.call(th.pid)


def test_mixed_interpreter_chain_runs_each_hop_on_its_own_python(spawn):
    # 3.11 master -> 2.7 child -> 3.6 grandchild -> 3.13 great-grandchild.
    versions = ['2.7', '3.6', '3.13']
    contexts = chain(spawn, [interp(v) for v in versions])
    assert [ctx.call(th.python_version) for ctx in contexts] == versions
    far = contexts[-1]
    assert far.call(th.ids) == (
        far.context_id, [contexts[1].context_id, contexts[0].context_id, 0])


def test_chain_of_ten_hops_reaches_the_far_end_with_every_ancestor_id(
        spawn):
    paths = [interp(v) for v in
             ('3.13', '2.7', '3.6', '3.12', '3.8', '3.10', '2.7', '3.7',
              '3.9', '3.13')]
    contexts = chain(spawn, paths)
    far = contexts[-1]
    expected = [ctx.context_id for ctx in reversed(contexts[:-1])] + [0]
    assert far.call(th.ids) == (far.context_id, expected)
    assert far.call(th.python_version) == '3.13'


def test_proxied_names_are_prefixed_by_the_via_context_name(spawn):
    i = spawn()
    g = spawn(via=i)
    gg = spawn(via=g, name='deep')
    assert i.name == 'local.%d' % i.call(th.pid)
    assert g.name == '%s.local.%d' % (i.name, g.call(th.pid))
    assert gg.name == '%s.deep' % (g.name,)


def test_proxied_context_keeps_its_master_side_name_in_the_routing_table(
        router, spawn):
    i = spawn()
    g = spawn(via=i)
    assert router.context_by_id(g.context_id).name == g.name


def test_intermediate_without_site_packages_gets_transport_through_importer(
        spawn):
    i = spawn(python_path=[interp('3.12'), '-S', '-E'])
    assert i.call(th.call_in, 'sys', 'getrecursionlimit') > 0
    before = i.call(th.importer_requests)
    assert 'mitogen.local' not in before
    assert 'mitogen.parent' not in before
    g = spawn(via=i)
    requested = i.call(th.importer_requests)
    assert 'mitogen.parent' in requested
    assert 'mitogen.local' in requested
    assert g.call(th.ids)[0] == g.context_id


def test_intermediate_on_python_2_7_without_site_packages_starts_children(
        spawn):
    i = spawn(python_path=[interp('2.7'), '-S', '-E'])
    g = spawn(via=i, python_path=interp('3.6'))
    assert g.call(th.python_version) == '3.6'
    assert 'mitogen.local' in i.call(th.importer_requests)


def test_via_an_unknown_context_id_fails_instead_of_hanging(router):
    ghost = router.context_by_id(987654321)
    started = time.monotonic()
    with pytest.raises(mitogen.core.ChannelError):
        router.local(via=ghost)
    assert time.monotonic() - started < PROMPT


def test_many_grandchildren_started_at_once_through_one_intermediate(
        spawn):
    i = spawn()
    results, errors = [], []

    def start():
        try:
            g = spawn(via=i)
            results.append((g.context_id, g.call(th.pid)))
        except Exception as e:  # reported below
            errors.append(e)
    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(set(r[0] for r in results)) == len(set(r[1] for r in results)) == 6


def test_context_started_by_a_child_on_its_own_is_reachable_from_the_master(
        router, spawn):
    i = spawn()
    context_id, name = i.call(th.start_child, sys.executable)
    # The child announced it with ADD_ROUTE before its call returned.
    assert route_of(router, context_id) == i.context_id
    ctx = router.context_by_id(context_id)
    assert ctx.name == '%s.%s' % (i.name, name)
    assert ctx.call(th.ids) == (context_id, [i.context_id, 0])


def test_shutdown_of_the_root_of_a_ten_hop_chain_ends_every_process(
        router):
    contexts = []
    via = None
    for _ in range(10):
        via = router.local(via=via, python_path=sys.executable) if via \
            else router.local(python_path=sys.executable)
        contexts.append(via)
    pids = [ctx.call(th.pid) for ctx in contexts]
    contexts[0].shutdown(wait=True)
    assert [pid for pid in pids if not gone(pid)] == []
    assert [ctx for ctx in contexts if route_of(router, ctx) is not None] \
        == []


# ---------------------------------------------------------------------------
# 2. Routing: ID blocks, ADD_ROUTE, DEL_ROUTE, siblings
# ---------------------------------------------------------------------------

def blocks_of(router, context):
    return [b for b in router.id_allocator._blocks if b[2] == context.context_id]


def test_intermediate_receives_a_block_of_ids_from_the_master(router, spawn):
    i = spawn()
    assert blocks_of(router, i) == []
    g = spawn(via=i)
    [(start, end, owner)] = blocks_of(router, i)
    assert end - start == mitogen.parent.ID_BLOCK_SIZE
    assert start <= g.context_id < end
    assert router.id_allocator.owner_of(g.context_id) == i.context_id


def test_second_grandchild_of_an_intermediate_costs_no_new_id_block(
        router, spawn):
    i = spawn()
    g1 = spawn(via=i)
    blocks = list(router.id_allocator._blocks)
    g2 = spawn(via=i)
    assert router.id_allocator._blocks == blocks
    assert g2.context_id == g1.context_id + 1


def test_ids_given_out_by_intermediates_never_collide(router, spawn):
    i1, i2 = spawn(), spawn()
    seen = [spawn(via=i).context_id for i in (i1, i2, i1, i2)]
    seen.append(spawn().context_id)
    assert len(set(seen)) == len(seen)


@pytest.fixture(scope='module')
def seed_chain():
    """The seed's example: master -> ssh1 -> sudo1 -> ssh2 -> sudo2, built
    with local contexts (so only the routing is exercised)."""
    with mitogen.master.Router() as router:
        ssh1 = router.local(name='ssh1')
        sudo1 = router.local(via=ssh1, name='sudo1')
        ssh2 = router.local(via=sudo1, name='ssh2')
        sudo2 = router.local(via=ssh2, name='sudo2')
        try:
            yield router, ssh1, sudo1, ssh2, sudo2
        finally:
            ssh1.shutdown(wait=True)


def test_seed_chain_names_follow_the_path(seed_chain):
    _, ssh1, sudo1, ssh2, sudo2 = seed_chain
    assert [c.name for c in (ssh1, sudo1, ssh2, sudo2)] == [
        'ssh1', 'ssh1.sudo1', 'ssh1.sudo1.ssh2', 'ssh1.sudo1.ssh2.sudo2']


def test_seed_chain_ssh1_routes_ssh2_and_sudo2_through_sudo1(seed_chain):
    _, ssh1, sudo1, ssh2, sudo2 = seed_chain
    routes = ssh1.call(th.routes)
    assert routes[ssh2.context_id] == sudo1.context_id
    assert routes[sudo2.context_id] == sudo1.context_id
    assert routes[sudo1.context_id] == sudo1.context_id


def test_seed_chain_sudo1_routes_sudo2_through_ssh2(seed_chain):
    _, ssh1, sudo1, ssh2, sudo2 = seed_chain
    routes = sudo1.call(th.routes)
    assert routes[sudo2.context_id] == ssh2.context_id
    assert routes[ssh2.context_id] == ssh2.context_id
    # Its ancestors are reached through its parent stream, not a route.
    assert ssh1.context_id in routes and 0 not in routes


def test_seed_chain_master_routes_everything_through_ssh1(seed_chain):
    router, ssh1, sudo1, ssh2, sudo2 = seed_chain
    for ctx in (ssh1, sudo1, ssh2, sudo2):
        assert route_of(router, ctx) == ssh1.context_id


def test_seed_chain_master_reaches_every_context(seed_chain):
    _, ssh1, sudo1, ssh2, sudo2 = seed_chain
    for ctx in (ssh1, sudo1, ssh2, sudo2):
        assert ctx.call(th.ids)[0] == ctx.context_id


def test_seed_chain_far_end_reaches_the_master_through_every_hop(seed_chain):
    _, ssh1, sudo1, ssh2, sudo2 = seed_chain
    assert sudo2.call(th.ids) == (
        sudo2.context_id,
        [ssh2.context_id, sudo1.context_id, ssh1.context_id, 0])
    # The reply needs no route in sudo2 beyond its parent stream.
    assert set(sudo2.call(th.routes)) == {ssh2.context_id}


def test_departed_context_loses_its_route_at_every_ancestor(spawn, router):
    a = spawn()
    b = spawn(via=a)
    c = spawn(via=b)
    assert c.context_id in a.call(th.routes)
    c.shutdown(wait=True)
    assert route_of(router, c) is None
    assert c.context_id not in a.call(th.routes)
    assert c.context_id not in b.call(th.routes)
    # Its siblings' and ancestors' routes stay.
    assert route_of(router, b) == a.context_id
    assert b.call(th.ids)[0] == b.context_id


def test_departed_context_fires_disconnect_at_every_ancestor(spawn):
    a = spawn()
    b = spawn(via=a)
    c = spawn(via=b)
    fired = watch(c)
    for ctx in (a, b):
        ctx.call(th.watch_disconnect, c.context_id)
    c.shutdown(wait=True)
    assert fired == [True]
    assert a.call(th.disconnect_fired, c.context_id) is True
    assert b.call(th.disconnect_fired, c.context_id) is True


def test_departed_context_is_gone_when_its_shutdown_returns(spawn):
    a = spawn()
    b = spawn(via=a)
    c = spawn(via=b)
    c_pid = c.call(th.pid)
    c.shutdown(wait=True)
    assert gone(c_pid)


def test_message_for_an_id_unknown_below_a_stale_route_gets_a_dead_reply(
        router, spawn):
    # The master still routes an ID through I (as it does for a context
    # whose DEL_ROUTE is on its way) but I knows no such context.
    i = spawn()
    ghost = router.id_allocator.allocate()
    router.add_route(ghost, router._stream_by_id[i.context_id])
    try:
        ctx = router.context_by_id(ghost)
        started = time.monotonic()
        with pytest.raises(mitogen.core.ChannelError):
            ctx.send_await(mitogen.core.Message(handle=4242),
                           deadline=PROMPT * 3)
        assert time.monotonic() - started < PROMPT
    finally:
        router._stream_by_id.pop(ghost, None)


def test_calling_a_departed_grandchild_fails_at_once(spawn):
    i = spawn()
    g = spawn(via=i)
    g.shutdown(wait=True)
    started = time.monotonic()
    with pytest.raises(mitogen.core.ChannelError):
        g.call(th.pid)
    assert time.monotonic() - started < PROMPT


def hand_mailbox(receiver_ctx):
    """Open a mailbox in `receiver_ctx`; return its Sender."""
    sender = receiver_ctx.call(th.open_mailbox)
    assert sender.context.context_id == receiver_ctx.context_id
    return sender


def test_siblings_message_each_other_through_their_parent_only(
        router, spawn):
    i = spawn()
    a = spawn(via=i)
    b = spawn(via=i)
    sender = hand_mailbox(a)
    count = 20
    to_i = router._stream_by_id[i.context_id].protocol
    before = to_i.recv_count
    served = a.call_async(th.serve_mailbox, sender.dst_handle, count, WAIT)
    assert b.call(th.send_many, sender, count) == ['ack'] * count
    got = served.get(timeout=WAIT).unpickle()
    assert got == [(n, b.context_id) for n in range(count)]
    # 20 messages and 20 acknowledgements passed between the siblings; the
    # master saw at most the two call replies (and perhaps a log record).
    assert to_i.recv_count - before < count


def test_cousins_message_each_other_through_the_master(spawn):
    i1, i2 = spawn(), spawn()
    a = spawn(via=i1)
    b = spawn(via=i2)
    sender = hand_mailbox(a)
    served = a.call_async(th.mailbox_get, sender.dst_handle, WAIT)
    assert b.call(th.send_through, sender, u'hello', WAIT) == \
        ('reply', 'ack')
    assert served.get(timeout=WAIT).unpickle() == ('hello', b.context_id)


def test_grandchild_messages_its_uncle(spawn):
    i1, i2 = spawn(), spawn()
    g = spawn(via=i1)
    sender = hand_mailbox(i2)
    served = i2.call_async(th.mailbox_get, sender.dst_handle, WAIT)
    assert g.call(th.send_through, sender, 42, WAIT) == ('reply', 'ack')
    assert served.get(timeout=WAIT).unpickle() == (42, g.context_id)


@pytest.fixture
def one_way_router():
    with mitogen.master.Router() as router:
        router.unidirectional = True
        yield router


def one_way_family(router):
    """I with children A and B, on a unidirectional router."""
    i = router.local(python_path=sys.executable)
    a = router.local(via=i, python_path=sys.executable)
    b = router.local(via=i, python_path=sys.executable)
    return i, a, b


def test_unidirectional_sibling_message_gets_a_dead_reply_naming_the_parent(
        one_way_router):
    i, a, b = one_way_family(one_way_router)
    try:
        sender = hand_mailbox(a)
        started = time.monotonic()
        outcome = b.call(th.send_through, sender, u'hello', 30)
        assert time.monotonic() - started < PROMPT
        assert outcome[0] == 'dead', outcome
        assert outcome[1] == ('unidirectional routing forbids messages '
                              'between children of context %d'
                              % (i.context_id,))
        assert a.call(th.mailbox_get, sender.dst_handle, 0.5) is None
    finally:
        i.shutdown(wait=True)


def test_unidirectional_sibling_send_raises_channel_error_at_once(
        one_way_router):
    i, a, b = one_way_family(one_way_router)
    try:
        sender = hand_mailbox(a)
        started = time.monotonic()
        with pytest.raises(mitogen.core.CallError) as info:
            b.call(th.send_and_wait, sender, u'hello', 30)
        assert time.monotonic() - started < PROMPT
        assert info.value.type_name == 'mitogen.core.ChannelError'
        assert 'unidirectional' in info.value.remote_message
    finally:
        i.shutdown(wait=True)


def test_unidirectional_cousin_message_is_refused_by_the_master(
        one_way_router, caplog):
    router = one_way_router
    i1 = router.local(python_path=sys.executable)
    i2 = router.local(python_path=sys.executable)
    try:
        a = router.local(via=i1, python_path=sys.executable)
        b = router.local(via=i2, python_path=sys.executable)
        sender = hand_mailbox(a)
        outcome = b.call(th.send_through, sender, u'hello', 30)
        assert outcome == ('dead', 'unidirectional routing forbids messages '
                           'between children of context 0')
        assert any('unidirectional' in r.getMessage() and
                   r.name == 'mitogen' for r in caplog.records)
    finally:
        _shut_down([i1, i2])


def test_unidirectional_router_still_carries_calls_up_and_down_the_tree(
        one_way_router):
    i, a, b = one_way_family(one_way_router)
    try:
        gg = one_way_router.local(via=a, python_path=sys.executable)
        assert gg.call(th.ids) == (
            gg.context_id, [a.context_id, i.context_id, 0])
        assert b.call(th.ids)[0] == b.context_id
    finally:
        i.shutdown(wait=True)


# ---------------------------------------------------------------------------
# 3. Module forwarding through intermediates
# ---------------------------------------------------------------------------

SMALL_PACKAGE = {
    'treepkg/__init__.py': 'from . import base\n',
    'treepkg/base.py': 'VALUE = 40\n',
    'treepkg/extra.py': '''
        from . import base
        def answer():
            return base.VALUE + 2
    ''',
}


def big_package(count):
    """A package of `count` modules importing each other in chains."""
    files = {'bigtree/__init__.py': '''
        from . import m00
        def total():
            import bigtree
            return sum(getattr(bigtree, 'm%02d' % i).VALUE
                       for i in range({count}))
    '''.replace('{count}', str(count))}
    for i in range(count):
        lines = []
        if i + 1 < count:
            lines.append('from . import m%02d' % (i + 1))
        if i + 2 < count:
            lines.append('import bigtree.m%02d' % (i + 2))
        lines.append('VALUE = %d' % i)
        files['bigtree/m%02d.py' % i] = '\n'.join(lines) + '\n'
    return files


def warm(ctx):
    """Import the helper module in `ctx`, so later requests are the
    test's own."""
    ctx.call(th.pid)


def test_second_grandchild_importing_a_package_costs_the_master_nothing(
        router, spawn, master_site):
    master_site(SMALL_PACKAGE)
    i = spawn()
    warm(i)
    g1 = spawn(via=i)
    before = router.responder.get_module_count
    assert g1.call(th.call_in, 'treepkg.extra', 'answer') == 42
    first = router.responder.get_module_count - before
    assert first >= 1
    before = router.responder.get_module_count
    g2 = spawn(via=i)
    assert g2.call(th.call_in, 'treepkg.extra', 'answer') == 42
    assert router.responder.get_module_count - before == 0


def test_intermediate_asks_upward_once_per_module_for_its_grandchildren(
        spawn, master_site):
    master_site(SMALL_PACKAGE)
    i = spawn()
    warm(i)
    children = [spawn(via=i) for _ in range(3)]
    for g in children:
        assert g.call(th.call_in, 'treepkg.extra', 'answer') == 42
    asked = [n for n in i.call(th.importer_requests)
             if n.startswith('treepkg')]
    assert sorted(asked) == sorted(set(asked))
    assert 'treepkg.extra' in asked
    # And the grandchildren each asked their own parent.
    for g in children:
        assert 'treepkg.extra' in g.call(th.importer_requests)


def test_preloading_works_through_an_intermediate(spawn, master_site):
    master_site(big_package(24))
    i = spawn()
    g = spawn(via=i)
    warm(g)
    requests = g.call(th.import_counting_requests, 'bigtree')
    assert g.call(th.call_in, 'bigtree', 'total') == sum(range(24))
    assert 1 <= len(requests) <= 3, requests
    asked_by_i = [n for n in i.call(th.importer_requests)
                  if n.startswith('bigtree')]
    assert 1 <= len(asked_by_i) <= 3, asked_by_i


def test_preloading_works_two_hops_down(spawn, master_site):
    master_site(big_package(24))
    i = spawn()
    g = spawn(via=i)
    gg = spawn(via=g)
    warm(gg)
    requests = gg.call(th.import_counting_requests, 'bigtree')
    assert 1 <= len(requests) <= 3, requests
    assert gg.call(th.call_in, 'bigtree', 'total') == sum(range(24))


def test_forward_modules_delivers_a_module_to_a_grandchild_before_it_asks(
        router, spawn, master_site):
    master_site({'pushed_mod.py': 'def value():\n    return u"pushed"\n'})
    i = spawn()
    g = spawn(via=i)
    warm(g)
    router.responder.forward_modules(g, ['pushed_mod'])
    assert g.call(th.import_counting_requests, 'pushed_mod') == []
    assert g.call(th.call_in, 'pushed_mod', 'value') == 'pushed'


def test_forward_modules_delivers_a_package_submodule_with_its_package(
        router, spawn, master_site):
    master_site(SMALL_PACKAGE)
    i = spawn()
    g = spawn(via=i)
    warm(g)
    router.responder.forward_modules(g, ['treepkg.extra'])
    assert g.call(th.import_counting_requests, 'treepkg.extra') == []
    assert g.call(th.call_in, 'treepkg.extra', 'answer') == 42


def test_forward_modules_to_a_direct_child(router, spawn, master_site):
    master_site({'pushed_direct.py': 'VALUE = 7\n'})
    c = spawn()
    warm(c)
    router.responder.forward_modules(c, ['pushed_direct'])
    assert c.call(th.import_counting_requests, 'pushed_direct') == []


def test_missing_module_fails_a_grandchild_import_promptly(
        router, spawn):
    i = spawn()
    g1 = spawn(via=i)
    name = 'no_such_module_anywhere_%d' % (os.getpid(),)
    started = time.monotonic()
    with pytest.raises(mitogen.core.CallError) as info:
        g1.call(th.call_in, name, 'f')
    assert time.monotonic() - started < PROMPT
    assert info.value.type_name in ('builtins.ModuleNotFoundError',
                                    'exceptions.ImportError',
                                    'builtins.ImportError')
    before = router.responder.get_module_count
    g2 = spawn(via=i)
    with pytest.raises(mitogen.core.CallError):
        g2.call(th.call_in, name, 'f')
    assert router.responder.get_module_count - before == 0


def test_grandchild_reads_package_resources_through_its_intermediate(
        spawn, master_site):
    master_site({'respkg/__init__.py': '',
                 'respkg/data.txt': 'resource via a hop\n'})
    i = spawn()
    g = spawn(via=i)
    assert g.call(th.read_resource, 'respkg', 'data.txt') == \
        b'resource via a hop\n'


def test_great_grandchild_reads_package_resources_through_two_hops(
        spawn, master_site):
    master_site({'respkg2/__init__.py': '',
                 'respkg2/data.txt': 'two hops\n'})
    i = spawn()
    g = spawn(via=i)
    gg = spawn(via=g)
    assert gg.call(th.read_resource, 'respkg2', 'data.txt') == b'two hops\n'


def test_large_binary_resource_arrives_intact_through_two_hops(
        spawn, master_site):
    base = master_site({'respkg3/__init__.py': ''})
    payload = os.urandom(300000)
    (base / 'respkg3' / 'blob.bin').write_bytes(payload)
    i = spawn()
    g = spawn(via=i)
    gg = spawn(via=g)
    assert gg.call(th.read_resource, 'respkg3', 'blob.bin') == payload


def test_missing_resource_raises_file_not_found_through_a_hop(
        spawn, master_site):
    master_site({'respkg4/__init__.py': ''})
    i = spawn()
    g = spawn(via=i)
    with pytest.raises(mitogen.core.CallError) as info:
        g.call(th.read_resource, 'respkg4', 'absent.txt')
    assert info.value.type_name == 'builtins.FileNotFoundError'


# ---------------------------------------------------------------------------
# Connection errors through an intermediate
# ---------------------------------------------------------------------------

def test_child_that_exits_at_once_raises_eof_error_through_a_hop(spawn):
    i = spawn()
    with pytest.raises(mitogen.parent.EofError) as info:
        spawn(via=i, python_path=[sys.executable, '-c',
                                  'import sys; sys.exit("gone early")'])
    assert i.name in str(info.value)
    assert 'gone early' in str(info.value)


def test_child_that_never_starts_raises_timeout_error_through_a_hop(spawn):
    i = spawn()
    started = time.monotonic()
    with pytest.raises(mitogen.core.TimeoutError) as info:
        spawn(via=i, connect_timeout=1,
              python_path=[sys.executable, '-c',
                           'import time; time.sleep(30)'])
    assert time.monotonic() - started < 10
    assert i.name in str(info.value)


def test_unstartable_program_raises_stream_error_through_a_hop(spawn):
    i = spawn()
    with pytest.raises(mitogen.core.StreamError) as info:
        spawn(via=i, python_path='/nonexistent/python')
    assert '/nonexistent/python' in str(info.value)


def test_intermediate_survives_a_failed_connection_and_starts_the_next(
        spawn):
    i = spawn()
    with pytest.raises(mitogen.core.StreamError):
        spawn(via=i, python_path='/nonexistent/python')
    g = spawn(via=i)
    assert g.call(th.ids) == (g.context_id, [i.context_id, 0])


# ---------------------------------------------------------------------------
# 5. Disconnects propagate
# ---------------------------------------------------------------------------

@pytest.fixture
def doomed(router):
    """I (its own Python) with grandchild G and great-grandchild GG, and
    their pids; whatever is left of them is shut down afterwards."""
    i = router.local(python_path=sys.executable)
    g = router.local(via=i, python_path=sys.executable)
    gg = router.local(via=g, python_path=sys.executable)
    pids = dict((ctx, ctx.call(th.pid)) for ctx in (i, g, gg))
    yield i, g, gg, pids
    i.shutdown(wait=True)


def test_killing_an_intermediate_fails_every_call_pending_below_it(doomed):
    i, g, gg, pids = doomed
    pending = [ctx.call_async(th.sleep, 60) for ctx in (i, g, gg)]
    os.kill(pids[i], signal.SIGKILL)
    started = time.monotonic()
    for recv in pending:
        with pytest.raises(mitogen.core.ChannelError):
            recv.get(timeout=PROMPT).unpickle()
    assert time.monotonic() - started < PROMPT


def test_killing_an_intermediate_ends_every_descendant_process(doomed):
    i, g, gg, pids = doomed
    busy = [ctx.call_async(th.sleep, 60) for ctx in (g, gg)]
    os.kill(pids[i], signal.SIGKILL)
    for ctx in (i, g, gg):
        assert wait_until(lambda: gone(pids[ctx])), ctx
    for recv in busy:
        with pytest.raises(mitogen.core.ChannelError):
            recv.get(timeout=PROMPT)


def test_killing_an_intermediate_removes_every_route_below_it(
        router, doomed):
    i, g, gg, pids = doomed
    for ctx in (i, g, gg):
        assert route_of(router, ctx) == i.context_id
    os.kill(pids[i], signal.SIGKILL)
    assert wait_until(lambda: all(route_of(router, ctx) is None
                                  for ctx in (i, g, gg)), PROMPT)


def test_killing_an_intermediate_fires_disconnect_on_every_affected_context(
        router, doomed):
    i, g, gg, pids = doomed
    fired = dict((ctx, watch(ctx)) for ctx in (i, g, gg))
    os.kill(pids[i], signal.SIGKILL)
    assert wait_until(lambda: all(fired.values()), PROMPT), fired
    assert all(f == [True] for f in fired.values())


def test_killing_a_grandchild_intermediate_spares_its_parent(router, doomed):
    i, g, gg, pids = doomed
    fired = dict((ctx, watch(ctx)) for ctx in (i, g, gg))
    i.call(th.watch_disconnect, gg.context_id)
    os.kill(pids[g], signal.SIGKILL)
    assert wait_until(lambda: fired[g] and fired[gg], PROMPT)
    assert wait_until(lambda: gone(pids[gg]))
    assert fired[i] == []
    assert i.call(th.disconnect_fired, gg.context_id) is True
    assert gg.context_id not in i.call(th.routes)
    assert route_of(router, gg) is None and route_of(router, g) is None
    assert route_of(router, i) == i.context_id


def test_killing_a_grandchild_intermediate_fails_calls_pending_below_it(
        doomed):
    i, g, gg, pids = doomed
    pending = [ctx.call_async(th.sleep, 60) for ctx in (g, gg)]
    os.kill(pids[g], signal.SIGKILL)
    started = time.monotonic()
    for recv in pending:
        with pytest.raises(mitogen.core.ChannelError):
            recv.get(timeout=PROMPT).unpickle()
    assert time.monotonic() - started < PROMPT
    assert i.call(th.ids)[0] == i.context_id


def test_killing_a_leaf_grandchild_fails_its_pending_call_and_spares_the_rest(
        router, doomed):
    i, g, gg, pids = doomed
    pending = gg.call_async(th.sleep, 60)
    os.kill(pids[gg], signal.SIGKILL)
    with pytest.raises(mitogen.core.ChannelError):
        pending.get(timeout=PROMPT).unpickle()
    # The call may fail first through a dead reply from the intermediate;
    # the route goes once the intermediate has reaped the process.
    assert wait_until(lambda: route_of(router, gg) is None)
    assert gg.context_id not in g.call(th.routes)
    assert g.call(th.ids)[0] == g.context_id


def test_disconnecting_a_grandchild_spares_its_intermediate(router, doomed):
    i, g, gg, pids = doomed
    fired = dict((ctx, watch(ctx)) for ctx in (i, g, gg))
    router.disconnect(g)
    assert wait_until(lambda: fired[g] and fired[gg], PROMPT)
    assert wait_until(lambda: gone(pids[g]) and gone(pids[gg]))
    assert fired[i] == []
    assert i.call(th.ids)[0] == i.context_id
    assert route_of(router, i) == i.context_id


def test_disconnecting_a_great_grandchild_spares_every_context_above_it(
        router, doomed):
    i, g, gg, pids = doomed
    pending = gg.call_async(th.sleep, 60)
    router.disconnect(gg)
    with pytest.raises(mitogen.core.ChannelError):
        pending.get(timeout=PROMPT).unpickle()
    assert wait_until(lambda: gone(pids[gg]))
    assert g.call(th.ids)[0] == g.context_id
    assert gg.context_id not in g.call(th.routes)


def test_shutdown_of_an_intermediate_returns_after_its_whole_subtree_exited(
        doomed):
    i, g, gg, pids = doomed
    i.shutdown(wait=True)
    assert [ctx for ctx in (i, g, gg) if not gone(pids[ctx])] == []


def test_shutdown_of_a_grandchild_returns_after_its_subtree_exited(
        router, doomed):
    i, g, gg, pids = doomed
    g.shutdown(wait=True)
    assert [ctx for ctx in (g, gg) if not gone(pids[ctx])] == []
    assert route_of(router, g) is None and route_of(router, gg) is None
    assert i.call(th.ids)[0] == i.context_id


def test_shutdown_of_an_intermediate_with_busy_descendants_still_ends_them(
        doomed):
    i, g, gg, pids = doomed
    busy = [ctx.call_async(th.sleep, 60) for ctx in (g, gg)]
    started = time.monotonic()
    i.shutdown(wait=True)
    assert time.monotonic() - started < 20
    assert [ctx for ctx in (i, g, gg) if not gone(pids[ctx])] == []
    for recv in busy:
        with pytest.raises(mitogen.core.ChannelError):
            recv.get(timeout=PROMPT)


@pytest.mark.parametrize('frozen', ['child', 'grandchild'])
def test_shutdown_of_an_intermediate_with_a_frozen_descendant_still_ends_it(
        doomed, frozen):
    i, g, gg, pids = doomed
    victim = g if frozen == 'child' else gg
    os.kill(pids[victim], signal.SIGSTOP)
    try:
        i.shutdown(wait=True)
        assert [ctx for ctx in (i, g, gg) if not gone(pids[ctx])] == []
    finally:
        for ctx in (g, gg):
            if not gone(pids[ctx]):
                os.kill(pids[ctx], signal.SIGKILL)
                wait_until(lambda: gone(pids[ctx]))
