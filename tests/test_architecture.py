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
    ("toolchain.core", 0),
]
LAYER_NAMES = ["core", "data", "models", "deploy", "train/studies/bench", "cli"]


def layer_of(module: str) -> int | None:
    if module == "toolchain":  # the package's own __init__: its version only
        return 0
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


def import_graph(files) -> dict[str, set[str]]:
    """module -> the project modules it imports (lazy imports included). An
    import of `a.b.name` counts as one of the longest project module it names;
    the implicit import of a module's parent packages is not counted."""
    modules = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path in files:
        me = module_name(path)
        for _, target in imports(path):
            parts = target.split(".")
            owner = next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in modules),
                         None)
            if owner is not None and owner != me:
                graph[me].add(owner)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: each strongly connected group of two or more
    modules, sorted (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_every_module_belongs_to_a_layer():
    assert [module_name(p) for p in project_files() if layer_of(module_name(p)) is None] == []


def test_imports_flow_down_the_layers_and_only_the_cli_imports_click():
    assert violations(project_files()) == []


def test_a_reversed_import_is_caught(tmp_path, monkeypatch):
    """The checker itself: a core module importing the CLI, lazily, is reported."""
    fake_root = tmp_path
    (fake_root / "toolchain" / "core").mkdir(parents=True)
    bad = fake_root / "toolchain" / "core" / "metrics.py"
    bad.write_text("def f():\n    from ..cli import main\n    import click\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    assert sorted(violations([bad])) == ["toolchain/core/metrics.py:2: toolchain.core.metrics (core) imports toolchain.cli (cli)",
                                         "toolchain/core/metrics.py:3: imports click outside toolchain.cli"]


def test_no_module_imports_itself_through_others():
    """No import cycles, lazy imports included: a cycle means two modules are one concept split in two."""
    assert cycles(import_graph(project_files())) == []


def test_an_import_cycle_is_caught(tmp_path, monkeypatch):
    """The checker itself: a lazy import closing a loop of three modules is reported."""
    (tmp_path / "deploy").mkdir()
    files = {"a": "from .b import f\n", "b": "from . import c\n", "c": "def g():\n    from .a import h\n",
             "d": "from .a import f\n"}
    for name, text in files.items():
        (tmp_path / "deploy" / f"{name}.py").write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    paths = sorted((tmp_path / "deploy").glob("*.py"))
    assert cycles(import_graph(paths)) == [["deploy.a", "deploy.b", "deploy.c"]]


@pytest.mark.parametrize("name", ["deploy", "models", "toolchain"])
def test_packages_import_without_the_cli(name):
    """Importing a library layer never pulls in click (the CLI stays on top)."""
    code = f"import sys, {name}; sys.exit('click' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
