"""Master program for tests/test_plugins.py: run with the example transport
installed on its sys.path (only there). Prints one JSON line of results."""
import inspect
import json
import os
import sys

import mitogen.core
import mitogen.master


def label():
    return os.environ.get('MITOGEN_EXAMPLE_LABEL')


def run(router):
    out = {}
    ctx = router.connect('example', label='direct')
    out['direct'] = [ctx.name.split('.')[0], ctx.call(label)]
    ctx = router.example(label='attribute')
    out['attribute'] = [ctx.name.split('.')[0], ctx.call(label)]
    middle = router.local()
    ctx = router.example(via=middle, label='proxied')
    out['via'] = [ctx.name, middle.name, ctx.call(label)]
    for hop, via in (('refused', None), ('refused_via', middle)):
        try:
            router.example(via=via, label=u'a\0b')
        except mitogen.core.StreamError as e:
            out[hop] = [type(e).__module__, type(e).__name__, str(e)]
    try:
        router.connect('no-such-method')
    except mitogen.core.Error as e:
        out['missing'] = str(e)
    try:
        router.no_such_method
    except AttributeError as e:
        out['missing_attr'] = str(e)
    out['in_dir'] = 'example' in dir(router)
    out['signature'] = str(inspect.signature(router.example))
    out['doc'] = router.example.__doc__
    return out


if __name__ == '__main__':
    with mitogen.master.Router() as router:
        print(json.dumps(run(router)))
    sys.stdout.flush()
