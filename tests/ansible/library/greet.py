#!/usr/bin/python
"""
A custom module of the test playbooks that imports a custom module_utils
(``module_utils/greeting.py`` next to the playbooks), so the runs show that
both reach the target.
"""
from __future__ import absolute_import, division, print_function

import os
import sys

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.greeting import greeting

DOCUMENTATION = """
module: greet
short_description: greet someone, with a module_utils of the test suite
options:
  name:
    type: str
    required: true
"""


def main():
    module = AnsibleModule(
        argument_spec={'name': {'type': 'str', 'required': True}},
        supports_check_mode=True,
    )
    module.exit_json(
        changed=False,
        greeting=greeting(module.params['name']),
        python_version='%d.%d' % sys.version_info[:2],
        euid=os.geteuid(),
    )


if __name__ == '__main__':
    main()
