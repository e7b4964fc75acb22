"""
Run one function on six targets at once: five Python children on this
machine and one whose interpreter does not exist, and print what each did.
A real fleet lists ssh targets the same way, e.g.
``{'method': 'ssh', 'hostname': 'web1', 'username': 'deploy'}``.

    .venv/bin/python examples/fleet_local.py
"""
import os
import platform

import mitogen.fleet


def facts():
    """Runs on each target."""
    return '%s, Python %s, pid %d' % (platform.node(),
                                      platform.python_version(), os.getpid())


if __name__ == '__main__':
    targets = [{'method': 'local'} for _ in range(5)]  # type: list[dict[str, object]]
    targets.append({'method': 'local', 'python_path': ['/no/such/python']})

    results = mitogen.fleet.run(targets, facts, concurrency=4, timeout=30)

    for result in results:
        if result.ok:
            print('ok   %s: %s' % (result.name, result.value))
        else:
            print('FAIL %s: %s' % (result.name, result.error))
    print('%d of %d hosts answered' % (sum(r.ok for r in results),
                                       len(results)))
