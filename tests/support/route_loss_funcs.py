"""
Functions tests/test_route_loss.py runs in children (Python 2.7 compatible).
"""
import time

import mitogen.core

_kept = []


@mitogen.core.takes_router
def open_receiver(router):
    """Open a receiver nobody will answer from; return its sender."""
    recv = mitogen.core.Receiver(router)
    _kept.append(recv)
    return recv.to_sender()


@mitogen.core.takes_router
def wait_for_reply_from(sender, router):
    """Send a request to `sender` and wait for the reply; return how the
    wait ended and how long it took."""
    peer = router.context_by_id(sender.context.context_id)
    recv = mitogen.core.Receiver(router, respondent=peer)
    msg = mitogen.core.Message.pickled(u'ping', handle=sender.dst_handle,
                                       reply_to=recv.handle)
    peer.send(msg)
    t0 = time.time()
    try:
        recv.get(timeout=30)
        outcome = u'reply'
    except mitogen.core.ChannelError:
        outcome = u'ChannelError'
    except mitogen.core.TimeoutError:
        outcome = u'timeout'
    return outcome, time.time() - t0
