"""The documentation site: it builds with --strict (a broken link, anchor,
snippet or API reference fails), every CLI command and every public module
appears in its reference, every page is reachable from the navigation, and the
README stays a front page whose links resolve.

`make docs` builds the same site into site/; tests/test_report_browser.py
opens its front page in headless Chromium.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from toolchain.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_site(out: Path) -> Path:
    """`mkdocs build --strict` into `out`, as `make docs` does; returns `out`."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return out


def cli_command_paths() -> list[str]:
    """Every command as typed: `toolchain data synth`, `toolchain train`, ..."""
    ctx = click.Context(cli, info_name="toolchain")
    paths = []
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        paths.append(f"toolchain {name}")
        if isinstance(cmd, click.Group):
            paths += [f"toolchain {name} {sub}" for sub in cmd.list_commands(ctx)]
    return paths


def all_modules() -> list[str]:
    """Every module of the three installed packages, found on disk independently of the hooks."""
    found = []
    for pkg in ("toolchain", "models", "deploy"):
        for p in (ROOT / pkg).rglob("*.py"):
            if "__pycache__" in p.parts:
                continue
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append(".".join(parts))
    return sorted(found)


def nav_pages(nav) -> list[str]:
    out = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        out += nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_every_public_module_is_on_an_api_page():
    hooks = _hooks()
    listed = [m for area in hooks.AREAS for m in hooks.public_modules(area)]
    public = [m for m in all_modules() if not any(part.startswith("_") for part in m.split("."))]
    assert sorted(listed) == public, "docs/hooks.py AREAS miss or repeat a module"


def test_every_page_is_in_the_navigation_and_every_area_has_its_page():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)  # BaseLoader: no !tags needed
    nav = nav_pages(config["nav"])
    written = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    generated = [f"reference/api/{area}.md" for area in _hooks().AREAS]
    assert sorted(set(written) | set(generated)) == sorted(nav)


def test_the_readme_is_a_front_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    for heading in ("## In three figures", "## Install", "## Two commands", "## Quickstart: the command line",
                    "## Quickstart: Python and Lava", "## Documentation"):
        assert heading in text
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert len(local) > 20
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to files that are not there: {missing}"
    for stale in ("run/model.pt", "this release", "previous release", "earlier release"):
        assert stale not in text


def test_results_and_benchmark_tables_name_date_version_and_machine():
    for page in ("results.md", "benchmarks.md"):
        text = (DOCS / page).read_text()
        # every second-level section holding a table opens with its note: date, version, machine
        for section in re.split(r"\n## ", text)[1:]:
            if "\n|---" in section or "\n```\ncase" in section:
                note = re.search(r'!!! note "(?:Measured|Run) (\d{4}-\d{2}[-/\d]*) · toolchain (\d+\.\d+\.\d+) · ([^"]+)"',
                                 section)
                assert note, f"{page}: section {section.splitlines()[0]!r} has a table but no dated note"
                assert "CPU" in note[3] or "GPU" in note[3]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return build_site(tmp_path_factory.mktemp("docs") / "site")


@pytest.mark.slow
def test_the_site_builds_strictly_with_every_command_and_module(site):
    cli_page = (site / "reference" / "cli" / "index.html").read_text()
    ids = set(re.findall(r'id="([^"]+)"', cli_page))
    missing = [p for p in cli_command_paths() if p.replace(" ", "-") not in ids]
    assert not missing, f"commands missing from the command line reference: {missing}"
    hooks = _hooks()
    for area in hooks.AREAS:
        page = (site / "reference" / "api" / area / "index.html").read_text()
        ids = set(re.findall(r'id="([^"]+)"', page))
        absent = [m for m in hooks.public_modules(area) if m not in ids]
        assert not absent, f"modules missing from reference/api/{area}: {absent}"
    home = (site / "index.html").read_text()
    assert "img/results/small-gallery.png" in home and (site / "img" / "results" / "small-gallery.png").is_file()
    changelog = (site / "changelog" / "index.html").read_text()
    assert "0.2.0" in changelog and "0.1.0" in changelog
