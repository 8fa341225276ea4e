"""The wheel works anywhere: built from the project, installed without its
dependencies into a folder of its own on this environment, and run from a
folder outside the checkout, with the checkout made unimportable.

The configurations the commands read by default are package data
(toolchain/core/configs, read with importlib.resources); examples/ holds the
same files for users to read and copy, and the first test keeps the two
copies identical.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from toolchain.core.config import load_config, shipped_config, shipped_configs

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "toolchain" / "core" / "configs"

# Loaded by every Python process of the run (PYTHONPATH), the bench's children
# included: drops the editable install's import hook and the checkout's folder
# from the path, so a module or file missing from the wheel cannot be found in
# the checkout instead.
GUARD = '''
import os, sys
CHECKOUT = {root!r}
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != CHECKOUT]
'''

PROBE = '''
import importlib.util, json, sys
import deploy, models, toolchain
from toolchain.core.config import load_config, shipped_config
print(json.dumps(dict(
    files=[m.__file__ for m in (toolchain, models, deploy)],
    config=str(shipped_config("ddd17-tiny")),
    example_model=load_config("examples/ddd17-tiny.yaml").model.name,
    tests=importlib.util.find_spec("tests.test_wheel") is not None,
    path=sys.path, version=toolchain.__version__)))
'''


def test_the_shipped_configs_are_the_examples():
    """One set of files: examples/ (what users read and pass) equals the
    package data byte for byte. To change a config, edit examples/NAME.yaml and
    copy it to toolchain/core/configs/."""
    examples = {p.name: p.read_bytes() for p in (ROOT / "examples").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in SHIPPED.glob("*.yaml")}
    assert sorted(examples) == sorted(shipped) == shipped_configs(), (
        "examples/*.yaml and toolchain/core/configs/*.yaml name different files")
    differ = [n for n in examples if examples[n] != shipped[n]]
    assert not differ, f"edited in one place only (copy examples/X.yaml to toolchain/core/configs/): {differ}"


def test_a_shipped_config_is_found_by_name_and_as_the_examples_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no examples/ here
    assert shipped_config("ddd17-tiny") == SHIPPED / "ddd17-tiny.yaml"
    assert load_config("examples/ddd17-small.yaml").model.name == "spiking-deeplab-small"
    assert load_config("voc.yaml").data.dataset == "voc"
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "ddd17-tiny.yaml").write_text("model:\n  name: spiking-fcn-tiny\n")
    assert load_config("examples/ddd17-tiny.yaml").model.name == "spiking-fcn-tiny"  # a user's file wins


def test_a_missing_config_names_the_shipped_ones(tmp_path, monkeypatch):
    from toolchain.core.errors import ToolchainError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ToolchainError, match=r"other/ddd17-tiny.yaml: config file not found.*ddd17-tiny.yaml"):
        load_config("other/ddd17-tiny.yaml")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(target, env): the wheel built from a copy of the project's sources and
    installed with `pip install --no-deps --target`; env runs Python with only
    that target (and the guard) on PYTHONPATH."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in ("toolchain", "models", "deploy"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist, target, guard = tmp / "dist", tmp / "target", tmp / "guard"
    # the build backend comes from [build-system] in an isolated environment, as for any user
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(src)],
                   check=True, cwd=tmp)
    wheel = next(dist.glob("toolchain-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert {f"toolchain/core/configs/{n}" for n in shipped_configs()} <= set(names)
    assert not any(n.startswith(("examples/", "tests/", "scripts/")) for n in names)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--target", str(target), str(wheel)], check=True, cwd=tmp)
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD.format(root=str(ROOT)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=f"{target}{os.pathsep}{guard}", PYTHONWARNINGS="ignore")
    return target, env, wheel


@pytest.mark.slow
def test_the_wheel_carries_complete_metadata(installed):
    _, _, wheel = installed
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    head = meta.split("\n\n", 1)[0]
    assert "Version: 0.2.0" in head and "License-Expression: MIT" in head
    assert "Requires-Python: <3.11,>=3.10" in head
    assert "Project-URL: Paper, https://arxiv.org/abs/2110.07742" in head  # the project has no public home yet
    assert "Classifier: Programming Language :: Python :: 3.10" in head
    requires = [line.split(";")[0] for line in head.splitlines() if line.startswith("Requires-Dist:")]
    assert len(requires) > 20 and not [r for r in requires if "==" in r]  # ranges; exact versions in the lock


@pytest.mark.slow
def test_the_installed_wheel_imports_from_its_target_and_not_the_checkout(installed, tmp_path):
    target, env, _ = installed
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    assert all(f.startswith(str(target)) for f in probe["files"]), probe["files"]
    assert probe["config"].startswith(str(target))
    assert probe["example_model"] == "spiking-deeplab-tiny"  # examples/... from a folder without examples/
    assert not probe["tests"] and str(ROOT) not in probe["path"]  # the checkout's tests/ is not importable
    assert probe["version"] == "0.2.0"


@pytest.mark.slow
@pytest.mark.lava
def test_bench_quick_runs_from_the_installed_wheel_outside_the_checkout(installed, tmp_path):
    """`toolchain bench --quick` through the wheel's own entry point, from an
    empty folder: the tiny preset's config is package data, every row runs."""
    target, env, _ = installed
    toolchain = target / "bin" / "toolchain"
    assert toolchain.is_file()
    r = subprocess.run([str(toolchain), "--version"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "0.2.0" in r.stdout, r.stderr
    r = subprocess.run([str(toolchain), "bench", "--quick", "--json", "bench.json"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    (case,) = report["cases"]
    assert {row["backend"] for row in case["rows"]} == {"lava-stock", "lava", "emulator"}
    assert report["training"]["toolchain_samples_per_s"] > 0 and report["evaluation"]["frames"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # nothing written beside it
