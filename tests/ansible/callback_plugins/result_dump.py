"""
Ansible callback plugin of the test suite: appends one JSON line per task
result and one per host of the play recap to the file named by the
environment variable ``MITOGEN_TEST_ANSIBLE_RESULTS``, so that
``tests/test_ansible.py`` can compare what two runs of a playbook did, host
by host and task by task.

Each line is an object with ``event`` set to

``result``
    ``play``, ``task``, ``action``, ``host``, ``status`` (``ok``, ``failed``,
    ``skipped``, ``unreachable``), ``ignore_errors`` and ``result`` (the
    task result as Ansible's own callbacks show it: internal ``_ansible_*``
    keys, ``invocation``, ``exception`` and warnings removed);
``stats``
    ``host`` and ``stats`` (the play recap counters of that host).

and ``time``, when it was written (seconds since the epoch).

Stock Ansible's ``json`` callback would do, but it lives in the
``ansible.posix`` collection, which ansible-core does not ship.
"""
from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: result_dump
    type: aggregate
    short_description: one JSON line per task result, for the test suite
    description:
      - Appends task results and the play recap to the file that
        MITOGEN_TEST_ANSIBLE_RESULTS names.
"""

#: The environment variable naming the output file.
OUTPUT_VARIABLE = 'MITOGEN_TEST_ANSIBLE_RESULTS'


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'result_dump'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._path = os.environ.get(OUTPUT_VARIABLE)
        self._play = None

    def _write(self, record):
        if not self._path:
            return
        with open(self._path, 'a', encoding='utf-8') as f:
            record['time'] = time.time()
            f.write(json.dumps(record, sort_keys=True) + '\n')

    def _record(self, result, status, ignore_errors=False):
        task = result._task
        self._write({
            'event': 'result',
            'play': self._play,
            'task': task.get_name(),
            'action': task.action,
            'host': result._host.get_name(),
            'status': status,
            'ignore_errors': bool(ignore_errors),
            'result': json.loads(self._dump_results(result._result)),
        })

    def v2_playbook_on_play_start(self, play):
        self._play = play.get_name()

    def v2_runner_on_ok(self, result):
        self._record(result, 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, 'failed', ignore_errors)

    def v2_runner_on_skipped(self, result):
        self._record(result, 'skipped')

    def v2_runner_on_unreachable(self, result):
        self._record(result, 'unreachable')

    def v2_playbook_on_stats(self, stats):
        for host in sorted(stats.processed):
            self._write({'event': 'stats', 'host': host,
                         'stats': stats.summarize(host)})
