# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""run_main: a module's main() with its arguments, as Ansible would run it."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from unittest import mock

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args


class _Exit(Exception):
    pass


@pytest.fixture
def run_main():
    """run_main(module, args) -> what the module exited with (exit_json's or
    fail_json's keyword arguments), with `failed` set."""
    def run(module, args):
        out = {}

        def record(failed):
            def done(self, **kwargs):
                out.update(kwargs, failed=failed)
                raise _Exit()
            return done

        with patch_module_args(args), \
                mock.patch.object(basic.AnsibleModule, 'exit_json', record(False)), \
                mock.patch.object(basic.AnsibleModule, 'fail_json', record(True)):
            with pytest.raises(_Exit):
                module.main()
        return out
    return run
