"""
Specification of :meth:`mitogen.core.ExternalContext.detach`: a child that
detaches is disconnected by its parent without being killed, keeps running
on its own and is reaped when it ends.
"""
import os
import sys
import threading

import mitogen.core
import mitogen.master
from support import service_funcs as funcs
from waiting import wait_for


def test_detached_child_outlives_its_connection(tmp_path, router):
    child = router.local(python_path=sys.executable)
    pid = child.call(os.getpid)
    gone = mitogen.core.Latch()
    mitogen.core.listen(child, 'disconnect', lambda: gone.put(True))
    marker = str(tmp_path / 'marker')
    child.call_no_reply(funcs.detach_then_write, marker, 1.0)
    assert gone.get(timeout=10)
    assert not os.path.exists(marker)
    os.kill(pid, 0)  # disconnected, yet alive
    wait_for(lambda: os.path.exists(marker), timeout=15)
    # It ends on its own and is reaped (no zombie, no reaper thread left).
    wait_for(lambda: not [t for t in threading.enumerate()
                          if t.name == 'mitogen.reap.%d' % (pid,)], timeout=15)


def test_parent_shutdown_does_not_kill_a_detached_child(tmp_path):
    router = mitogen.master.Router()
    try:
        child = router.local(python_path=sys.executable)
        gone = mitogen.core.Latch()
        mitogen.core.listen(child, 'disconnect', lambda: gone.put(True))
        marker = str(tmp_path / 'm')
        child.call_no_reply(funcs.detach_then_write, marker, 1.5)
        assert gone.get(timeout=10)
    finally:
        router.broker.shutdown()
        router.broker.join()
    wait_for(lambda: os.path.exists(marker), timeout=15)
