"""requirements.lock: every installed package pinned, in step with pyproject.toml.

`make lock` writes the lock from pyproject.toml's pins; `make setup` installs
exactly the lock. These tests fail when a pin changes without `make lock`,
when the lock misses a pin, and when the environment differs from the lock.
"""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "toolchain"  # installed editable; not in the lock


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(pyproject_text: str) -> dict[str, str]:
    """{name: version} of [project.dependencies] and the dev extra; every entry must be name==version."""
    project = tomllib.loads(pyproject_text)["project"]
    out = {}
    for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
        m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;,]+)\s*", req)
        assert m, f"pyproject.toml: {req!r} is not pinned as name==version"
        out[canonical(m[1])] = m[2]
    return out


def locked(lock_text: str) -> dict[str, str]:
    """{name: version} of a `pip freeze` file; comments and blank lines ignored."""
    out = {}
    for n, line in enumerate(lock_text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        assert m, f"requirements.lock line {n}: {line!r} is not name==version"
        name = canonical(m[1])
        assert name not in out, f"requirements.lock line {n}: {m[1]} appears twice"
        out[name] = m[2]
    return out


def disagreements(pyproject_text: str, lock_text: str) -> list[str]:
    """Each pin of pyproject.toml the lock lacks or holds at another version."""
    lock = locked(lock_text)
    return [f"{name}: pyproject.toml pins {version}, requirements.lock has {lock.get(name, 'nothing')}"
            for name, version in pins(pyproject_text).items() if lock.get(name) != version]


def test_every_pin_of_pyproject_is_in_the_lock_at_the_same_version():
    bad = disagreements((ROOT / "pyproject.toml").read_text(), (ROOT / "requirements.lock").read_text())
    assert not bad, "pins and lock disagree; run `make lock`:\n" + "\n".join(bad)


def test_a_changed_or_missing_pin_is_caught():
    pyproject, lock = (ROOT / "pyproject.toml").read_text(), (ROOT / "requirements.lock").read_text()
    torch = pins(pyproject)["torch"]
    bumped = pyproject.replace(f'"torch=={torch}"', '"torch==0.0.1"')
    assert disagreements(bumped, lock) == [f"torch: pyproject.toml pins 0.0.1, requirements.lock has {torch}"]
    no_torch = "\n".join(l for l in lock.splitlines() if not l.lower().startswith("torch=="))
    assert disagreements(pyproject, no_torch) == [f"torch: pyproject.toml pins {torch}, requirements.lock has nothing"]


def test_the_lock_holds_transitive_dependencies_too():
    lock = locked((ROOT / "requirements.lock").read_text())
    direct = pins((ROOT / "pyproject.toml").read_text())
    assert len(lock) > len(direct)
    for name in ("pip", "setuptools", "tomli", "protobuf", "pluggy"):  # the set-up and pytest need these
        assert name in lock, f"requirements.lock lacks {name}"


def test_installed_environment_equals_the_lock():
    lock = locked((ROOT / "requirements.lock").read_text())
    installed = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    installed.pop(PROJECT, None)
    wrong = [f"{n}: installed {installed[n]}, locked {v}"
             for n, v in lock.items() if n in installed and installed[n] != v]
    missing = sorted(set(lock) - set(installed))
    extra = sorted(set(installed) - set(lock))
    assert not (wrong or missing or extra), (
        "the environment is not the lock; run `make setup`\n"
        f"different: {wrong}\nlocked, not installed: {missing}\ninstalled, not locked: {extra}")
