"""
Functions that tests/test_trust.py runs in children to send messages the
trust chain must stop: requests to run code in the master or a sibling,
and messages with forged ``src_id`` / ``auth_id`` header fields.

Forged messages are written straight onto the stream to the parent
(``router.parent_stream.protocol.send``), bypassing whatever the child's
own router might stamp or check, so the parent sees exactly the header a
malicious child could write. They run in children of any Python version,
so this module stays Python 2.7 compatible.
"""
import zlib

import mitogen.core


def create_file(path):
    """The code a forged CALL_FUNCTION tries to run: leaves `path` behind
    as evidence that it ran."""
    with open(path, 'w') as f:
        f.write('ran')
    return path


def call_request(path):
    """Body of a CALL_FUNCTION message asking for ``create_file(path)``:
    ``(chain_id, module, class, function, args, kwargs)``."""
    return (None, __name__, None, 'create_file', (path,),
            mitogen.core.Kwargs({}))


def load_module_request(fullname, value):
    """Body of a LOAD_MODULE message for a module ``fullname`` whose source
    sets ``VALUE = value``: ``(fullname, pkg_present, path, compressed
    source, related)``."""
    source = ('VALUE = %r\n' % (value,)).encode('utf-8')
    return (fullname, None, fullname + '.py',
            mitogen.core.Blob(zlib.compress(source)), [])


def forward_log_body(text):
    """Body of a FORWARD_LOG message: ``name\\0level\\0text``."""
    return ('trust_forge\x0040\x00' + text).encode('utf-8')


def describe_reply(recv, timeout):
    """Wait for one message on `recv`: ``('dead', reason)``,
    ``('reply', value)`` or ``('timeout', None)``."""
    try:
        msg = recv.get(timeout=timeout, throw_dead=False)
    except mitogen.core.TimeoutError:
        return 'timeout', None
    if msg.is_dead:
        return 'dead', mitogen.core.to_text(msg.data)
    return 'reply', msg.unpickle(throw=False)


@mitogen.core.takes_router
def send(dst_id, handle, obj=None, data=None, src_id=None, auth_id=None,
         wait=None, direct=True, router=None):
    """Send a message from this child and return what became of it.

    :param obj: body to pickle, or None to send `data` (bytes) as is.
    :param src_id: header ``src_id``; this context's ID when None.
    :param auth_id: header ``auth_id``; this context's ID when None.
    :param wait: seconds to wait for a reply on a fresh handle (the
        message's ``reply_to``); None sends without ``reply_to`` and
        returns ``('sent', None)``.
    :param direct: write onto the parent stream, bypassing this router;
        otherwise send through ``router.route()``.
    """
    me = mitogen.context_id
    if obj is not None:
        msg = mitogen.core.Message.pickled(obj)
    else:
        msg = mitogen.core.Message(data=data or b'')
    msg.dst_id = dst_id
    msg.handle = handle
    msg.src_id = me if src_id is None else src_id
    msg.auth_id = me if auth_id is None else auth_id
    msg.reply_to = 0
    recv = None
    if wait is not None:
        recv = mitogen.core.Receiver(router, persist=False)
        msg.reply_to = recv.handle
    try:
        if direct:
            router.parent_stream.protocol.send(msg)
        else:
            router.route(msg)
        if recv is None:
            return 'sent', None
        return describe_reply(recv, wait)
    finally:
        if recv is not None:
            recv.close()


def try_import(fullname):
    """Import `fullname`: ``('imported', module.VALUE)`` or
    ``('ImportError', text)``."""
    try:
        module = __import__(fullname)
    except ImportError as e:
        return 'ImportError', str(e)
    return 'imported', getattr(module, 'VALUE', None)


def context_id():
    return mitogen.context_id


@mitogen.core.takes_router
def log_every_drop(router=None):
    """Log every message this context drops in full: the trust tests look
    for the report of each drop, which the rate limit of a long run of
    forgeries from one stream would otherwise fold into a summary."""
    router.drop_log_burst = 1 << 30
