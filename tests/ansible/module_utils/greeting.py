"""A module_utils of the test playbooks: shipped to targets with the
``greet`` module that imports it."""


def greeting(name, punctuation='!'):
    return 'Hello, %s%s' % (name, punctuation)
