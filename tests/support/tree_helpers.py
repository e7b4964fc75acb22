"""
Functions that tests/test_trees.py and tests/test_tree_trust.py run in the
contexts of a tree (intermediates and their descendants) to see what each
one knows: its IDs, its routes, what its importer asked for, which
``disconnect`` signals fired, and what reached a mailbox a sibling was
handed a :class:`mitogen.core.Sender` for.  Intermediates may run any
supported Python, so this module stays Python 2.7 compatible.
"""
import importlib
import os
import sys
import time

import mitogen
import mitogen.core


def text(obj):
    """`obj` as text, so Python 2 contexts answer with the same types."""
    if not isinstance(obj, (bytes, mitogen.core.UnicodeType)):
        obj = str(obj)
    return mitogen.core.to_text(obj)


def ids():
    """``(context_id, parent_ids)`` of this context."""
    return mitogen.context_id, list(mitogen.parent_ids)


def pid():
    return os.getpid()


def python_version():
    return text('%d.%d' % sys.version_info[:2])


def sleep(seconds):
    """A call that is still pending when the test breaks the tree."""
    time.sleep(seconds)
    return seconds


@mitogen.core.takes_router
def routes(router):
    """``{target ID: ID at the other end of the stream}`` for every route
    of this context's router: which neighbour a message for each target
    leaves through."""
    return dict((target, stream.protocol.remote_id)
                for target, stream in list(router._stream_by_id.items()))


@mitogen.core.takes_econtext
def importer_requests(econtext):
    """Every GET_MODULE this context's importer sent, in order."""
    return [text(n) for n in econtext.importer.requests]


@mitogen.core.takes_econtext
def import_counting_requests(modname, econtext):
    """Import `modname`; return the GET_MODULE requests that cost."""
    before = len(econtext.importer.requests)
    importlib.import_module(modname)
    return [text(n) for n in econtext.importer.requests[before:]]


def call_in(modname, funcname, *args):
    """Import `modname` and return ``modname.funcname(*args)``."""
    module = importlib.import_module(modname)
    return getattr(module, funcname)(*args)


def read_resource(package, name):
    """``importlib.resources.files(package).joinpath(name).read_bytes()``
    (Python 3.9+)."""
    import importlib.resources as resources
    return resources.files(package).joinpath(name).read_bytes()


@mitogen.core.takes_econtext
def start_child(python_path, econtext):
    """Start a child of this context on its own initiative (no request from
    the master); return its ``(context_id, name)`` as known here."""
    import mitogen.parent
    router = mitogen.parent.upgrade_router(econtext)
    ctx = router.local(python_path=python_path)
    return ctx.context_id, text(ctx.name)


# -- disconnect signals ------------------------------------------------------

_disconnected = {}


@mitogen.core.takes_router
def watch_disconnect(context_id, router):
    """Listen for the ``disconnect`` signal of this context's
    :class:`~mitogen.core.Context` for `context_id`."""
    _disconnected[context_id] = False
    ctx = router.context_by_id(context_id)
    mitogen.core.listen(ctx, 'disconnect',
                        lambda: _disconnected.__setitem__(context_id, True))


def disconnect_fired(context_id):
    """Whether the signal watched by :func:`watch_disconnect` fired."""
    return _disconnected[context_id]


# -- a mailbox a sibling can be handed a Sender for --------------------------

_mailboxes = {}


@mitogen.core.takes_router
def open_mailbox(router):
    """Create a :class:`~mitogen.core.Receiver` here and return its
    :class:`~mitogen.core.Sender`, for the test to hand to another
    context."""
    recv = mitogen.core.Receiver(router)
    _mailboxes[recv.handle] = recv
    return recv.to_sender()


def mailbox_get(handle, timeout):
    """Wait for a message in the mailbox `handle`, acknowledge it (when it
    asks for a reply) and return ``(value, src_id)``, or None on
    timeout."""
    try:
        msg = _mailboxes[handle].get(timeout=timeout)
    except mitogen.core.TimeoutError:
        return None
    if msg.reply_to:
        msg.reply(u'ack')
    return msg.unpickle(), msg.src_id


def mailbox_close(handle):
    _mailboxes.pop(handle).close()


@mitogen.core.takes_router
def send_through(sender, value, timeout, router):
    """Send `value` to `sender`'s mailbox asking for an acknowledgement;
    return ``('reply', value)``, ``('dead', reason)`` or ``('timeout',
    None)``."""
    with mitogen.core.Receiver(router, persist=False) as recv:
        msg = mitogen.core.Message.pickled(value, handle=sender.dst_handle,
                                           reply_to=recv.handle)
        sender.context.send(msg)
        try:
            reply = recv.get(timeout=timeout, throw_dead=False)
        except mitogen.core.TimeoutError:
            return 'timeout', None
        if reply.is_dead:
            return 'dead', text(reply.data.decode('utf-8', 'replace'))
        return 'reply', reply.unpickle()


@mitogen.core.takes_router
def send_and_wait(sender, value, timeout, router):
    """Like :func:`send_through`, but an undeliverable message raises
    :class:`mitogen.core.ChannelError` here, as it would for a caller."""
    with mitogen.core.Receiver(router, persist=False) as recv:
        sender.context.send(mitogen.core.Message.pickled(
            value, handle=sender.dst_handle, reply_to=recv.handle))
        return recv.get(timeout=timeout).unpickle()


@mitogen.core.takes_router
def send_many(sender, count, router):
    """Send `count` values to `sender`'s mailbox, each acknowledged before
    the next leaves; return the acknowledgements."""
    acks = []
    for i in range(count):
        with mitogen.core.Receiver(router, persist=False) as recv:
            sender.context.send(mitogen.core.Message.pickled(
                i, handle=sender.dst_handle, reply_to=recv.handle))
            acks.append(recv.get(timeout=10).unpickle())
    return acks


def serve_mailbox(handle, count, timeout):
    """Acknowledge `count` messages; return their ``(value, src_id)``."""
    return [mailbox_get(handle, timeout) for _ in range(count)]
