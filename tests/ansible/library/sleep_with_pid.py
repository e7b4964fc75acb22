#!/usr/bin/python
"""
A custom module of the test playbooks that writes the PID of the process
running it to ``pid_file`` and then sleeps ``seconds``: the test that kills
the process running a task finds its victim there.
"""
from __future__ import absolute_import, division, print_function

import os
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = """
module: sleep_with_pid
short_description: write this process's PID to a file, then sleep
options:
  pid_file:
    type: path
    required: true
  seconds:
    type: float
    default: 60
"""


def main():
    module = AnsibleModule(argument_spec={
        'pid_file': {'type': 'path', 'required': True},
        'seconds': {'type': 'float', 'default': 60.0},
    })
    path = module.params['pid_file']
    with open(path + '.new', 'w') as f:
        f.write('%d\n' % os.getpid())
    os.rename(path + '.new', path)
    time.sleep(module.params['seconds'])
    module.exit_json(changed=False, slept=module.params['seconds'])


if __name__ == '__main__':
    main()
