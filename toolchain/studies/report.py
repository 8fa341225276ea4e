"""`toolchain report`: one Markdown and one HTML page from run folders.

A run folder is searched (recursively) for what the toolchain writes:
training `metrics.json`, `toolchain run --json` reports, the studies'
`convert.json`, `sweep.json`, `energy.json`, `robustness.json`, and their
PNG plots and pictures. The page is built as a list of blocks (heading,
paragraph, table, image) rendered twice, to Markdown and to plain HTML, so
neither needs a converter. Images are copied beside the page.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from ..errors import ToolchainError
from ..files import atomic_path, write_text

PICTURES = ("gallery.png", "curves.png", "data-check.png")
MAX_PREDICTIONS = 4


class Page:
    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list]):
        self.blocks.append(("table", header, [[str(c) for c in r] for r in rows]))

    def img(self, src: str, alt: str):
        self.blocks.append(("img", src, alt))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b[0] == "h":
                out += ["#" * (b[1] + 1) + " " + b[2], ""]
            elif b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "table":
                out.append("| " + " | ".join(b[1]) + " |")
                out.append("|" + "---|" * len(b[1]))
                out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in b[2]]
                out.append("")
            else:
                out += [f"![{b[2]}]({b[1]})", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{e(self.title)}</title>",
               "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}"
               "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:2px 8px;"
               "text-align:right}th{background:#eee}img{max-width:100%}</style>",
               "</head><body>", f"<h1>{e(self.title)}</h1>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1] + 1}>{e(b[2])}</h{b[1] + 1}>")
            elif b[0] == "p":
                out.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in b[1]) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2]]
                out.append("</table>")
            else:
                out.append(f"<p><img src=\"{e(b[1])}\" alt=\"{e(b[2])}\"></p>")
        out.append("</body></html>")
        return "\n".join(out)


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ToolchainError(f"{path}: not readable JSON ({e})") from e


def _pct(v) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.2f}"


class _Images:
    def __init__(self, out_dir: Path):
        self.dir = out_dir / "img"
        self.n = 0

    def add(self, page: Page, src: Path, alt: str):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n += 1
        name = f"{self.n:02d}_{src.name}"
        with atomic_path(self.dir / name) as tmp:
            shutil.copyfile(src, tmp)
        page.img(f"img/{name}", alt)


def _training(page, path: Path, images: _Images):
    m = _load(path)
    page.h(2, f"Training: {m.get('model', '?')} ({path.parent.name})")
    page.table(["model", "epochs", "weights", "test mIoU %", "pixel acc %", "untrained mIoU %",
                "majority-class mIoU %"],
               [[m.get("model"), m.get("epochs"), "quantized" if m.get("quantized") else "float",
                 _pct(m.get("miou")), _pct(m.get("pixel_acc")), _pct(m.get("untrained_miou")),
                 _pct(m.get("majority_miou"))]])
    if m.get("iou_per_class"):
        page.table(["class", "IoU %"], [[k, _pct(v)] for k, v in m["iou_per_class"].items()])
    if m.get("firing"):
        page.table(["layer", "spikes per neuron per step"], [[k, f"{v:.4f}"] for k, v in m["firing"].items()])
    for name in PICTURES[:2]:
        if (path.parent / name).is_file():
            images.add(page, path.parent / name, name)


def _deployed(page, reports: list[tuple[Path, dict]]):
    page.h(2, "Deployed .net runs")
    page.table(["net", "backend", "frames", "T", "mIoU %", "pixel acc %", "frames/s"],
               [[Path(r["net"]).name, r["backend"], r["frames"], r["time_steps"], _pct(r["miou"]),
                 _pct(r["pixel_acc"]), f"{r['frames_per_s']:.2f}"] for _, r in reports])


def _convert(page, path: Path):
    c = _load(path)
    page.h(2, "ANN-to-SNN conversion")
    page.table(["source", "norm", "statistic", "scale", "threshold", "frames"],
               [[Path(c["source"]).name, c["norm"], "max" if c["percentile"] >= 100 else f"p{c['percentile']:g}",
                 c["scale"], f"{c['threshold']:.4f}", c["frames"]]])


def _sweep(page, path: Path, images: _Images):
    from .sweep import table

    s = _load(path)
    page.h(2, "Latency: mIoU (%) against time steps T")
    page.table(*table(s))
    if path.with_suffix(".png").is_file():
        images.add(page, path.with_suffix(".png"), "mIoU against T")


def _energy(page, path: Path):
    e = _load(path)
    en, res = e["energy"], e["resources"]
    page.h(2, f"Energy and hardware cost: {Path(e['checkpoint']).parent.name}/{Path(e['checkpoint']).name} "
              f"({e['frames']} frames, T={e['time_steps']}, {e['backend']})")
    page.table(["layer", "type", "neurons", "spikes/frame", "SynOps/frame", "ANN MACs"],
               [[l["name"], l["type"], l["neurons"], f"{l['spikes']:.0f}", f"{l['synops']:.0f}", l["macs"]]
                for l in e["layers"]])
    m = en["model"]
    page.table(["quantity", "per frame"], [
        ["SynOps", f"{en['synops_per_frame']:.4g}"], ["ANN MACs", f"{en['macs_per_frame']:.4g}"],
        ["spikes", f"{en['spikes_per_frame']:.4g}"],
        [f"SNN energy, 45 nm (E_AC {m['e_ac_pj']} pJ)", f"{en['snn_45nm_uj']:.4g} uJ"],
        [f"ANN energy, 45 nm (E_MAC {m['e_mac_pj']} pJ)", f"{en['ann_45nm_uj']:.4g} uJ"],
        ["ANN/SNN energy ratio", f"{en['ann_snn_ratio']:.2f}"],
        [f"Loihi ({m['loihi_synop_pj']} pJ/SynOp, {m['loihi_neuron_pj']} pJ/neuron update)",
         f"{en['loihi_uj']:.4g} uJ"]])
    page.h(3, "Loihi 2 resource estimate")
    page.table(["layer", "neurons", "synapses", "weight bits", "synaptic memory KiB", "cores"],
               [[r["name"], r["neurons"], r["synapses"], r["weight_bits"], f"{r['synaptic_memory_kib']:.1f}",
                 r["cores"]] for r in res["layers"]]
               + [["total", res["neurons"], res["synapses"], "", f"{res['synaptic_memory_kib']:.1f}", res["cores"]]])
    cm = res["model"]
    page.p(f"{res['cores']} cores on {res['chips']} chip(s) at {cm['neurons_per_core']} neurons and "
           f"{cm['synaptic_memory_kib']} KiB synaptic memory per core (planning figures; kernels not shared).")


def _robustness(page, path: Path, images: _Images):
    from .robustness import table

    r = _load(path)
    page.h(2, f"Robustness: mIoU (%) under corruption ({r['frames']} frames)")
    page.table(*table(r))
    if path.with_suffix(".png").is_file():
        images.add(page, path.with_suffix(".png"), "mIoU against corruption strength")


def build(run_dirs: list[str | Path], out_dir: str | Path, title: str = "Toolchain report") -> tuple[Path, Path]:
    """Write REPORT_DIR/report.md and report.html (and img/); return their paths."""
    out_dir = Path(out_dir)
    page = Page(title)
    images = _Images(out_dir)
    found = 0
    for run in map(Path, run_dirs):
        if not run.is_dir():
            raise ToolchainError(f"{run}: not a run folder")
        page.h(1, f"Run {run}")
        files = sorted(p for p in run.rglob("*") if p.is_file() and out_dir.resolve() not in p.resolve().parents)
        by_name = {}
        for p in files:
            by_name.setdefault(p.name, []).append(p)
        for p in by_name.get("metrics.json", []):
            _training(page, p, images)
            found += 1
        if (run / "data-check.png").is_file():
            images.add(page, run / "data-check.png", "data check")
        deployed = []
        for p in files:
            if p.suffix == ".json" and p.name not in ("metrics.json", "sweep.json", "energy.json",
                                                      "robustness.json", "convert.json"):
                try:
                    d = json.loads(p.read_text())
                except (OSError, ValueError):
                    continue
                if isinstance(d, dict) and {"backend", "miou", "net", "frames_per_s"} <= set(d):
                    deployed.append((p, d))
        if deployed:
            _deployed(page, deployed)
            found += 1
        for p in by_name.get("convert.json", []):
            _convert(page, p)
            found += 1
        for p in by_name.get("sweep.json", []):
            _sweep(page, p, images)
            found += 1
        for p in by_name.get("energy.json", []):
            _energy(page, p)
            found += 1
        for p in by_name.get("robustness.json", []):
            _robustness(page, p, images)
            found += 1
        preds = sorted(p for p in files if p.name.startswith("pred_") and p.suffix == ".png")[:MAX_PREDICTIONS]
        if preds:
            page.h(2, "Predictions of the deployed net")
            for p in preds:
                images.add(page, p, p.stem)
    if not found:
        raise ToolchainError(f"{', '.join(map(str, run_dirs))}: no metrics.json or study results found")
    md, hp = out_dir / "report.md", out_dir / "report.html"
    write_text(md, page.markdown())
    write_text(hp, page.html())
    return md, hp
