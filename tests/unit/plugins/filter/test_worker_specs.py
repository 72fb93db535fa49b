import pytest

from ansible.errors import AnsibleFilterError

import yaml

from ansible_collections.celeryops.celery.plugins.filter import worker_specs as worker_specs_module
from ansible_collections.celeryops.celery.plugins.filter.worker_specs import worker_fields, worker_specs

DEFAULTS = {"queues": ["celery"], "concurrency": 2, "pool": "prefork", "max_tasks_per_child": None,
            "max_memory_per_child": None, "memory_max": None, "loglevel": "INFO", "extra_args": []}


def test_fills_in_fields_from_the_defaults():
    [worker] = worker_specs([{"name": "default"}], DEFAULTS)
    assert worker == {"name": "default", "queues": ["celery"], "concurrency": 2, "autoscale": None, "pool": "prefork",
                      "max_tasks_per_child": None, "max_memory_per_child": None, "memory_max": None,
                      "prefetch_multiplier": None, "time_limit": None, "soft_time_limit": None, "task_events": None,
                      "loglevel": "INFO",
                      "extra_args": [],
                      "options": ["--queues=celery", "--pool=prefork", "--concurrency=2", "--loglevel=INFO"]}


def test_fields_left_out_everywhere_take_the_argument_specs_defaults():
    [worker] = worker_specs([{"name": "default"}], {"concurrency": 8})
    assert worker["options"] == ["--queues=celery", "--pool=prefork", "--concurrency=8", "--loglevel=INFO"]


def test_the_fields_are_those_of_the_app_roles_argument_spec():
    with open(worker_specs_module.SPEC_PATH) as handle:
        spec = yaml.safe_load(handle)["argument_specs"]["main"]["options"]["celery_workers"]["options"]
    assert list(worker_fields()) == list(spec)
    assert set(spec) >= {"name", "queues", "concurrency", "pool", "loglevel", "extra_args"}


def test_options_carry_every_field_in_command_line_order_with_extra_args_last():
    [worker] = worker_specs([{"name": "io", "queues": ["a", "b"], "pool": "threads", "concurrency": 16,
                              "max_tasks_per_child": 100, "max_memory_per_child": 200000, "memory_max": "1G",
                              "loglevel": "warning", "extra_args": ["-O", "fair"]}], {})
    assert worker["options"] == ["--queues=a,b", "--pool=threads", "--concurrency=16", "--max-tasks-per-child=100",
                                 "--max-memory-per-child=200000", "--loglevel=WARNING", "-O", "fair"]


def test_task_events_reach_the_command_line_only_when_on():
    [unset, off, on] = worker_specs([{"name": "a"}, {"name": "b", "task_events": "no"}, {"name": "c", "task_events": True}], {})
    assert (unset["task_events"], off["task_events"], on["task_events"]) == (None, False, True)
    assert "--task-events" not in unset["options"] + off["options"]
    assert on["options"] == ["--queues=celery", "--pool=prefork", "--concurrency=2", "--task-events", "--loglevel=INFO"]
    # As the app role passes it where Flower runs: a default an entry can turn off.
    [default_on, entry_off] = worker_specs([{"name": "a"}, {"name": "b", "task_events": False}], {"task_events": True})
    assert "--task-events" in default_on["options"] and "--task-events" not in entry_off["options"]
    with pytest.raises(AnsibleFilterError, match=r"celery_workers\[0\]\.task_events must be true or false; got 'sometimes'"):
        worker_specs([{"name": "a", "task_events": "sometimes"}], {})


def test_prefetch_multiplier_reaches_the_command_line_only_when_set():
    [unset, one] = worker_specs([{"name": "a"}, {"name": "b", "prefetch_multiplier": "1"}], {})
    assert unset["prefetch_multiplier"] is None
    assert not any(option.startswith("--prefetch-multiplier") for option in unset["options"])
    assert one["prefetch_multiplier"] == 1
    assert "--prefetch-multiplier=1" in one["options"]
    assert one["options"].index("--prefetch-multiplier=1") < one["options"].index("--loglevel=INFO")


def test_a_null_entry_field_falls_back_to_the_spec_not_to_the_defaults():
    [worker] = worker_specs([{"name": "a", "max_tasks_per_child": None}], {"max_tasks_per_child": 50})
    assert worker["max_tasks_per_child"] is None
    assert not any(option.startswith("--max-tasks-per-child") for option in worker["options"])


def test_a_bool_field_gives_a_bare_flag(monkeypatch):
    # How a future on/off option (e.g. --without-gossip) reaches the command line.
    monkeypatch.setattr(worker_specs_module, "FLAGS", worker_specs_module.FLAGS + (("gossip_off", "--without-gossip"),))
    assert worker_specs_module.worker_options({"gossip_off": True, "extra_args": []}) == ["--without-gossip"]
    assert worker_specs_module.worker_options({"gossip_off": False, "extra_args": []}) == []


def test_entry_fields_win_and_are_normalised():
    [worker] = worker_specs([{"name": "io", "queues": "a, b", "concurrency": "8", "loglevel": "debug",
                              "max_tasks_per_child": 100, "extra_args": ["-O", "fair"]}], DEFAULTS)
    assert worker["queues"] == ["a", "b"]
    assert worker["concurrency"] == 8
    assert worker["loglevel"] == "DEBUG"
    assert worker["max_tasks_per_child"] == 100
    assert worker["extra_args"] == ["-O", "fair"]


@pytest.mark.parametrize("workers, message", [
    ([], "celery_workers must be a non-empty list"),
    ([{"name": ""}], "celery_workers[0].name is empty"),
    ([{}], "celery_workers[0].name is empty"),
    ([{"name": "a"}, {"name": "a"}], "celery_workers[1].name 'a' is a duplicate of celery_workers[0].name"),
    ([{"name": "a b"}], "is not a safe unit name"),
    ([{"name": "../x"}], "is not a safe unit name"),
    ([{"name": "x@y"}], "is not a safe unit name"),
    ([{"name": "a", "concurrency": 0}], "celery_workers[0].concurrency must be 1 or more; got 0"),
    ([{"name": "a", "prefetch_multiplier": 0}], "celery_workers[0].prefetch_multiplier must be 1 or more; got 0"),
    ([{"name": "a", "concurrency": "many"}], "celery_workers[0].concurrency must be a whole number"),
    ([{"name": "a", "concurrency": True}], "celery_workers[0].concurrency must be a whole number"),
    ([{"name": "a", "pool": "greenlet"}], "celery_workers[0].pool must be one of prefork, threads, solo, eventlet, gevent"),
    ([{"name": "a", "loglevel": "LOUD"}], "celery_workers[0].loglevel must be one of"),
    ([{"name": "a", "queues": []}], "celery_workers[0].queues must be a non-empty list"),
    ([{"name": "a", "queues": ["x y"]}], "queues has names with spaces or commas"),
    ([{"name": "a", "extra_args": "-O fair"}], "extra_args must be a list"),
    ([{"name": "a", "queues": [{"x": 1}]}], "celery_workers[0].queues must be a list of strings"),
    ([{"name": "a", "pool": ["prefork"]}], "celery_workers[0].pool must be a string"),
    ([{"name": "a", "colour": "blue"}], "celery_workers[0] has unknown fields colour"),
    ([{"name": "a", "memory_max": "lots"}], "celery_workers[0].memory_max must be a memory size for systemd's MemoryMax="),
    ([{"name": "a", "memory_max": "512MB"}], "celery_workers[0].memory_max must be a memory size"),
    ([{"name": "a", "memory_max": "0"}], "celery_workers[0].memory_max must be a memory size for systemd's MemoryMax=, above 0"),
    ([{"name": "a", "memory_max": "150%"}], "celery_workers[0].memory_max must be a memory size"),
    ([{"name": "a", "memory_max": True}], "celery_workers[0].memory_max must be a memory size"),
    ([{"name": "a", "autoscale": "10,3", "concurrency": 4}], "celery_workers[0] sets both autoscale and concurrency"),
    ([{"name": "a", "autoscale": "ten"}], "celery_workers[0].autoscale must be 'max,min' (e.g. '10,3')"),
    ([{"name": "a", "autoscale": "3,10"}], "celery_workers[0].autoscale must be 'max,min' with max 1 or more and min from 0 to max"),
    ([{"name": "a", "autoscale": "0"}], "with max 1 or more"),
    ([{"name": "a", "autoscale": "4,1", "pool": "threads"}], "celery_workers[0].autoscale needs a pool that grows and shrinks"),
    ([{"name": "a", "autoscale": "4,1", "pool": "solo"}], "the solo pool cannot"),
    ([{"name": "a", "time_limit": 0}], "celery_workers[0].time_limit must be 1 or more"),
    ([{"name": "a", "time_limit": 60, "soft_time_limit": 60}],
     "celery_workers[0].soft_time_limit (60 s) must be below celery_workers[0].time_limit (60 s)"),
    ([{"name": "a", "time_limit": 60, "pool": "eventlet"}], "celery_workers[0].time_limit would never fire: the eventlet pool"),
    ([{"name": "a", "time_limit": 60, "pool": "threads"}], "the threads pool does not enforce time limits; prefork and gevent do"),
    ([{"name": "a", "soft_time_limit": 5, "pool": "gevent"}],
     "celery_workers[0].soft_time_limit would never fire: the gevent pool does not raise SoftTimeLimitExceeded"),
    ([{"name": "a", "soft_time_limit": 5, "pool": "solo"}], "only prefork does"),
    (["default"], "celery_workers[0] must be a dict"),
])
def test_bad_workers_fail_with_a_message_naming_the_field(workers, message):
    with pytest.raises(AnsibleFilterError) as error:
        worker_specs(workers, DEFAULTS)
    assert message in str(error.value)


@pytest.mark.parametrize("value, expected", [
    ("512M", "512M"), (" 1G ", "1G"), ("1.5G", "1.5G"), (536870912, "536870912"), ("20%", "20%"),
    ("infinity", "infinity"), (None, None), ("", None),
])
def test_memory_max_takes_systemd_memory_sizes(value, expected):
    [worker] = worker_specs([{"name": "a", "memory_max": value}], DEFAULTS)
    assert worker["memory_max"] == expected


def test_memory_max_comes_from_the_defaults_too():
    [worker] = worker_specs([{"name": "a"}], dict(DEFAULTS, memory_max="1G"))
    assert worker["memory_max"] == "1G"


def test_autoscale_replaces_concurrency_on_the_command_line():
    [scaled] = worker_specs([{"name": "a", "autoscale": " 8 , 2 "}], DEFAULTS)
    assert scaled["autoscale"] == "8,2" and scaled["concurrency"] is None
    assert scaled["options"] == ["--queues=celery", "--pool=prefork", "--autoscale=8,2", "--loglevel=INFO"]
    [green] = worker_specs([{"name": "g", "autoscale": 100, "pool": "gevent"}], {})
    assert "--autoscale=100,0" in green["options"]


def test_between_an_entry_and_the_defaults_the_entrys_pool_size_wins():
    [scaled, fixed] = worker_specs([{"name": "a", "autoscale": "8,2"}, {"name": "b", "concurrency": 3}],
                                   {"autoscale": "4,1"})
    assert (scaled["autoscale"], scaled["concurrency"]) == ("8,2", None)
    assert (fixed["autoscale"], fixed["concurrency"]) == (None, 3)
    [from_defaults] = worker_specs([{"name": "c"}], {"autoscale": "4,1"})
    assert "--autoscale=4,1" in from_defaults["options"] and from_defaults["concurrency"] is None
    with pytest.raises(AnsibleFilterError, match=r"celery_worker_defaults sets both autoscale and concurrency"):
        worker_specs([{"name": "d"}], {"autoscale": "4,1", "concurrency": 2})


def test_time_limits_reach_the_command_line_where_the_pool_enforces_them():
    [prefork, green] = worker_specs([{"name": "a", "time_limit": 30, "soft_time_limit": "20"},
                                     {"name": "g", "pool": "gevent", "time_limit": 30}], {})
    assert prefork["options"][-3:] == ["--time-limit=30", "--soft-time-limit=20", "--loglevel=INFO"]
    assert "--time-limit=30" in green["options"] and green["soft_time_limit"] is None


def test_unknown_default_fields_are_refused():
    with pytest.raises(AnsibleFilterError, match="celery_worker_defaults has unknown fields colour"):
        worker_specs([{"name": "a"}], dict(DEFAULTS, colour="blue"))
