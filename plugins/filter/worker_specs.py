# -*- coding: utf-8 -*-
# Copyright: celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate the celery_workers list and fill in the fields each entry leaves out."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

# Names become unit and program names (<app>-worker-<name>.service) and node
# names (<name>@host): keep them to characters every one of those accepts.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
POOLS = ("prefork", "threads", "solo", "eventlet", "gevent")
LOGLEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FIELDS = ("name", "queues", "concurrency", "pool", "max_tasks_per_child",
          "max_memory_per_child", "memory_max", "loglevel", "extra_args")
# systemd's MemoryMax=: bytes with an optional K, M, G or T suffix (base 1024),
# a percentage of the host's memory, or infinity.
MEMORY_PATTERN = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?[KMGT]?|[0-9]+(?:\.[0-9]+)?%|infinity)$")


def _int_field(where, field, value, minimum, optional):
    if value is None or (optional and to_text(value) == ""):
        if optional:
            return None
        raise AnsibleFilterError("%s.%s is required: a whole number of %d or more." % (where, field, minimum))
    if isinstance(value, bool):
        raise AnsibleFilterError("%s.%s must be a whole number of %d or more; got %r." % (where, field, minimum, value))
    try:
        number = int(to_text(value))
    except ValueError:
        raise AnsibleFilterError("%s.%s must be a whole number of %d or more; got %r." % (where, field, minimum, value))
    if number < minimum:
        raise AnsibleFilterError("%s.%s must be %d or more; got %d." % (where, field, minimum, number))
    return number


def _memory_field(where, value):
    if value is None or to_text(value).strip() == "":
        return None
    text = to_text(value).strip()
    if MEMORY_PATTERN.match(text) and not isinstance(value, bool):
        if text == "infinity":
            return text
        number = float(text.rstrip("KMGT%"))
        if number > 0 and not (text.endswith("%") and number > 100):
            return text
    raise AnsibleFilterError(
        "%s.memory_max must be a memory size for systemd's MemoryMax=, above 0: bytes or a number with K, M, G or T"
        " (e.g. '512M'), a percentage of the host's memory up to 100%%, or 'infinity'; got %r." % (where, value))


def worker_specs(workers, defaults=None, variable="celery_workers"):
    """Return the worker list with every field set, or fail naming the variable, entry and field."""
    if defaults is None:
        defaults = {}
    if not isinstance(defaults, dict):
        raise AnsibleFilterError("celery_worker_defaults must be a dict of worker fields; got %r." % (defaults,))
    unknown = sorted(set(defaults) - set(FIELDS) - {"name"})
    if unknown:
        raise AnsibleFilterError("celery_worker_defaults has unknown fields %s; allowed: %s." % (", ".join(unknown), ", ".join(FIELDS[1:])))
    if not isinstance(workers, list) or not workers:
        raise AnsibleFilterError("%s must be a non-empty list of workers, each a dict with at least 'name'; got %r." % (variable, workers))

    result = []
    seen = {}
    for index, entry in enumerate(workers):
        where = "%s[%d]" % (variable, index)
        if not isinstance(entry, dict):
            raise AnsibleFilterError("%s must be a dict with at least 'name'; got %r." % (where, entry))
        unknown = sorted(set(entry) - set(FIELDS))
        if unknown:
            raise AnsibleFilterError("%s has unknown fields %s; allowed: %s." % (where, ", ".join(unknown), ", ".join(FIELDS)))
        spec = dict(defaults)
        spec.update(entry)

        name = to_text(spec.get("name") or "")
        if not name:
            raise AnsibleFilterError("%s.name is empty: every worker needs a unique name." % where)
        if not NAME_PATTERN.match(name):
            raise AnsibleFilterError(
                "%s.name %r is not a safe unit name: use 1 to 48 letters, digits, '_' or '-', starting with a letter or digit." % (where, name))
        if name in seen:
            raise AnsibleFilterError("%s.name %r is a duplicate of %s[%d].name: worker names must be unique." % (where, name, variable, seen[name]))
        seen[name] = index

        queues = spec.get("queues")
        if isinstance(queues, str):
            queues = [q.strip() for q in queues.split(",")]
        if not isinstance(queues, list) or not queues or not all(isinstance(q, str) and q.strip() for q in queues):
            raise AnsibleFilterError("%s.queues must be a non-empty list of queue names; got %r." % (where, spec.get("queues")))
        bad = [q for q in queues if re.search(r"[\s,]", q)]
        if bad:
            raise AnsibleFilterError("%s.queues has names with spaces or commas: %s." % (where, ", ".join(bad)))

        pool = to_text(spec.get("pool") or "prefork")
        if pool not in POOLS:
            raise AnsibleFilterError("%s.pool must be one of %s; got %r." % (where, ", ".join(POOLS), pool))
        loglevel = to_text(spec.get("loglevel") or "INFO").upper()
        if loglevel not in LOGLEVELS:
            raise AnsibleFilterError("%s.loglevel must be one of %s; got %r." % (where, ", ".join(LOGLEVELS), spec.get("loglevel")))
        extra_args = spec.get("extra_args") or []
        if isinstance(extra_args, str) or not isinstance(extra_args, list):
            raise AnsibleFilterError("%s.extra_args must be a list of arguments, one item each; got %r." % (where, extra_args))

        result.append({
            "name": name,
            "queues": [to_text(q).strip() for q in queues],
            "concurrency": _int_field(where, "concurrency", spec.get("concurrency"), 1, optional=False),
            "pool": pool,
            "max_tasks_per_child": _int_field(where, "max_tasks_per_child", spec.get("max_tasks_per_child"), 1, optional=True),
            "max_memory_per_child": _int_field(where, "max_memory_per_child", spec.get("max_memory_per_child"), 1, optional=True),
            "memory_max": _memory_field(where, spec.get("memory_max")),
            "loglevel": loglevel,
            "extra_args": [to_text(a) for a in extra_args],
        })
    return result


class FilterModule(object):
    def filters(self):
        return {"worker_specs": worker_specs}
