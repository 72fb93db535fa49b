"""Role defaults and argument specs stay in step.

- every variable a role's defaults set is an option of its argument spec, with
  the same default, and every option is in the defaults unless it is required;
- a variable shared by several roles has one type and one default everywhere;
- a role whose `preflight` tasks another role or playbook includes has a
  `preflight` entry point that checks exactly what its `main` checks;
- the settings every role shares are defined once, in the common and app
  roles, and every other role gets them by depending on one of those two.
"""
import pathlib

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "meta" / "argument_specs.yml").exists())


def load(path):
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def specs(role):
    return load(ROOT / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]


def defaults(role):
    path = ROOT / "roles" / role / "defaults" / "main.yml"
    return load(path) if path.exists() else {}


def test_every_role_has_an_argument_spec():
    assert set(ROLES) >= {"env", "logdirs", "systemd", "worker"}


@pytest.mark.parametrize("role", ROLES)
def test_defaults_and_argument_spec_list_the_same_variables(role):
    options = specs(role)["main"]["options"]
    values = defaults(role)
    missing_from_spec = sorted(set(values) - set(options))
    assert not missing_from_spec, "%s: defaults not in meta/argument_specs.yml: %s" % (role, missing_from_spec)
    missing_from_defaults = sorted(
        name for name, option in options.items() if name not in values and not option.get("required"))
    assert not missing_from_defaults, "%s: options with no default in defaults/main.yml: %s" % (role, missing_from_defaults)
    for name, option in options.items():
        if option.get("required"):
            assert name not in values, "%s: %s is required yet has a default" % (role, name)
            continue
        assert option.get("default") == values[name], (
            "%s: %s defaults to %r in defaults/main.yml but %r in argument_specs" % (role, name, values[name], option.get("default")))


@pytest.mark.parametrize("role", ROLES)
def test_every_option_is_prefixed_and_described(role):
    for name, option in specs(role)["main"]["options"].items():
        assert name.startswith("celery_"), "%s: %s lacks the celery_ prefix" % (role, name)
        assert option.get("description"), "%s: %s has no description" % (role, name)
        assert option.get("type"), "%s: %s has no type" % (role, name)


def included_preflights():
    """The roles whose `preflight` tasks a role or playbook includes
    (`tasks_from: preflight`), read from the task files themselves: a role
    name templated over a loop or over celery_process_manager counts for each
    role it can name."""
    found = set()
    managers = ("systemd", "supervisor")
    for path in sorted(ROOT.glob("roles/*/tasks/*.yml")) + sorted(ROOT.glob("playbooks/*.yml")):
        for task in walk_tasks(load(path) or []):
            include = task.get("ansible.builtin.include_role") or task.get("ansible.builtin.import_role")
            if not isinstance(include, dict) or include.get("tasks_from") != "preflight":
                continue
            name = include["name"].replace("celeryops.celery.", "")
            loop_var = (task.get("loop_control") or {}).get("loop_var", "item")
            if "{{" in name and loop_var in name:
                candidates = task["loop"]
            else:
                candidates = [name]
            for candidate in candidates:
                if "celery_process_manager" in candidate:
                    found.update(managers)
                else:
                    assert "{{" not in candidate, "%s: cannot tell which role %r names" % (path, candidate)
                    found.add(candidate)
    return found


def walk_tasks(items):
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        yield item
        for key in ("tasks", "block", "rescue", "always", "pre_tasks", "post_tasks", "handlers"):
            yield from walk_tasks(item.get(key))


def test_the_preflight_includes_are_found():
    # The reader above must see what the worker and release roles include.
    assert {"env", "systemd", "supervisor", "beat", "release"} <= included_preflights()


@pytest.mark.parametrize("role", sorted(included_preflights()))
def test_an_included_preflight_checks_what_main_checks(role):
    # include_role validates the arguments of the entry point named by
    # tasks_from; without a `preflight` entry point nothing is checked there.
    entry_points = specs(role)
    assert "preflight" in entry_points, "%s: its preflight tasks are included but it has no preflight entry point" % role
    assert entry_points["preflight"].get("options"), "%s: the preflight entry point checks no option" % role
    assert entry_points["preflight"]["options"] == entry_points["main"]["options"], \
        "%s: the preflight entry point does not check what main checks" % role


def test_shared_variables_agree_across_roles():
    seen = {}
    for role in ROLES:
        for name, option in specs(role)["main"]["options"].items():
            shape = {k: option.get(k) for k in ("type", "elements", "default", "choices", "required")}
            seen.setdefault(name, []).append((role, shape))
    disagreements = {
        name: uses for name, uses in seen.items()
        if len({repr(shape) for _use, shape in uses}) > 1
    }
    assert not disagreements, "shared variables differ between roles: %s" % disagreements


SHARED_ROLES = ("common", "app")


def dependencies(role):
    meta = load(ROOT / "roles" / role / "meta" / "main.yml")
    return [(dep["role"] if isinstance(dep, dict) else dep).replace("celeryops.celery.", "")
            for dep in meta.get("dependencies") or []]


@pytest.mark.parametrize("role", [role for role in ROLES if role not in SHARED_ROLES])
def test_a_shared_setting_is_defined_once(role):
    shared = {}
    for owner in SHARED_ROLES:
        shared.update(dict.fromkeys(specs(owner)["main"]["options"], owner))
    again = {name: shared[name] for name in specs(role)["main"]["options"] if name in shared}
    assert not again, "%s declares settings that belong to a shared role: %s" % (role, again)
    assert not set(defaults(role)) & set(shared), "%s sets defaults of shared settings: %s" % (
        role, sorted(set(defaults(role)) & set(shared)))


@pytest.mark.parametrize("role", [role for role in ROLES if role != "common"])
def test_every_role_gets_the_shared_settings_from_a_dependency(role):
    # A dependency runs once per host and play, before the role's first task,
    # and its defaults are the role's: that is what makes the checks run once.
    assert set(dependencies(role)) & set(SHARED_ROLES), "%s depends on neither the common nor the app role" % role
