"""Run in children by test_public_names.py."""


def star_import(modname):
    """The names ``from <modname> import *`` binds and the module's
    ``__all__``, as sorted lists of text; and whether every name in
    ``__all__`` is a native string (Python 2 refuses others)."""
    namespace = {}
    exec('from %s import *' % (modname,), namespace)
    module = __import__(modname, fromlist=['__all__'])
    return (sorted(u'%s' % (name,) for name in namespace
                   if name != '__builtins__'),
            sorted(u'%s' % (name,) for name in module.__all__),
            all(type(name) is str for name in module.__all__))
