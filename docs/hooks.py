"""mkdocs hooks: the API reference generated from the packages, and the
figures of examples/results served from where they are kept.

One page per area of the code (reference/api/<area>.md), listing every public
module of that area found on disk, so a module added to the code appears in
the reference without editing the docs; tests/test_docs.py checks it does.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]

# area -> (package folder, what it holds); the order is the import layers', bottom to top
AREAS = {
    "core": ("toolchain/core", "The core layer: errors, atomic files, configuration, metrics, "
                               "Loihi fixed point, the checkpoint format, percent formatting."),
    "data": ("toolchain/data", "DDD17 and PASCAL VOC readers, raw event recordings, generated "
                               "DDD17-format scenes, input encoders, the data check."),
    "models": ("models", "Network definitions: the slayer graph, Spiking DeepLab and FCN, the "
                         "ANN twin, the fused CPU neuron, the registry and the checkpoint reader."),
    "deploy": ("deploy", "Everything after training: the .net file, export, the emulator, the Lava "
                         "network and its host runner, evaluation, ONNX and NIR, prediction, SynOps."),
    "train": ("toolchain/train", "The training loop, distributed set-up and training plots."),
    "studies": ("toolchain/studies", "Conversion, the T sweep, energy, the accuracy-energy front, "
                                     "robustness and the report."),
    "bench": ("toolchain/bench", "`toolchain bench`: the cases, measurements in child processes, "
                                 "memory sampling, the comparison of rows, the table, training throughput."),
    "cli": ("toolchain/cli", "The `toolchain` command's modules (see the [command line](../cli.md) "
                             "page for every command and option)."),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def public_modules(area: str) -> list[str]:
    """Every public module of an area: its package first, then its modules by
    name; `toolchain` itself (the version) opens the core area."""
    folder = ROOT / AREAS[area][0]
    found = [p for p in folder.rglob("*.py")
             if "__pycache__" not in p.parts and not any(part.startswith("_") and part != "__init__.py"
                                                          for part in p.relative_to(folder).parts)]
    names = sorted({module_name(p) for p in found}, key=lambda m: (m.count("."), m))
    return (["toolchain"] if area == "core" else []) + names


def api_page(area: str) -> str:
    package, about = AREAS[area]
    lines = [f"# {package.replace('/', '.')}", "", about, "",
             "Generated from the docstrings; modules and names starting with `_` are private.", ""]
    for module in public_modules(area):
        lines += [f"::: {module}", ""]
    return "\n".join(lines)


def on_files(files: Files, config) -> Files:
    for area in AREAS:
        files.append(File.generated(config, f"reference/api/{area}.md", content=api_page(area)))
    for png in sorted((ROOT / "examples" / "results").glob("*.png")):
        files.append(File.generated(config, f"img/results/{png.name}", abs_src_path=str(png)))
    return files
