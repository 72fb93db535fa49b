"""roles/release/files/release_venv.py: a release whose dependencies are the
running release's gets a copy of its virtualenv, pointed at its own path;
anything else is installed anew."""
import importlib.util
import json
import marshal
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[3] / "roles" / "release" / "files" / "release_venv.py"
SPEC = importlib.util.spec_from_file_location("release_venv", SCRIPT)
release_venv = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(release_venv)


def run(*args):
    out = subprocess.run([sys.executable, str(SCRIPT)] + [str(a) for a in args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


@pytest.fixture
def releases(tmp_path):
    """releases/v1 with a virtualenv built and stamped as an install leaves it,
    a console script naming it, and releases/v2 unpacked with the same
    requirements; `current` points at v1."""
    v1, v2 = tmp_path / "releases" / "v1", tmp_path / "releases" / "v2"
    for release in (v1, v2):
        release.mkdir(parents=True)
        (release / "requirements.txt").write_text("celery[redis]==5.7.0\n")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(v1 / ".venv")], check=True)
    # A package compiled where pip installed it.
    site = next((v1 / ".venv" / "lib").glob("python*")) / "site-packages"
    (site / "depmod.py").write_text("def where():\n    return __file__\n")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(site)], check=True)
    script = v1 / ".venv" / "bin" / "celery"
    script.write_text("#!%s/.venv/bin/python\nimport sys\nprint(sys.prefix)\n" % v1)
    script.chmod(0o755)
    (tmp_path / "current").symlink_to(v1)
    return tmp_path, v1, v2


def spec(release, **changes):
    base = {"python": "/usr/bin/python3", "packages": [], "extra_args": "",
            "requirements": str(release / "requirements.txt")}
    base.update(changes)
    return json.dumps(base)


def test_the_same_dependencies_get_a_copy_pointed_at_the_new_release(releases):
    root, v1, v2 = releases
    assert run("stamp", v1 / ".venv", spec(v1)) == {"reused": False, "changed": True, "reason": "recorded"}
    result = run("reuse", root / "current" / ".venv", v2 / ".venv", spec(v2))
    assert result["reused"] and result["changed"], result
    new = v2 / ".venv"
    assert not new.is_symlink() and os.stat(new).st_ino != os.stat(v1 / ".venv").st_ino
    assert (new / "bin" / "celery").read_text().splitlines()[0] == "#!%s/.venv/bin/python" % v2
    assert os.access(new / "bin" / "celery", os.X_OK)
    assert str(v1) not in (new / "pyvenv.cfg").read_text() + (new / "bin" / "activate").read_text()
    # The copy runs on its own: the old release may go.
    (root / "current").unlink()
    subprocess.run(["rm", "-rf", str(v1)], check=True)
    out = subprocess.run([str(new / "bin" / "celery")], check=True, capture_output=True, text=True).stdout
    assert out.strip() == str(new)
    # Its modules are compiled at its own path (tracebacks name the new files).
    pyc = next((new / "lib").glob("python*/site-packages/__pycache__/depmod.*.pyc"))
    code = marshal.loads(pyc.read_bytes()[16:])
    assert code.co_filename == str(next((new / "lib").glob("python*")) / "site-packages" / "depmod.py")
    # Its stamp came along: the next release can be copied from it.
    assert release_venv.read_stamp(str(new)) == release_venv.dependencies_hash(json.loads(spec(v2)))[0]


@pytest.mark.parametrize("change", [
    {"packages": ["gevent"]},
    {"extra_args": "--index-url https://packages.example.internal/simple"},
    {"python": "/usr/bin/python3.13"},
])
def test_other_settings_are_installed_anew(releases, change):
    root, v1, v2 = releases
    run("stamp", v1 / ".venv", spec(v1))
    result = run("reuse", root / "current" / ".venv", v2 / ".venv", spec(v2, **change))
    assert result == {"reused": False, "changed": False, "reason": "the running virtualenv holds other dependencies"}
    assert not (v2 / ".venv").exists()


def test_a_changed_requirement_is_installed_anew(releases):
    root, v1, v2 = releases
    run("stamp", v1 / ".venv", spec(v1))
    (v2 / "requirements.txt").write_text("celery[redis]==5.7.0\nhttpx==0.28.1\n")
    assert not run("reuse", root / "current" / ".venv", v2 / ".venv", spec(v2))["reused"]
    assert not (v2 / ".venv").exists()


@pytest.mark.parametrize("line", ["-r base.txt", "-c constraints.txt", "-e .", "./vendor/pkg", "/opt/wheels/x.whl",
                                  "file:///opt/x"])
def test_requirements_that_reach_beyond_their_file_are_never_copied(releases, line):
    root, v1, v2 = releases
    for release in (v1, v2):
        (release / "requirements.txt").write_text("celery[redis]==5.7.0\n%s\n" % line)
    result = run("stamp", v1 / ".venv", spec(v1))
    assert not result["changed"] and "reach beyond" in result["reason"]
    result = run("reuse", root / "current" / ".venv", v2 / ".venv", spec(v2))
    assert not result["reused"] and "reach beyond" in result["reason"], result
    assert not (v2 / ".venv").exists()


def test_a_virtualenv_without_a_stamp_is_never_copied(releases):
    root, _v1, v2 = releases
    result = run("reuse", root / "current" / ".venv", v2 / ".venv", spec(v2))
    assert result == {"reused": False, "changed": False, "reason": "the running virtualenv has no record of its dependencies"}


def test_stamping_twice_changes_nothing(releases):
    _root, v1, _v2 = releases
    assert run("stamp", v1 / ".venv", spec(v1))["changed"]
    assert not run("stamp", v1 / ".venv", spec(v1))["changed"]
