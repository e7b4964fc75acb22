"""
Functions the paramiko tests call in contexts (remote ones and local
intermediates), and look-ups of this process's own threads and sockets.
"""
import os
import threading


def paramiko_threads():
    """Names of the live threads of this process that serve Paramiko
    connections: mitogen's pump threads and Paramiko's transports."""
    import sys
    names = []
    transport = getattr(sys.modules.get('paramiko'), 'Transport', None)
    for thread in threading.enumerate():
        if thread.name.startswith('mitogen.paramiko.') or (
                transport is not None and isinstance(thread, transport)):
            names.append(thread.name)
    return names


def _socket_inodes():
    inodes = set()
    for name in os.listdir('/proc/self/fd'):
        try:
            target = os.readlink('/proc/self/fd/' + name)
        except OSError:
            continue
        if target.startswith('socket:['):
            inodes.add(target[8:-1])
    return inodes


def tcp_connections():
    """``[(local_port, remote_port)]`` of this process's TCP sockets that
    are connected (IPv4)."""
    inodes = _socket_inodes()
    found = []
    with open('/proc/self/net/tcp') as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state, inode = (fields[1], fields[2], fields[3],
                                           fields[9])
            if inode in inodes and state == '01':      # ESTABLISHED
                found.append((int(local.split(':')[1], 16),
                              int(remote.split(':')[1], 16)))
    return found
