"""The import layers: each module imports only from its own layer or below.

Bottom to top: core (errors, files, config, metrics, Loihi fixed point) ->
data -> models -> deploy -> train / studies / bench -> cli. Every import
counts, including those inside functions, so a lazy import cannot hide a
reversed dependency. The CLI is the only place that imports click.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("toolchain", "models", "deploy")

# module prefix -> layer, most specific first
LAYERS = [
    ("toolchain.cli", 5),
    ("toolchain.train", 4), ("toolchain.studies", 4), ("toolchain.bench", 4),
    ("deploy", 3),
    ("models", 2),
    ("toolchain.data", 1),
    ("toolchain.errors", 0), ("toolchain.files", 0), ("toolchain.config", 0), ("toolchain.metrics", 0),
    ("toolchain.loihi", 0), ("toolchain", 0),
]
LAYER_NAMES = ["core", "data", "models", "deploy", "train/studies/bench", "cli"]


def layer_of(module: str) -> int | None:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                # `from . import x` may name a submodule: judge by the submodule
                found += [(node.lineno, f"{mod}.{a.name}" if not node.module else mod) for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def violations(files) -> list[str]:
    bad = []
    for path in files:
        me = module_name(path)
        mine = layer_of(me)
        for line, target in imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if target.split(".")[0] == "click" and not me.startswith("toolchain.cli"):
                bad.append(f"{where}: imports click outside toolchain.cli")
            theirs = layer_of(target)
            if theirs is not None and mine is not None and theirs > mine:
                bad.append(f"{where}: {me} ({LAYER_NAMES[mine]}) imports {target} ({LAYER_NAMES[theirs]})")
    return bad


def test_every_module_belongs_to_a_layer():
    assert [module_name(p) for p in project_files() if layer_of(module_name(p)) is None] == []


def test_imports_flow_down_the_layers_and_only_the_cli_imports_click():
    assert violations(project_files()) == []


def test_a_reversed_import_is_caught(tmp_path, monkeypatch):
    """The checker itself: a core module importing the CLI, lazily, is reported."""
    fake_root = tmp_path
    (fake_root / "toolchain").mkdir()
    bad = fake_root / "toolchain" / "metrics.py"
    bad.write_text("def f():\n    from .cli import main\n    import click\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    assert sorted(violations([bad])) == ["toolchain/metrics.py:2: toolchain.metrics (core) imports toolchain.cli (cli)",
                                         "toolchain/metrics.py:3: imports click outside toolchain.cli"]


@pytest.mark.parametrize("name", ["deploy", "models", "toolchain"])
def test_packages_import_without_the_cli(name):
    """Importing a library layer never pulls in click (the CLI stays on top)."""
    code = f"import sys, {name}; sys.exit('click' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
