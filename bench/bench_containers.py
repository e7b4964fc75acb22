"""
router.podman() against the bare ``podman exec`` it wraps, side by side in
one run (issue 9: connect + first call within 1.3x of the bare exec).

A podman container is started from the root file system of the test suite
(``tests/.cache/rootfs-python3-minimal``, built by ``scripts/setup``: Debian
with only python3-minimal), then each round measures, in turn:

bare_exec       ``podman exec -i CONTAINER python3 -c pass``, run to its end
podman_connect  ``router.podman(container=CONTAINER)`` and a first call
                (``os.getpid``) from a master whose router already exists;
                the context is shut down afterwards, outside the timing

and prints one JSON line per round and a table of medians with the ratio
podman_connect / bare_exec. The anchor, Mitogen 0.3.54, is not measured:
its core cannot start on python3-minimal (it imports pstats at start).
Needs root, podman and runc.

    .venv/bin/python bench/bench_containers.py [--rounds 15]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests'))

import containers  # noqa: E402  (tests/containers.py: the test containers)
import mitogen.master  # noqa: E402


def bare_exec(name):
    t0 = time.perf_counter()
    subprocess.run(['podman', 'exec', '-i', name,
                    containers.CONTAINER_PYTHON, '-c', 'pass'],
                   stdin=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def podman_connect(router, name):
    t0 = time.perf_counter()
    context = router.podman(container=name)
    context.call(os.getpid)
    elapsed = time.perf_counter() - t0
    context.shutdown(wait=True)
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=15)
    opts = parser.parse_args()
    reason = containers.unavailable()
    if reason:
        sys.exit(reason)
    container = containers.Container(containers.container_name('bench'))
    container.start()
    samples = {'bare_exec': [], 'podman_connect': []}
    try:
        with mitogen.master.Router() as router:
            # The first child of a master also pays for the master's own
            # start (module finder, first core compression): not counted.
            podman_connect(router, container.name)
            for i in range(opts.rounds):
                row = {'round': i + 1,
                       'bare_exec_ms': bare_exec(container.name) * 1e3,
                       'podman_connect_ms':
                           podman_connect(router, container.name) * 1e3}
                samples['bare_exec'].append(row['bare_exec_ms'])
                samples['podman_connect'].append(row['podman_connect_ms'])
                print(json.dumps(row))
    finally:
        container.remove()
    bare = statistics.median(samples['bare_exec'])
    ours = statistics.median(samples['podman_connect'])
    print('\nmedians over %d rounds:' % opts.rounds)
    print('  bare_exec       %7.1f ms' % bare)
    print('  podman_connect  %7.1f ms   ratio to bare exec %.2fx'
          % (ours, ours / bare))


if __name__ == '__main__':
    main()
