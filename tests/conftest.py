"""
Shared test machinery.

- Every test is checked for leaked file descriptors, threads and processes
  (see :mod:`leakcheck`); a leak turns into an error at the test's teardown.
  Opt out with ``@pytest.mark.no_leak_check``.
- ``router`` is a :class:`mitogen.master.Router` for one test, shut down
  (with its children) afterwards; modules wanting one per module define
  their own ``router`` fixture, which overrides this one.
- ``interpreter`` is parametrised over every Python version a child must
  run on (:data:`interpreters.WANTED`); a version this machine lacks is a
  visible skip, never a silent pass.
"""
import pytest

import interpreters
import leakcheck
import mitogen.master

# sshd: the private OpenSSH server (fixture sshd).
# users: the test accounts and sudo/doas rules (test_users, user_python).
# sites: throwaway packages on the master's sys.path (master_site).
# dists: the distributions built into sdists and wheels (built_dists).
# containers: a real podman container (podman_container).
pytest_plugins = ['pytester', 'sshd', 'users', 'sites', 'dists', 'containers']


def pytest_configure(config):
    config.addinivalue_line(
        'markers',
        'no_leak_check: do not fail the test for fds, threads or processes '
        'it leaves behind',
    )


@pytest.fixture(autouse=True)
def leak_check(request):
    """Fail the test if it leaves fds, threads or processes behind.

    Autouse and function-scoped, this fixture is set up after session- and
    module-scoped fixtures (whose resources are part of the "before") and
    torn down after the test's other function-scoped fixtures (whose
    cleanup is awaited).
    """
    if request.node.get_closest_marker('no_leak_check'):
        yield
        return
    with leakcheck.tagged() as snapshot:
        yield
        leaks = leakcheck.find_leaks(snapshot)
        if leaks:
            leakcheck.kill_new_processes(snapshot)
            pytest.fail(
                'test leaked (mark it no_leak_check if intended):\n  '
                + '\n  '.join(leaks),
                pytrace=False,
            )


@pytest.fixture(params=interpreters.params())
def interpreter(request):
    """An :class:`interpreters.Interpreter` (version, path), one test per
    wanted version; skipped where that version is not installed.  Narrow it
    with ``parametrize('interpreter', interpreters.params([...]),
    indirect=True)``."""
    return interpreters.require(request.param)


@pytest.fixture
def router():
    """A :class:`mitogen.master.Router` shut down after the test."""
    with mitogen.master.Router() as router:
        yield router
