"""
Functions that tests/test_importer.py calls in children.  They import
modules by name, so the master never has to import the throwaway packages a
test serves, and report what the child saw.  They run in children, so this
module stays Python 2.7 compatible.
"""
import importlib
import sys

import mitogen.core


def text(obj):
    """`obj` as text, so Python 2 children answer with the same types."""
    if not isinstance(obj, (bytes, mitogen.core.UnicodeType)):
        obj = str(obj)
    return mitogen.core.to_text(obj)


def call_in(modname, funcname, *args):
    """Import `modname` and return the result of calling its `funcname`."""
    module = importlib.import_module(modname)
    return getattr(module, funcname)(*args)


def attribute_of(modname, attr):
    """Import `modname` and return ``(type name of what the import gave,
    its attribute `attr`)``."""
    module = importlib.import_module(modname)
    return text(type(module).__name__), getattr(module, attr)


def origin_of(modname):
    """Return the ``__file__`` of `modname` as the child imported it."""
    return text(importlib.import_module(modname).__file__)


def sys_path():
    return [text(p) for p in sys.path]


def loaded_below(prefix):
    """Sorted names in ``sys.modules`` equal to or below package
    `prefix`."""
    # Python 2 records failed implicit relative imports as None entries.
    return sorted(text(name) for name, module in list(sys.modules.items())
                  if module is not None
                  and (name == prefix or name.startswith(prefix + '.')))


@mitogen.core.takes_econtext
def import_failure(modname, econtext):
    """Import `modname`, expecting an :class:`ImportError`; return its
    text and the GET_MODULE requests the import sent.  Return None for the
    text if the import worked."""
    before = len(econtext.importer.requests)
    try:
        importlib.import_module(modname)
    except ImportError:
        error = text(sys.exc_info()[1])
    else:
        error = None
    return error, [text(n) for n in econtext.importer.requests[before:]]


@mitogen.core.takes_econtext
def import_counting_requests(modname, econtext):
    """Import `modname`; return the GET_MODULE requests that cost."""
    before = len(econtext.importer.requests)
    importlib.import_module(modname)
    return [text(n) for n in econtext.importer.requests[before:]]


def read_resources_legacy(package, text_name, binary_name):
    """``importlib.resources.read_text``/``read_binary`` (Python 3.7+)."""
    import importlib.resources as resources
    return (resources.read_text(package, text_name),
            resources.read_binary(package, binary_name))


def resource_names_legacy(package):
    """``importlib.resources.contents``/``is_resource`` (Python 3.7+)."""
    import importlib.resources as resources
    names = sorted(resources.contents(package))
    return names, [n for n in names if resources.is_resource(package, n)]


def read_resource_files(package, *parts):
    """``importlib.resources.files(package).joinpath(*parts).read_bytes()``
    (Python 3.9+)."""
    import importlib.resources as resources
    return resources.files(package).joinpath(*parts).read_bytes()


def list_resource_files(package, *parts):
    """Sorted ``(name, is_dir)`` of ``files(package).joinpath(*parts)
    .iterdir()`` (Python 3.9+)."""
    import importlib.resources as resources
    root = resources.files(package).joinpath(*parts)
    return sorted((entry.name, entry.is_dir()) for entry in root.iterdir())


def import_error_is_module_not_found(modname):
    """Import `modname`; return whether the failure was a
    ModuleNotFoundError, the type code probing optional modules catches."""
    try:
        importlib.import_module(modname)
    except ModuleNotFoundError:
        return True
    except ImportError:
        return False
    return None
