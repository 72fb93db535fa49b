"""The dependencies of a release's virtualenv, and a copy of the running
release's virtualenv for a release whose dependencies are the same.

  release_venv.py reuse RUNNING_VENV NEW_VENV DEPENDENCIES_JSON
      Copies RUNNING_VENV to NEW_VENV when the stamp in RUNNING_VENV names the
      same dependencies, points the copy's scripts at NEW_VENV and compiles
      its modules there. Never a link or a shared directory: a rollback keeps
      the old dependencies.
  release_venv.py stamp NEW_VENV DEPENDENCIES_JSON
      Writes the stamp of NEW_VENV after an install.

DEPENDENCIES_JSON: {"python": ..., "packages": [...], "extra_args": ...,
"requirements": absolute path of the requirements file or ""}. The stamp is
the SHA-256 of those with the requirements file's bytes. A requirements file
that reaches beyond itself (-r, -c, -e, a local path) has no stamp: its
dependencies cannot be told from its text.

Prints one JSON object: {"reused": bool, "changed": bool, "reason": str}.
"""
import compileall
import hashlib
import json
import os
import re
import shutil
import sys

STAMP = ".celeryops-dependencies"
# Lines whose dependencies live outside the file's own text.
OUTSIDE = re.compile(r"^\s*(-r|-c|-e|--requirement|--constraint|--editable|\.|/|file:)")


def dependencies_hash(spec):
    """The stamp of these dependencies, or (None, why) when there is none."""
    digest = hashlib.sha256()
    digest.update(json.dumps([spec["python"], spec["packages"], spec["extra_args"]]).encode())
    if spec["requirements"]:
        with open(spec["requirements"], "rb") as handle:
            text = handle.read()
        outside = [line for line in text.decode("utf-8", "replace").splitlines() if OUTSIDE.match(line)]
        if outside:
            return None, "the requirements reach beyond their file (%s)" % outside[0].strip()
        digest.update(text)
    return digest.hexdigest(), ""


def read_stamp(venv):
    try:
        with open(os.path.join(venv, STAMP)) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def point_scripts_at(venv, old):
    """Scripts and pyvenv.cfg name their virtualenv's absolute path."""
    old_b, new_b = old.encode(), venv.encode()
    paths = [os.path.join(venv, "pyvenv.cfg")]
    bindir = os.path.join(venv, "bin")
    paths += [os.path.join(bindir, name) for name in sorted(os.listdir(bindir))]
    for path in paths:
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as handle:
            data = handle.read()
        if b"\0" in data or old_b not in data:
            continue
        mode = os.stat(path).st_mode
        with open(path, "wb") as handle:
            handle.write(data.replace(old_b, new_b))
        os.chmod(path, mode)


def reuse(running, new, spec):
    want, why = dependencies_hash(spec)
    if want is None:
        return {"reused": False, "changed": False, "reason": why}
    have = read_stamp(running)
    if have != want:
        return {"reused": False, "changed": False,
                "reason": "the running virtualenv holds other dependencies" if have else
                          "the running virtualenv has no record of its dependencies"}
    if os.path.lexists(new):
        return {"reused": False, "changed": False, "reason": "%s exists" % new}
    old = os.path.realpath(running)
    try:
        # Compiled modules carry their source's path: compiled again at the
        # new one, or tracebacks would name (and, once it is pruned, fail to
        # show) the old release's files.
        shutil.copytree(old, new, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        point_scripts_at(new, old)
        compileall.compile_dir(os.path.join(new, "lib"), quiet=2, workers=0)
    except OSError as error:
        shutil.rmtree(new, ignore_errors=True)
        return {"reused": False, "changed": False, "reason": "copying %s failed: %s" % (old, error)}
    return {"reused": True, "changed": True, "reason": "the same dependencies as %s" % old}


def stamp(new, spec):
    want, why = dependencies_hash(spec)
    path = os.path.join(new, STAMP)
    if want is None:
        if os.path.exists(path):
            os.unlink(path)
            return {"reused": False, "changed": True, "reason": why}
        return {"reused": False, "changed": False, "reason": why}
    if read_stamp(new) == want:
        return {"reused": False, "changed": False, "reason": "recorded"}
    with open(path, "w") as handle:
        handle.write(want + "\n")
    os.chmod(path, 0o644)
    return {"reused": False, "changed": True, "reason": "recorded"}


def main(argv):
    if len(argv) == 5 and argv[1] == "reuse":
        result = reuse(argv[2], argv[3], json.loads(argv[4]))
    elif len(argv) == 4 and argv[1] == "stamp":
        result = stamp(argv[2], json.loads(argv[3]))
    else:
        sys.stderr.write(__doc__)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
