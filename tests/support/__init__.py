"""
Helper modules for tests.  Functions a test passes to ``Context.call()``
must live in a module the child can import by the name the master uses
(the master serves it); these modules are such places.  Code here runs in
children, so it stays Python 2.7 compatible.
"""
