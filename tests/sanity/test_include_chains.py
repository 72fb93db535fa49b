"""The task files a playbook runs, followed through every include and import.

- a site, release or rollback run never goes more than four task files deep;
- every task file a role or playbook includes is named literally (a grep for
  its name finds who calls it): only the role of an include may be chosen at
  run time, and then only among the roles a process manager choice allows.

A task file counts once per level: `release/install` including the `worker`
role is two files, the worker role's `main.yml` importing its `preflight.yml`
three.
"""
import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PREFIX = "celeryops.celery."
MAX_DEPTH = 4
INCLUDE_TASKS = {"ansible.builtin.include_tasks", "ansible.builtin.import_tasks"}
INCLUDE_ROLE = {"ansible.builtin.include_role", "ansible.builtin.import_role"}
# The role names an include may build at run time, and what they can become.
RUNTIME_ROLES = {
    "celery_process_manager": ["systemd", "supervisor"],
    "__celery_other_manager": ["systemd", "supervisor"],
}
TEMPLATED_ROLE = re.compile(r"^celeryops\.celery\.\{\{ (\w+) \}\}$")


def load(path):
    with open(path) as handle:
        return yaml.safe_load(handle) or []


def tasks_of(entries):
    """Every task of a task list, blocks opened."""
    for entry in entries or []:
        if "block" in entry:
            for part in ("block", "rescue", "always"):
                yield from tasks_of(entry.get(part))
        else:
            yield entry


def role_names(name, task):
    """The roles an include_role's `name` may stand for."""
    match = TEMPLATED_ROLE.match(name)
    if match is None:
        assert name.startswith(PREFIX) and "{{" not in name, "include_role of %r" % name
        return [name[len(PREFIX):]]
    var = match.group(1)
    if var in RUNTIME_ROLES:
        return RUNTIME_ROLES[var]
    loop = task.get("loop")
    assert task.get("loop_control", {}).get("loop_var") == var and isinstance(loop, list), (
        "include_role of %r: the role comes from neither a manager choice nor a literal loop" % name)
    return [r for item in loop for r in role_names(PREFIX + item, {})]


def includes(path):
    """(task file) for each include or import in a task file."""
    found = []
    for task in tasks_of(load(path)):
        for key in INCLUDE_TASKS & task.keys():
            value = task[key]
            name = value["file"] if isinstance(value, dict) else value
            assert "{{" not in name, "%s: %s of a name built at run time: %r" % (path, key, name)
            found.append(path.parent / name)
        for key in INCLUDE_ROLE & task.keys():
            value = task[key]
            tasks_from = value.get("tasks_from", "main")
            assert "{{" not in tasks_from, "%s: tasks_from built at run time: %r" % (path, tasks_from)
            for role in role_names(value["name"], task):
                found.append(ROOT / "roles" / role / "tasks" / (tasks_from + ".yml"))
    return found


def chains(path, seen=()):
    """Every chain of task files from this one down."""
    assert path.is_file(), "%s includes %s, which does not exist" % (seen[-1] if seen else "?", path)
    assert path not in seen, "include loop: %s" % " -> ".join(map(str, seen + (path,)))
    below = [c for child in includes(path) for c in chains(child, seen + (path,))]
    return [(path,) + c for c in below] or [(path,)]


def playbook_chains(playbook):
    result = []
    for play in load(ROOT / "playbooks" / playbook):
        for role in play.get("roles", []):
            name = role["role"] if isinstance(role, dict) else role
            result += chains(ROOT / "roles" / role_names(name, {})[0] / "tasks" / "main.yml")
        for task in tasks_of(play.get("tasks")):
            for key in INCLUDE_ROLE & task.keys():
                for role in role_names(task[key]["name"], task):
                    result += chains(ROOT / "roles" / role / "tasks" / (task[key].get("tasks_from", "main") + ".yml"))
    return result


def show(chain):
    return " -> ".join(str(p.relative_to(ROOT / "roles")) for p in chain)


@pytest.mark.parametrize("playbook", ["site.yml", "release.yml", "rollback.yml"])
def test_a_run_goes_at_most_four_task_files_deep(playbook):
    deepest = max(playbook_chains(playbook), key=len)
    assert len(deepest) <= MAX_DEPTH, "%d task files deep: %s" % (len(deepest), show(deepest))


@pytest.mark.parametrize("playbook", ["site.yml", "release.yml", "rollback.yml"])
def test_every_task_file_a_run_reaches_is_named_literally(playbook):
    # includes() refuses a file name built at run time; this walks every one.
    assert playbook_chains(playbook)


def test_every_role_entry_point_is_reached_from_a_playbook_or_its_main():
    reached = {p for book in ("site.yml", "release.yml", "rollback.yml") for c in playbook_chains(book) for p in c}
    for role in (ROOT / "roles").iterdir():
        main = role / "tasks" / "main.yml"
        if main.exists():
            reached |= {p for c in chains(main) for p in c}
    documented = {ROOT / "roles" / r / "tasks" / (e + ".yml")
                  for r in (p.name for p in (ROOT / "roles").iterdir())
                  for e in (load(ROOT / "roles" / r / "meta" / "argument_specs.yml") or {}).get("argument_specs", {})
                  if (ROOT / "roles" / r / "meta" / "argument_specs.yml").exists()}
    orphans = sorted(str(p.relative_to(ROOT / "roles")) for p in (ROOT / "roles").glob("*/tasks/*.yml")
                     if p not in reached and p not in documented)
    assert orphans == [], "task files that nothing includes: %s" % orphans
