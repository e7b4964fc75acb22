"""
Specification of how a context learns that a context it was talking to
through its parent is gone: DEL_ROUTE travels up the tree, and a parent
also tells each child whose messages it forwarded to the lost context, so
a reply the child waits for fails at once instead of never coming.
"""
import os
import signal
import sys
import time

import mitogen.core

from support import route_loss_funcs as funcs
from waiting import call


def test_sibling_waiting_for_a_killed_context_fails_promptly(router):
    waiter = router.local(python_path=sys.executable)
    victim = router.local(python_path=sys.executable)
    sender = call(victim, funcs.open_receiver)
    victim_pid = call(victim, os.getpid)
    pending = waiter.call_async(funcs.wait_for_reply_from, sender)
    # Let the request reach the victim through the master first.
    time.sleep(0.5)
    os.kill(victim_pid, signal.SIGKILL)
    outcome, took = pending.get(timeout=30).unpickle()
    assert outcome == 'ChannelError'
    assert took < 10


def test_child_ignores_del_route_for_itself_or_an_ancestor(router):
    child = router.local(python_path=sys.executable)
    # The master telling a child that the master or the child itself is
    # gone must change nothing: the child still answers.
    for target in (0, child.context_id):
        child.send(mitogen.core.Message.pickled(
            target, handle=mitogen.core.DEL_ROUTE))
    assert call(child, os.getpid) > 0
