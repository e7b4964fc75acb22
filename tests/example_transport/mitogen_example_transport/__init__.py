"""
An example third-party connection method: a local child started through
``env``, with a variable naming the method set in its environment.

Its whole contract with mitogen is one subclass of
:class:`mitogen.parent.Connection` (and of its options class) plus one
entry point in the ``mitogen.transports`` group; its own error type is
registered so that it keeps its type through ``via=``. It is written for every
Python a child may run, because with ``via=`` an intermediate context
imports it through the importer.
"""

import mitogen.core
import mitogen.parent


@mitogen.parent.register_proxy_error
class LabelError(mitogen.core.StreamError):
    """The label cannot be put in an environment variable."""


class Options(mitogen.parent.Options):
    """Options of the ``example`` method.

    :param str label: value given to ``MITOGEN_EXAMPLE_LABEL`` in the
        child's environment.
    :param str env_path: the ``env`` program that sets it.
    """

    def __init__(self, label=u'example', env_path='/usr/bin/env', **kwargs):
        super(Options, self).__init__(**kwargs)
        if u'\0' in label:
            raise LabelError('the label holds a NUL byte: %r' % (label,))
        self.label = label
        self.env_path = env_path


class Connection(mitogen.parent.Connection):
    """Starts ``env MITOGEN_EXAMPLE_LABEL=<label> python -c <first stage>``."""
    options_class = Options
    name_prefix = u'example'

    def get_boot_command(self):
        base = super(Connection, self).get_boot_command()
        return [self.options.env_path,
                'MITOGEN_EXAMPLE_LABEL=%s' % (self.options.label,)] + base
