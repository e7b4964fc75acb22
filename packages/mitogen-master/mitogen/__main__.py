# Copyright the mitogen contributors. BSD-3-Clause.
# master-only module
"""``python -m mitogen``: see :mod:`mitogen.diagnostics`."""

# A program, not a library: it exports no names.
__all__ = []

import sys

import mitogen.installation


def main():
    # This module exists only in this project: on upstream Mitogen's
    # files, installed over ours or half uninstalled, say how to repair.
    try:
        mitogen.installation.require_this_project()
    except mitogen.installation.ForeignMitogenError as e:
        sys.stdout.write('PROBLEM: %s\n' % (e,))
        return 1
    from mitogen import diagnostics
    return diagnostics.main()


if __name__ == '__main__':
    sys.exit(main())
