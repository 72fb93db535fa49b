# -*- coding: utf-8 -*-
# Copyright: celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate the celery_workers list, fill in the fields each entry leaves out,
and build each worker's `celery worker` options once for both process managers.

A worker's fields are defined once, as the suboptions of celery_workers in
roles/app/meta/argument_specs.yml: their names, types, choices and defaults
come from there. What an argument spec cannot say (a minimum, a pattern, the
command-line flag) is in the tables below."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import functools
import os
import re

import yaml

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import BOOLEANS, boolean

SPEC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                         "roles", "app", "meta", "argument_specs.yml")

# Names become unit and program names (<app>-worker-<name>.service) and node
# names (<name>@host): keep them to characters every one of those accepts.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
# systemd's MemoryMax=: bytes with an optional K, M, G or T suffix (base 1024),
# a percentage of the host's memory, or infinity.
MEMORY_PATTERN = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?[KMGT]?|[0-9]+(?:\.[0-9]+)?%|infinity)$")
# Whole-number fields below 1 that Celery would reject or misread.
MINIMUMS = {"concurrency": 1, "max_tasks_per_child": 1, "max_memory_per_child": 1, "prefetch_multiplier": 1,
            "time_limit": 1, "soft_time_limit": 1}
# What each pool does with autoscale and time limits (Celery 5): threads and
# solo cannot grow or shrink; only prefork interrupts a task at its soft limit
# (a signal to the pool process); gevent enforces the hard limit alone
# (gevent.Timeout); eventlet, threads and solo enforce neither. A limit the
# pool ignores is refused rather than left to never fire.
POOLS_THAT_SCALE = ("prefork", "gevent", "eventlet")
POOLS_WITH_TIME_LIMIT = ("prefork", "gevent")
POOLS_WITH_SOFT_TIME_LIMIT = ("prefork",)
AUTOSCALE_PATTERN = re.compile(r"^\s*([0-9]+)\s*(?:,\s*([0-9]+)\s*)?$")
# Fields compared with their choices case-insensitively.
UPPERCASE = ("loglevel",)
# The command line, in this order: field -> `celery worker` flag. A list value
# is joined with commas, true gives the bare flag, unset or false leaves it
# out. extra_args come last, as given; name is the node name, which each
# manager writes with its own host-name specifier; memory_max is a unit
# setting, not an argument.
FLAGS = (
    ("queues", "--queues"),
    ("pool", "--pool"),
    ("concurrency", "--concurrency"),
    ("autoscale", "--autoscale"),
    ("max_tasks_per_child", "--max-tasks-per-child"),
    ("max_memory_per_child", "--max-memory-per-child"),
    ("prefetch_multiplier", "--prefetch-multiplier"),
    ("time_limit", "--time-limit"),
    ("soft_time_limit", "--soft-time-limit"),
    ("task_events", "--task-events"),
    ("loglevel", "--loglevel"),
)


@functools.lru_cache(maxsize=None)
def worker_fields(path=SPEC_PATH):
    """The suboptions of celery_workers: {field: {type, default, choices, ...}}."""
    try:
        with open(path) as handle:
            spec = yaml.safe_load(handle)
        return spec["argument_specs"]["main"]["options"]["celery_workers"]["options"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as error:
        raise AnsibleFilterError("cannot read the worker fields from %s: %s" % (path, error))


def _int_field(where, field, value, minimum):
    if isinstance(value, bool):
        raise AnsibleFilterError("%s.%s must be a whole number of %d or more; got %r." % (where, field, minimum, value))
    try:
        number = int(to_text(value))
    except ValueError:
        raise AnsibleFilterError("%s.%s must be a whole number of %d or more; got %r." % (where, field, minimum, value))
    if number < minimum:
        raise AnsibleFilterError("%s.%s must be %d or more; got %d." % (where, field, minimum, number))
    return number


def _list_field(where, field, value, elements):
    if field == "queues" and isinstance(value, str):
        value = [item.strip() for item in value.split(",")]
    if not isinstance(value, list):
        raise AnsibleFilterError("%s.%s must be a list, one item each; got %r." % (where, field, value))
    if elements == "str":
        if not all(isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in value):
            raise AnsibleFilterError("%s.%s must be a list of strings; got %r." % (where, field, value))
        return [to_text(item) for item in value]
    return list(value)


def _typed(where, field, option, value):
    """The value converted to the field's type, or a failure naming the field."""
    kind = option.get("type", "str")
    if kind == "int":
        return _int_field(where, field, value, MINIMUMS.get(field, 0))
    if kind == "list":
        return _list_field(where, field, value, option.get("elements"))
    if kind == "bool":
        if value not in BOOLEANS:
            raise AnsibleFilterError("%s.%s must be true or false; got %r." % (where, field, value))
        return boolean(value)
    if isinstance(value, (dict, list)):
        raise AnsibleFilterError("%s.%s must be a string; got %r." % (where, field, value))
    value = to_text(value).strip()
    if field in UPPERCASE:
        value = value.upper()
    choices = option.get("choices")
    if choices:
        allowed = [choice for choice in choices if field not in UPPERCASE or choice == choice.upper()]
        if value not in allowed:
            raise AnsibleFilterError("%s.%s must be one of %s; got %r." % (where, field, ", ".join(allowed), value))
    return value


def _memory_field(where, value):
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


def _checked(where, worker):
    """What an argument spec cannot say: the name, the queue names, the memory size."""
    name = worker["name"]
    if not name:
        raise AnsibleFilterError("%s.name is empty: every worker needs a unique name." % where)
    if not NAME_PATTERN.match(name):
        raise AnsibleFilterError(
            "%s.name %r is not a safe unit name: use 1 to 48 letters, digits, '_' or '-', starting with a letter or digit." % (where, name))
    queues = [queue.strip() for queue in worker["queues"]]
    if not queues or not all(queues):
        raise AnsibleFilterError("%s.queues must be a non-empty list of queue names; got %r." % (where, worker["queues"]))
    bad = [queue for queue in queues if re.search(r"[\s,]", queue)]
    if bad:
        raise AnsibleFilterError("%s.queues has names with spaces or commas: %s." % (where, ", ".join(bad)))
    worker["queues"] = queues
    if worker.get("memory_max") is not None:
        worker["memory_max"] = _memory_field(where, worker["memory_max"])
    if worker.get("autoscale") is not None:
        worker["autoscale"] = _autoscale_field(where, worker)
    _check_time_limits(where, worker)


def _given(source, field):
    value = source.get(field)
    return value is not None and not (isinstance(value, str) and not value.strip())


def _autoscale_or_concurrency(where, entry, defaults, worker):
    """autoscale sizes the pool itself, so it and concurrency are refused
    together in one entry or in celery_worker_defaults; between an entry and
    the defaults, the entry's choice wins."""
    for source, name in ((entry, where), (defaults, "celery_worker_defaults")):
        if _given(source, "autoscale") and _given(source, "concurrency"):
            raise AnsibleFilterError(
                "%s sets both autoscale and concurrency: autoscale ('max,min') sizes the pool itself, between min and max"
                " processes; set one of them." % name)
    if worker.get("autoscale") is None:
        return
    if _given(entry, "concurrency"):
        worker["autoscale"] = None
    else:
        worker["concurrency"] = None


def _autoscale_field(where, worker):
    value = worker["autoscale"]
    match = AUTOSCALE_PATTERN.match(to_text(value))
    if not match:
        raise AnsibleFilterError(
            "%s.autoscale must be 'max,min' (e.g. '10,3'): the most and the fewest pool processes; got %r." % (where, value))
    most, fewest = int(match.group(1)), int(match.group(2) or 0)
    if most < 1 or fewest > most:
        raise AnsibleFilterError(
            "%s.autoscale must be 'max,min' with max 1 or more and min from 0 to max; got %r (max %d, min %d)." % (
                where, value, most, fewest))
    if worker["pool"] not in POOLS_THAT_SCALE:
        raise AnsibleFilterError(
            "%s.autoscale needs a pool that grows and shrinks (%s); the %s pool cannot. Use concurrency instead." % (
                where, ", ".join(POOLS_THAT_SCALE), worker["pool"]))
    return "%d,%d" % (most, fewest)


def _check_time_limits(where, worker):
    hard, soft, pool = worker.get("time_limit"), worker.get("soft_time_limit"), worker["pool"]
    if hard is not None and pool not in POOLS_WITH_TIME_LIMIT:
        raise AnsibleFilterError(
            "%s.time_limit would never fire: the %s pool does not enforce time limits; %s do." % (
                where, pool, " and ".join(POOLS_WITH_TIME_LIMIT)))
    if soft is not None and pool not in POOLS_WITH_SOFT_TIME_LIMIT:
        raise AnsibleFilterError(
            "%s.soft_time_limit would never fire: the %s pool does not raise SoftTimeLimitExceeded; only %s does%s." % (
                where, pool, " and ".join(POOLS_WITH_SOFT_TIME_LIMIT),
                " (gevent enforces time_limit alone)" if pool in POOLS_WITH_TIME_LIMIT else ""))
    if hard is not None and soft is not None and soft >= hard:
        raise AnsibleFilterError(
            "%s.soft_time_limit (%d s) must be below %s.time_limit (%d s): the soft limit warns the task, which the hard"
            " limit then kills." % (where, soft, where, hard))


def worker_options(worker):
    """The arguments of `celery worker` after the node name, built from the fields."""
    options = []
    for field, flag in FLAGS:
        value = worker.get(field)
        if value is None or value is False:
            continue
        if value is True:
            options.append(flag)
        elif isinstance(value, list):
            options.append("%s=%s" % (flag, ",".join(to_text(item) for item in value)))
        else:
            options.append("%s=%s" % (flag, to_text(value)))
    return options + list(worker.get("extra_args") or [])


def worker_specs(workers, defaults=None, variable="celery_workers"):
    """Return the worker list with every field set and each worker's options,
    or fail naming the variable, entry and field."""
    fields = worker_fields()
    if defaults is None:
        defaults = {}
    if not isinstance(defaults, dict):
        raise AnsibleFilterError("celery_worker_defaults must be a dict of worker fields; got %r." % (defaults,))
    allowed = [field for field in fields if field != "name"]
    unknown = sorted(set(defaults) - set(allowed))
    if unknown:
        raise AnsibleFilterError("celery_worker_defaults has unknown fields %s; allowed: %s." % (", ".join(unknown), ", ".join(allowed)))
    if not isinstance(workers, list) or not workers:
        raise AnsibleFilterError("%s must be a non-empty list of workers, each a dict with at least 'name'; got %r." % (variable, workers))

    result = []
    seen = {}
    for index, entry in enumerate(workers):
        where = "%s[%d]" % (variable, index)
        if not isinstance(entry, dict):
            raise AnsibleFilterError("%s must be a dict with at least 'name'; got %r." % (where, entry))
        unknown = sorted(set(entry) - set(fields))
        if unknown:
            raise AnsibleFilterError("%s has unknown fields %s; allowed: %s." % (where, ", ".join(unknown), ", ".join(fields)))
        worker = {}
        for field, option in fields.items():
            # The entry's value, else celery_worker_defaults', else the spec's
            # default; null or "" in either means "not given".
            value = entry.get(field, defaults.get(field))
            if value is None or (isinstance(value, str) and not value.strip() and field != "name"):
                value = option.get("default")
            if field == "name":
                value = to_text(value or "")
            elif value is not None:
                value = _typed(where, field, option, value)
            worker[field] = value
        _autoscale_or_concurrency(where, entry, defaults, worker)
        _checked(where, worker)
        if worker["name"] in seen:
            raise AnsibleFilterError("%s.name %r is a duplicate of %s[%d].name: worker names must be unique." % (
                where, worker["name"], variable, seen[worker["name"]]))
        seen[worker["name"]] = index
        worker["options"] = worker_options(worker)
        result.append(worker)
    return result


class FilterModule(object):
    def filters(self):
        return {"worker_specs": worker_specs}
