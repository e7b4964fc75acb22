"""
A program that attaches to a running tree through :mod:`mitogen.unix`, for
tests/test_unix.py. It runs as a separate process (possibly as another
user, with another Python), and prints one JSON object on stdout.

Usage: ``python unix_client.py PATH ACTION [ARG...]``; ``support`` must be
importable (``tests/`` on ``PYTHONPATH``) for the actions that call
functions.

Actions:

info
    the identity the listener gave this process.
call_parent, call_child
    call :func:`support.unix_funcs.identity` in the listener's context, or
    in the context its ``get_child()`` returns.
call_master
    call ``os.getpid`` in the master (context 0); a refusal is reported as
    ``{"refused": message}``.
forge HANDLE OTHER_ID
    send three messages to ``HANDLE`` in the listener's context: one
    claiming ``auth_id`` OTHER_ID, one claiming ``src_id`` OTHER_ID, then
    an honest one.
hold
    print the ``info`` object at once, then wait until stdin closes.
call_parent_with_keywords
    connect as ansible_mitogen does, with keyword arguments and a broker
    of its own, call :func:`support.unix_funcs.identity` in the listener's
    context, then disconnect.

A refused connection prints ``{"error": ..., "message": ...}`` and exits 2.
"""
import json
import os
import sys

import mitogen
import mitogen.core
import mitogen.unix


def info(router, parent, args):
    return {
        'context_id': mitogen.context_id,
        'parent_id': mitogen.parent_id,
        'parent_ids': list(mitogen.parent_ids),
        'is_master': mitogen.is_master,
        'parent_context_id': parent.context_id,
        'parent_name': parent.name,
    }


def call_parent(router, parent, args):
    from support import unix_funcs
    return {'identity': list(parent.call(unix_funcs.identity))}


def call_child(router, parent, args):
    from support import unix_funcs
    child = parent.call(unix_funcs.get_child)
    return {'identity': list(child.call(unix_funcs.identity)),
            'name': child.name}


def call_master(router, parent, args):
    master = router.context_by_id(0)
    try:
        return {'pid': master.call(os.getpid)}
    except (mitogen.core.CallError, mitogen.core.ChannelError) as e:
        return {'refused': str(e)}


def forge(router, parent, args):
    handle, other_id = int(args[0]), int(args[1])
    me = mitogen.context_id
    for data, src_id, auth_id in (('forged auth_id', me, other_id),
                                  ('forged src_id', other_id, other_id),
                                  ('honest', me, me)):
        router.route(mitogen.core.Message.pickled(
            data, dst_id=parent.context_id, handle=handle,
            src_id=src_id, auth_id=auth_id))
    # Wait until everything was written: a round trip on the same stream.
    parent.call(os.getpid)
    return {'sent': 3}


def hold(router, parent, args):
    sys.stdout.write(json.dumps(info(router, parent, args)) + '\n')
    sys.stdout.flush()
    sys.stdin.read()
    return {'held': True}


ACTIONS = {
    'info': info,
    'call_parent': call_parent,
    'call_child': call_child,
    'call_master': call_master,
    'forge': forge,
    'hold': hold,
}


def call_parent_with_keywords(path):
    # The calls ansible_mitogen makes: connect(path=, broker=), a larger
    # max_message_size, then router.disconnect(parent).
    import mitogen.master
    import mitogen.parent
    from support import unix_funcs
    broker = mitogen.master.Broker()
    try:
        router, parent = mitogen.unix.connect(path=path, broker=broker)
        router.max_message_size = 2 * mitogen.core.DEFAULT_MAX_MESSAGE_SIZE
        result = {
            'identity': list(parent.call(unix_funcs.identity)),
            'parent_is_context': isinstance(parent, mitogen.parent.Context),
        }
        router.disconnect(parent)
    finally:
        broker.shutdown()
        broker.join()
    return result


def main(path, action, *args):
    if action == 'call_parent_with_keywords':
        sys.stdout.write(json.dumps(call_parent_with_keywords(path)) + '\n')
        return 0
    try:
        router, parent = mitogen.unix.connect(path)
    except mitogen.core.Error as e:
        sys.stdout.write(json.dumps({'error': type(e).__name__,
                                     'message': str(e)}) + '\n')
        return 2
    try:
        result = ACTIONS[action](router, parent, args)
    finally:
        router.broker.shutdown()
        router.broker.join()
    sys.stdout.write(json.dumps(result) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:]))
