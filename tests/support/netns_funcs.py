"""
Functions tests/test_netns_chain.py calls along its ssh -> sudo -> ssh ->
sudo chain. Python 2.7 compatible.
"""
import os
import socket


def where():
    """``(hostname, uid)`` of the calling process."""
    return socket.gethostname(), os.getuid()


def ssh_connection():
    """``$SSH_CONNECTION`` (client address, port, server address, port)
    as sshd set it for the login this process descends from, or None."""
    return os.environ.get('SSH_CONNECTION')
