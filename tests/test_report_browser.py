"""The demo's report, opened in a real headless browser (Debian's chromium).

A demo-like folder is built with the real commands at toy sizes (SNN and ANN
training, export, Lava and emulator runs, conversion, sweep, energy,
robustness), `toolchain report` writes the page, and chromium loads it on a
laptop-sized window: every image must decode, the summary table must be the
first table and visible without scrolling, and it must fit the page width.
A screenshot of what a reader sees first is kept under pytest's tmp path.
The documentation site's front page is opened the same way.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from toolchain.cli import main

ROOT = Path(__file__).resolve().parents[1]

WINDOW = (1366, 768)  # a laptop screen
CHECK_ID = "browser-check"


def _on_load(measure: str) -> str:
    """A script that runs `measure` (JavaScript defining `result`) once the page
    and every image have loaded, and writes the result into the DOM as JSON."""
    return ("""<script>
window.addEventListener("load", () => {
""" + measure + """
  const pre = document.createElement("pre");
  pre.id = "CHECK_ID";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>""").replace("CHECK_ID", CHECK_ID)


# What the report's first screen shows.
CHECK_SCRIPT = _on_load("""
  const table = document.querySelector("table");
  const box = table ? table.parentElement : null;
  const result = {
    images: [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
                                           width: i.naturalWidth})),
    firstTableId: table ? table.id : null,
    firstTableTop: table ? table.getBoundingClientRect().top : null,
    firstTableRows: table ? table.rows.length : 0,
    firstTableFits: box ? table.scrollWidth <= box.clientWidth : false,
    firstHeading: (document.querySelector("h2") || {}).textContent,
    pageFits: document.documentElement.scrollWidth <= window.innerWidth,
    viewport: [window.innerWidth, window.innerHeight],
  };
""")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed by `make browser` (which `make test` runs)."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: run `make browser` (scripts/setup-browser.sh) first")
    return exe


def _browser(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> Path:
    """The demo's steps at toy sizes, then `toolchain report`; returns report.html."""
    out = tmp_path_factory.mktemp("demo")
    data, s = out / "data", out / "studies"
    config = str(ROOT / "examples" / "ddd17-tiny.yaml")
    size = ["--set", "data.height=32", "--set", "data.width=32", "--set", "train.batch_size=4"]
    main(["data", "synth", "--out", str(data), "--n-train", "8", "--n-test", "2", "--height", "32", "--width", "48",
          "--seed", "0"])
    main(["data", "check", str(data), "--out", str(out / "data-check.png")])
    main(["train", "--config", config, "--data", str(data), "--out", str(out / "train"),
          "--epochs", "1", *size])
    main(["export", "--checkpoint", str(out / "train" / "checkpoint.pt"), "--target", "loihi-sim",
          "--out", str(out / "model.net"), "--data", str(data), "--frames", "2"])
    for backend in ("lava", "emulator"):
        main(["run", "--net", str(out / "model.net"), "--data", str(data), "--backend", backend,
              "--json", str(out / f"run-{backend}.json"), "--out", str(out / f"pred-{backend}")])
    main(["train", "--config", config, "--data", str(data), "--ann", "--epochs", "1",
          "--out", str(out / "ann"), *size])
    conv = s / "converted" / "checkpoint.pt"
    main(["convert", "--checkpoint", str(out / "ann" / "checkpoint.pt"), "--out", str(conv), "--data", str(data),
          "--frames", "2"])
    main(["sweep", "--checkpoint", f"trained={out / 'train' / 'checkpoint.pt'}", "--checkpoint", f"converted={conv}",
          "--checkpoint", f"ann={out / 'ann' / 'checkpoint.pt'}", "--steps", "4,16", "--frames", "2",
          "--data", str(data), "--out", str(s / "sweep")])
    main(["energy", "--checkpoint", str(out / "train" / "checkpoint.pt"), "--frames", "2", "--data", str(data),
          "--out", str(s / "energy-trained")])
    main(["robustness", "--checkpoint", f"snn={out / 'train' / 'checkpoint.pt'}",
          "--checkpoint", f"ann={out / 'ann' / 'checkpoint.pt'}", "--corruptions", "salt_pepper", "--frames", "2",
          "--data", str(data), "--out", str(s / "robustness")])
    main(["report", str(out), "--out", str(out / "report"), "--title", "Demo at toy size"])
    return out / "report" / "report.html"


@pytest.mark.slow
def test_report_reads_well_in_a_real_browser(demo_report, chromium, tmp_path):
    page = demo_report.read_text()
    assert "src=\"img/" not in page and "data:image/png;base64," in page  # one self-contained file
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = _browser(chromium, tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom",
                   probe.as_uri()).stdout
    m = re.search(rf'<pre id="{CHECK_ID}">(.*?)</pre>', dom, re.S)
    assert m, f"the check script did not run; the browser returned:\n{dom[:2000]}"
    seen = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))
    # sweep, robustness, curves and gallery of both runs, data check, predictions
    assert len(seen["images"]) >= 8, seen["images"]
    broken = [i["alt"] for i in seen["images"] if not i["ok"]]
    assert not broken, f"images that did not load: {broken}"
    assert seen["firstHeading"] == "Summary"
    assert seen["firstTableId"] == "summary" and seen["firstTableRows"] == 1 + 2  # header, SNN, ANN
    assert 0 < seen["firstTableTop"] < WINDOW[1] / 2, f"the summary table starts at {seen['firstTableTop']} px"
    assert seen["firstTableFits"], "the summary table is wider than the page on a laptop screen"
    assert seen["pageFits"], "the page scrolls sideways on a laptop screen"
    shot = tmp_path / "report-top.png"
    _browser(chromium, tmp_path / "profile", f"--screenshot={shot}", demo_report.as_uri())
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot of the report's first screen: {shot}")


# What the docs' front page shows.
DOCS_CHECK_SCRIPT = _on_load("""
  const gallery = [...document.images].find(i => i.src.endsWith("small-gallery.png"));
  const result = {
    title: (document.querySelector("article h1") || {}).textContent,
    images: [...document.images].map(i => ({src: i.src.split("/").pop(), ok: i.complete && i.naturalWidth > 0})),
    galleryTop: gallery ? gallery.getBoundingClientRect().top : null,
    navLinks: document.querySelectorAll("nav a[href]").length,
    pageFits: document.documentElement.scrollWidth <= window.innerWidth,
  };
""")


@pytest.fixture(scope="module")
def docs_site(tmp_path_factory) -> Path:
    """The documentation site as `make docs` builds it (mkdocs build --strict)."""
    from tests.test_docs import build_site

    return build_site(tmp_path_factory.mktemp("docs") / "site")


@pytest.mark.slow
def test_docs_front_page_reads_well_in_a_real_browser(docs_site, chromium, tmp_path):
    """The site's front page in chromium on a laptop screen: the title, the
    best model's gallery on the first screen, every image decoded, the
    navigation, no sideways scrolling; a screenshot is kept under tmp_path."""
    front = docs_site / "index.html"
    probe = front.with_name("probe.html")  # beside index.html, so its relative assets resolve
    probe.write_text(front.read_text().replace("</body>", DOCS_CHECK_SCRIPT + "</body>"))
    dom = _browser(chromium, tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom",
                   probe.as_uri()).stdout
    m = re.search(rf'<pre id="{CHECK_ID}">(.*?)</pre>', dom, re.S)
    assert m, f"the check script did not run; the browser returned:\n{dom[:2000]}"
    seen = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))
    assert seen["title"].strip().startswith("toolchain")
    broken = [i["src"] for i in seen["images"] if not i["ok"]]
    assert not broken, f"images that did not load: {broken}"
    assert seen["galleryTop"] is not None and 0 < seen["galleryTop"] < WINDOW[1], (
        f"the gallery starts at {seen['galleryTop']} px, below the first screen")
    assert seen["navLinks"] >= 20, "the navigation is missing"
    assert seen["pageFits"], "the front page scrolls sideways on a laptop screen"
    shot = tmp_path / "docs-front.png"
    _browser(chromium, tmp_path / "profile", f"--screenshot={shot}", front.as_uri())
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot of the docs' front page: {shot}")
