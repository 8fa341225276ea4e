"""requirements.lock: every installed package pinned, in step with pyproject.toml.

pyproject.toml states compatible ranges (what an installed wheel accepts);
exact versions live in the lock alone. `make lock` resolves the ranges into
the lock; `make setup` installs exactly the lock. These tests fail when a
range is written as an exact pin, when a range changes so that the lock
falls outside it without `make lock`, when the lock misses a direct
dependency, and when the environment differs from the lock.
"""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "toolchain"  # installed editable; not in the lock


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject_text: str) -> dict[str, Requirement]:
    """{name: requirement} of [project.dependencies] and every extra (dev, docs)."""
    project = tomllib.loads(pyproject_text)["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {canonical(r.name): r for r in map(Requirement, reqs)}


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
    """Each requirement of pyproject.toml the lock lacks or holds outside its range."""
    lock = locked(lock_text)
    return [f"{name}: pyproject.toml asks {req.specifier}, requirements.lock has {lock.get(name, 'nothing')}"
            for name, req in requirements(pyproject_text).items()
            if name not in lock or not req.specifier.contains(lock[name], prereleases=True)]


def exact_pins(pyproject_text: str) -> list[str]:
    """Requirements pinned to one version (== or ===): those belong in the lock."""
    return [str(r) for r in requirements(pyproject_text).values()
            if any(s.operator in ("==", "===") for s in r.specifier)]


def test_every_requirement_of_pyproject_is_in_the_lock_within_its_range():
    bad = disagreements((ROOT / "pyproject.toml").read_text(), (ROOT / "requirements.lock").read_text())
    assert not bad, "ranges and lock disagree; run `make lock`:\n" + "\n".join(bad)


def test_pyproject_states_ranges_and_the_lock_alone_exact_versions():
    text = (ROOT / "pyproject.toml").read_text()
    assert exact_pins(text) == [], "exact versions belong in requirements.lock"
    assert all(r.specifier for r in requirements(text).values()), "every requirement states its range"
    assert exact_pins(re.sub(r'"torch[^"]*"', '"torch==2.3.1"', text, count=1)) == ["torch==2.3.1"]


def test_a_range_the_lock_falls_outside_or_a_missing_package_is_caught():
    pyproject, lock = (ROOT / "pyproject.toml").read_text(), (ROOT / "requirements.lock").read_text()
    torch = requirements(pyproject)["torch"]
    locked_torch = locked(lock)["torch"]
    moved = re.sub(r'"torch[^"]*"', '"torch>=9"', pyproject, count=1)
    assert disagreements(moved, lock) == [f"torch: pyproject.toml asks >=9, requirements.lock has {locked_torch}"]
    no_torch = "\n".join(l for l in lock.splitlines() if not l.lower().startswith("torch=="))
    assert disagreements(pyproject, no_torch) == [
        f"torch: pyproject.toml asks {torch.specifier}, requirements.lock has nothing"]


def test_the_docs_tools_are_locked():
    lock = locked((ROOT / "requirements.lock").read_text())
    for name in ("mkdocs", "mkdocs-material", "mkdocstrings", "mkdocstrings-python", "mkdocs-click"):
        assert name in lock, f"requirements.lock lacks {name}"


def test_the_lock_holds_transitive_dependencies_too():
    lock = locked((ROOT / "requirements.lock").read_text())
    direct = requirements((ROOT / "pyproject.toml").read_text())
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
