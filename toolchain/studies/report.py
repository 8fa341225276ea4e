"""`toolchain report`: one Markdown and one HTML page from run folders.

A run folder is searched (recursively) for what the toolchain writes:
training runs (`metrics.json` with `config.yaml` beside it), converted
checkpoints (`convert.json`), exported nets (`X.net.json` beside `X.net`),
`toolchain run --json` reports, the studies' `sweep.json`, `energy.json`,
`robustness.json`, `pareto.json`, and their PNG plots and pictures.

The page leads with the answer: one row per model (float, quantized,
emulator and Lava mIoU, spikes and energy per frame), IoU per class, the
Lava-equals-emulator check, then the latency curves, the accuracy-energy
front and the robustness curves; the details of every run follow. A
model's kind comes from its saved config: an ANN twin (`train.ann`) is
reported with activations and MACs, never as spiking or quantized; an SNN
is quantized only if it trained with `train.qat`.

The page is a list of blocks (heading, paragraph, list, table, image)
rendered twice, to Markdown and to plain HTML, so neither needs a converter.
Images are copied beside the page for the Markdown and embedded as data URIs
in the HTML, so report.html is one self-contained file.
"""
from __future__ import annotations

import base64
import html
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ToolchainError
from ..core.files import atomic_path, write_text
from ..core.formatting import percent

PICTURES = ("curves.png", "gallery.png")
MAX_PREDICTIONS = 4
STUDY_FILES = ("metrics.json", "sweep.json", "energy.json", "robustness.json", "pareto.json", "convert.json")
NA = "n/a"  # the quantity does not exist for this model (an ANN has no spikes, no fixed point, no Lava form)

CSS = ("body{font-family:system-ui,sans-serif;max-width:72em;margin:1.5em auto;padding:0 1em;line-height:1.4;"
       "color:#222}h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}"
       ".scroll{overflow-x:auto}table{border-collapse:collapse;margin:.6em 0;font-size:.92em}"
       "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right;white-space:nowrap}"
       "th{background:#eee;white-space:normal;vertical-align:bottom}th:first-child,.text{text-align:left}"
       "#summary td.text{white-space:normal}#summary tr:nth-child(odd) td{background:#f7f7f7}"
       "img{max-width:100%;height:auto}p.note{color:#555;font-size:.9em}")
# right-aligned cells: numbers (1,500, 0.25, 1.5e+06) with a unit, n/a, blank
NUMBER = re.compile(r"[-+]?[\d,.]+(e[-+]?\d+)?( \w+)?|n/a|")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A table's Markdown lines, a | inside a cell escaped."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows])


class Page:
    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str, note: bool = False):
        self.blocks.append(("p", text, note))

    def ul(self, items: list[str]):
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list], id: str = ""):
        self.blocks.append(("table", header, [[str(c) for c in r] for r in rows], id))

    def img(self, src: str, alt: str, path: Path):
        self.blocks.append(("img", src, alt, path))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b[0] == "h":
                out += ["#" * (b[1] + 1) + " " + b[2], ""]
            elif b[0] == "p":
                out += [f"*{b[1]}*" if b[2] else b[1], ""]
            elif b[0] == "ul":
                out += [f"- {item}" for item in b[1]] + [""]
            elif b[0] == "table":
                out += markdown_table(b[1], b[2]) + [""]
            else:
                out += [f"![{b[2]}]({b[1]})", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
               "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
               f"<title>{e(self.title)}</title>", f"<style>{CSS}</style>", "</head><body>", f"<h1>{e(self.title)}</h1>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1] + 1}>{e(b[2])}</h{b[1] + 1}>")
            elif b[0] == "p":
                out.append(f"<p class=\"note\">{e(b[1])}</p>" if b[2] else f"<p>{e(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in b[1]) + "</ul>")
            elif b[0] == "table":
                ident = f" id=\"{e(b[3])}\"" if b[3] else ""
                out.append(f"<div class=\"scroll\"><table{ident}><tr>" + "".join(f"<th>{e(c)}</th>" for c in b[1])
                           + "</tr>")
                out += ["<tr>" + "".join(f"<td>{e(c)}</td>" if NUMBER.fullmatch(c) else
                                         f"<td class=\"text\">{e(c)}</td>" for c in r) + "</tr>" for r in b[2]]
                out.append("</table></div>")
            else:
                data = base64.b64encode(b[3].read_bytes()).decode()
                out.append(f"<p><img src=\"data:image/png;base64,{data}\" alt=\"{e(b[2])}\" "
                           f"title=\"{e(b[1])}\"></p>")
        out.append("</body></html>")
        return "\n".join(out)


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ToolchainError(f"{path}: not readable JSON ({e})") from e


def _config(run_dir: Path) -> dict:
    """The run's saved configuration (config.yaml beside metrics.json), {} when absent."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ToolchainError(f"{path}: not readable YAML ({e})") from e
    return cfg if isinstance(cfg, dict) else {}


def _num(v) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.3g}"


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
        page.img(f"img/{name}", alt, self.dir / name)


def _same_file(recorded: str, actual: Path) -> bool:
    """A path a tool recorded (absolute, or relative to wherever it ran) names `actual`."""
    rec = Path(recorded)
    if rec.is_absolute() or rec.exists():
        try:
            return rec.resolve() == actual.resolve()
        except OSError:
            return False
    parts = [p for p in rec.parts if p not in (".", "")]
    return bool(parts) and list(actual.resolve().parts[-len(parts):]) == parts


@dataclass
class Model:
    """One network and everything measured on it."""

    label: str          # its folder (or .net file) relative to the run folder
    dir: Path           # the checkpoint's folder, or the .net file for a net found alone
    metrics: dict | None = None   # training metrics.json
    config: dict = field(default_factory=dict)
    convert: dict | None = None   # convert.json of a converted checkpoint
    net: Path | None = None
    export: dict | None = None    # X.net.json
    runs: dict = field(default_factory=dict)  # backend -> run report
    energy: dict | None = None
    source_name: str = ""  # a converted checkpoint's: the network of the ANN it came from

    @property
    def name(self) -> str:
        return ((self.metrics or {}).get("model") or self.config.get("model", {}).get("name") or self.source_name
                or "?")

    @property
    def order(self) -> int:
        """Trained SNNs first, then converted ones, nets found alone, ANN twins."""
        return 3 if self.ann else 1 if self.convert is not None else 2 if self.metrics is None else 0

    @property
    def ann(self) -> bool:
        # The saved config says what trained; an `-ann` model name says so too.
        return bool(self.config.get("train", {}).get("ann")) or self.name.endswith("-ann")

    @property
    def qat(self) -> bool:
        train = self.config.get("train", {})
        flag = train["qat"] if "qat" in train else (self.metrics or {}).get("quantized", False)
        return bool(flag) and not self.ann

    @property
    def kind(self) -> str:
        if self.ann:
            return "ANN (ReLU twin, float)"
        if self.convert is not None:
            return f"SNN, converted from {Path(self.convert['source']).parent.name}"
        if self.metrics is None:
            return "SNN (.net)"
        return "SNN, trained 8-bit (QAT)" if self.qat else "SNN, trained float"


class Run:
    """What one run folder holds, models linked to their nets, runs and energy."""

    def __init__(self, root: Path, exclude: Path):
        self.root = root
        files = sorted(p for p in root.rglob("*") if p.is_file() and exclude not in p.resolve().parents)
        self.files = files
        by_name: dict[str, list[Path]] = {}
        for p in files:
            by_name.setdefault(p.name, []).append(p)
        self.models: list[Model] = []
        for p in by_name.get("metrics.json", []):
            self.models.append(Model(self._rel(p.parent), p.parent, metrics=_load(p), config=_config(p.parent)))
        for p in by_name.get("convert.json", []):
            c = _load(p)
            m = self._model_at(p.parent) or Model(self._rel(p.parent), p.parent)
            m.convert = c
            if m not in self.models:
                self.models.append(m)
        self.sweeps = [(p, _load(p)) for p in by_name.get("sweep.json", [])]
        self.energies = [(p, _load(p)) for p in by_name.get("energy.json", [])]
        self.robustness = [(p, _load(p)) for p in by_name.get("robustness.json", [])]
        self.paretos = [(p, _load(p)) for p in by_name.get("pareto.json", [])]
        exports, self.reports = {}, []
        for p in files:
            if p.suffix != ".json" or p.name in STUDY_FILES:
                continue
            try:
                d = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(d, dict):
                continue
            if p.name.endswith(".net.json") and "net" in d and "layers" in d:
                exports[p.with_suffix("")] = d
            elif {"backend", "miou", "net", "frames_per_s"} <= set(d):
                self.reports.append((p, d))
        for m in self.models:
            if m.convert is not None:
                src = next((s for s in self.models if _same_file(m.convert["source"], s.dir / "checkpoint.pt")), None)
                m.source_name = src.name.removesuffix("-ann") if src is not None else ""
        self._link(exports)
        self.models.sort(key=lambda m: m.order)
        self.pictures = {p for p in files if p.suffix == ".png"}

    def _rel(self, p: Path) -> str:
        rel = p.relative_to(self.root).as_posix()
        return self.root.name if rel == "." else rel

    def _model_at(self, folder: Path) -> Model | None:
        return next((m for m in self.models if m.dir == folder), None)

    def _link(self, exports: dict[Path, dict]):
        """Attach each exported net to the model it came from: a net named
        like a checkpoint folder (studies/converted.net, studies/converted/),
        else the one trained (or else the one) spiking model without a net
        (the demo's model.net and train/); a net that matches nothing is a
        model of its own."""
        unlinked = []
        for net, d in exports.items():
            stem = net.name[: -len(".net")] if net.name.endswith(".net") else net.stem
            m = next((m for m in self.models if m.net is None and m.dir.name == stem), None)
            if m is None:
                unlinked.append((net, d))
            else:
                m.net, m.export = net, d
        waiting = [m for m in self.models if m.net is None and not m.ann]
        trained = [m for m in waiting if m.convert is None]
        pick = trained if len(trained) == 1 else waiting
        if len(unlinked) == 1 and len(pick) == 1:
            pick[0].net, pick[0].export = unlinked.pop()
        for net, d in unlinked:
            self.models.append(Model(self._rel(net), net, net=net, export=d))
        nets = {m.net: m for m in self.models if m.net is not None}
        for _, r in self.reports:
            m = next((m for n, m in nets.items() if _same_file(r["net"], n)), None)
            if m is None:  # a net run without its export report
                m = Model(Path(r["net"]).name, Path(r["net"]), net=Path(r["net"]))
                self.models.append(m)
                nets[m.net] = m
            m.runs.setdefault(r["backend"], r)
        for _, e in self.energies:
            m = next((m for m in self.models if m.net != m.dir and _same_file(e["checkpoint"], m.dir / Path(
                e["checkpoint"]).name)), None)
            if m is not None and m.energy is None:
                m.energy = e

    def ann_energy(self, model: Model) -> dict | None:
        """An ANN's MACs per frame: the energy study of a spiking model of the
        same topology and input size (its "ANN MACs" are this twin's)."""
        def key(m):
            d = m.config.get("data", {})
            return m.name.removesuffix("-ann"), d.get("height"), d.get("width")
        for m in self.models:
            if (m.energy is not None and m.convert is not None
                    and _same_file(m.convert["source"], model.dir / "checkpoint.pt")):
                return m.energy
        return next((m.energy for m in self.models if m.energy is not None and m.config and key(m) == key(model)), None)


def miou_cells(m: Model, pct: Callable[[float | None], str] = percent, na: str = NA) -> list[str]:
    """A model's float, quantized, emulator and Lava mIoU, the columns every
    results table shows: `pct` of each measurement, `na` where the quantity
    does not exist (an ANN has no quantized, emulator or Lava form), blank
    where it was not measured."""
    ex, lava, emu = m.export or {}, m.runs.get("lava"), m.runs.get("emulator")
    if m.ann:
        return [pct(m.metrics["miou"]), na, na, na]
    fl, qu = (pct(ex.get("miou_float")), pct(ex.get("miou_quantized"))) if ex else ("", "")
    if not ex and m.metrics is not None:  # no export: the test mIoU at the end of training
        fl, qu = ("", pct(m.metrics["miou"])) if m.qat else (pct(m.metrics["miou"]), "")
    return [fl, qu, pct(emu["miou"]) if emu else "", pct(lava["miou"]) if lava else ""]


def _row(run: Run, m: Model) -> list[str]:
    """The summary row: model, network, four mIoUs, frames, spikes, ops and energy per frame."""
    ex, lava, emu = m.export or {}, m.runs.get("lava"), m.runs.get("emulator")
    fl, qu, em, lv = miou_cells(m)
    frames = {}
    if not m.ann:
        if ex.get("frames"):
            frames["torch"] = ex["frames"]
        for name, r in (("emulator", emu), ("Lava", lava)):
            if r:
                frames[name] = r["frames"]
    if m.metrics is not None and not ex and m.metrics.get("iou_per_class"):
        frames.setdefault("torch", "test split")
    n = ", ".join(f"{k} {v}" for k, v in frames.items()) if len(set(frames.values())) > 1 else \
        str(next(iter(frames.values()), ""))
    if m.ann:
        e = run.ann_energy(m)
        spikes, ops = NA, f"{_num(e['energy']['macs_per_frame'])} MACs" if e else ""
        uj = f"{e['energy']['ann_45nm_uj']:.3g}" if e else ""
        loihi = NA
    elif m.energy is not None:
        en = m.energy["energy"]
        spikes, ops = _num(en["spikes_per_frame"]), f"{_num(en['synops_per_frame'])} SynOps"
        uj, loihi = f"{en['snn_45nm_uj']:.3g}", f"{en['loihi_uj']:.3g}"
    else:
        r = lava or emu
        spikes = _num(sum(r["spikes_per_frame"].values())) if r and r.get("spikes_per_frame") else ""
        ops, uj, loihi = "", "", ""
    label = m.label if m.net is None or m.net == m.dir else f"{m.label} ({m.net.name})"
    return [label, f"{m.name.removesuffix('-ann')}: {m.kind}", fl, qu, em, lv, n, spikes, ops, uj, loihi]


SUMMARY_HEADER = ["model", "network", "float mIoU %", "quantized mIoU %", "emulator mIoU %", "Lava mIoU %",
                  "frames", "spikes / frame", "ops / frame", "energy / frame, 45 nm (uJ)", "Loihi (uJ / frame)"]


def class_ious(m: Model) -> tuple[str, dict] | None:
    """The most deployed measurement of IoU per class: Lava, else emulator, else training."""
    for source, r in (("Lava", m.runs.get("lava")), ("emulator", m.runs.get("emulator")),
                      ("torch, end of training", m.metrics)):
        if r and r.get("iou_per_class"):
            return source, r["iou_per_class"]
    return None


def _predictions_agree(run: Run) -> list[str]:
    """Compare class-map folders that differ only by backend (pred-lava, pred-emulator)."""
    from deploy.agreement import Outputs, differences, read_class_maps

    folders = {}
    for p in run.files:
        if p.name.startswith("pred_") and p.suffix == ".png":
            folders.setdefault(p.parent, []).append(p)
    out = []
    for lava in sorted(f for f in folders if "lava" in f.name):
        emu = lava.with_name(lava.name.replace("lava", "emulator"))
        if emu not in folders:
            continue
        common = sorted({p.name for p in folders[lava]} & {p.name for p in folders[emu]})
        differ = [x.frame for x in differences(Outputs(class_maps=read_class_maps(lava, common)),
                                               Outputs(class_maps=read_class_maps(emu, common)))]
        verdict = (f"identical, pixel for pixel, on all {len(common)} common frames" if not differ else
                   f"DIFFER on {len(differ)} of {len(common)} common frames (first: {differ[0]})")
        out.append(f"Lava against the emulator: class maps in {run._rel(lava)} and {run._rel(emu)} {verdict}.")
    return out


def _answers(run: Run) -> list[str]:
    """The summary's sentences: the Lava-emulator check and SNN against ANN energy."""
    out = _predictions_agree(run)
    for m in run.models:
        lava, emu = m.runs.get("lava"), m.runs.get("emulator")
        if lava and emu:
            same = lava["frames"] == emu["frames"]
            rel = "=" if same and lava["miou"] == emu["miou"] else "vs"
            out.append(f"{m.label}: Lava mIoU {percent(lava['miou'])}% {rel} emulator {percent(emu['miou'])}% "
                       + (f"on the same {lava['frames']} frames." if same
                          else f"(Lava on {lava['frames']} frames, emulator on {emu['frames']}; not comparable)."))
    for m in run.models:
        if m.energy is not None:
            en = m.energy["energy"]
            out.append(f"Energy per frame of {m.label} (T={m.energy['time_steps']}, {m.energy['frames']} frames, "
                       f"45 nm): SNN {en['snn_45nm_uj']:.3g} uJ vs its ANN twin {en['ann_45nm_uj']:.3g} uJ "
                       f"(ANN/SNN {en['ann_snn_ratio']:.2f}x); on Loihi about {en['loihi_uj']:.3g} uJ.")
    return out


def _summary(page: Page, runs: list[Run], images: _Images):
    page.h(1, "Summary")
    # A model nothing was measured on (a converted checkpoint only swept) has no row.
    rows = [row for r in runs for m in r.models for row in [_row(r, m)] if any(row[2:])]
    if rows:
        page.table(SUMMARY_HEADER, rows, id="summary")
        page.p("float / quantized: the torch model with float or Loihi 8-bit weights (from the export; without one, "
               "the test mIoU at the end of training); emulator / Lava: the exported .net run bit-exactly in numpy "
               "or in Lava's simulator. n/a: does not exist for this model (an ANN has no spikes, no fixed-point "
               "weights and no Lava form); blank: not run. ANN energy counts MACs x E_MAC, SNN energy SynOps x E_AC.",
               note=True)
    answers = [a for r in runs for a in _answers(r)]
    if answers:
        page.ul(answers)
    ious = [(m, class_ious(m)) for r in runs for m in r.models]
    ious = [(m, src, per) for m, got in ious if got for src, per in [got]]
    if ious:
        classes = list(dict.fromkeys(c for _, _, per in ious for c in per))
        page.h(2, "IoU per class (%)")
        page.table(["model", "measured in"] + classes,
                   [[m.label, src] + [percent(per[c]) if c in per else "" for c in classes] for m, src, per in ious])
    for r in runs:
        for p, s in r.sweeps:
            from .sweep import table

            page.h(2, f"Latency: mIoU (%) against time steps T ({r._rel(p.parent)})")
            page.table(*table(s))
            if p.with_suffix(".png").is_file():
                images.add(page, p.with_suffix(".png"), "mIoU against T")
    for r in runs:
        for p, pa in r.paretos:
            _pareto(page, r._rel(p.parent), p, pa, images)
    for r in runs:
        for p, rb in r.robustness:
            from .robustness import middle

            page.h(2, f"Robustness: mIoU (%) under corruption ({rb['frames']} frames, {r._rel(p.parent)})")
            if p.with_suffix(".png").is_file():
                images.add(page, p.with_suffix(".png"), "mIoU against corruption strength")
            mid = middle(rb)
            clean = {row["label"]: row["miou"] for row in rb["rows"] if row["strength"] == 0}
            kinds = {row["label"]: row["kind"] for row in rb["rows"]}
            page.table(["model", "kind", "clean"] + [f"{c} (middle strength)" for c in rb["corruptions"]],
                       [[label, kinds[label], percent(clean.get(label))]
                        + [f"{percent(per[c][1])} at {per[c][0]:g}" if c in per else "" for c in rb["corruptions"]]
                        for label, per in mid.items()])


def pareto_answer(result: dict) -> str:
    """Whether a spiking point of the front costs less on the Loihi figures
    than the ANN twin at 45 nm; if none does, by what factor the cheapest is dearer."""
    ann, pts = result["ann"], result["points"]
    if ann is None:
        return "No ANN twin on this front (`toolchain pareto --ann`): nothing to compare the Loihi figures with."
    if not pts:
        return "No spiking point on this front."
    bar = ann["ann_45nm_uj"]
    twin = f"the ANN twin's {bar:.3g} uJ per frame at 45 nm (mIoU {percent(ann['miou'])}%)"
    cheaper = sorted((p for p in pts if p["loihi_uj"] < bar), key=lambda p: p["loihi_uj"])
    if cheaper:
        each = "; ".join(f"{p['label']} {p['loihi_uj']:.3g} uJ (mIoU {percent(p['miou'])}%)" for p in cheaper)
        return (f"On the Loihi figures {len(cheaper)} of {len(pts)} spiking points cost less than {twin}: "
                f"{each}.")
    low = min(pts, key=lambda p: p["loihi_uj"])
    return (f"No spiking point costs less on the Loihi figures than {twin}: the cheapest, {low['label']} at "
            f"{low['loihi_uj']:.3g} uJ (mIoU {percent(low['miou'])}%), is {low['loihi_uj'] / bar:.2f}x dearer.")


def _pareto(page: Page, where: str, path: Path, result: dict, images: _Images):
    """The accuracy-energy front of one `toolchain pareto` study: its table, plot and answer."""
    from .pareto import table

    frames = list(dict.fromkeys(p["frames"] for p in result["points"])) or [result["frames"]]
    page.h(2, f"Accuracy against energy: mIoU (%) against SynOps and energy per frame "
              f"({', '.join(map(str, frames))} frames, {where})")
    header, rows = table(result)
    # The study prints "-" where the ANN twin has no such quantity; the report says n/a.
    page.table(header, [[NA if c == "-" else c for c in row] for row in rows])
    ckpt = Path(result["checkpoint"])
    twin = (" (the ANN twin: in torch, its energy MACs x E_MAC at 45 nm; n/a: does not exist for an ANN)"
            if result["ann"] is not None else "")
    page.p(f"Each budget (SynOps per frame) fine-tunes {ckpt.parent.name}/{ckpt.name} for {result['epochs']} "
           f"epoch(s) at lr {result['lr']:g}; every point is measured as the deployed .net on the emulator{twin}. "
           "45 nm: SynOps x E_AC; Loihi: SynOps and neuron updates at Loihi's figures.", note=True)
    page.p(pareto_answer(result))
    if path.with_suffix(".png").is_file():
        images.add(page, path.with_suffix(".png"), "mIoU against SynOps and energy per frame")


def _training(page: Page, m: Model, images: _Images):
    mt = m.metrics
    page.h(2, f"Training: {m.label} ({m.name}, {m.kind})")
    d = m.config.get("data", {})
    weights = "float (an ANN is not quantized)" if m.ann else ("Loihi 8-bit (QAT)" if m.qat else "float")
    page.table(["model", "network", "epochs", "weights", "input", "T", "test mIoU %", "pixel acc %",
                "untrained mIoU %", "majority-class mIoU %"],
               [[m.name, "ANN" if m.ann else "SNN", mt.get("epochs"), weights,
                 f"{d.get('height', '?')}x{d.get('width', '?')}", NA if m.ann else d.get("time_steps", "?"),
                 percent(mt.get("miou")), percent(mt.get("pixel_acc")), percent(mt.get("untrained_miou")),
                 percent(mt.get("majority_miou"))]])
    if mt.get("iou_per_class"):
        page.table(["class", "IoU %"], [[k, percent(v)] for k, v in mt["iou_per_class"].items()])
    if mt.get("firing"):
        what = "mean ReLU activation per neuron" if m.ann else "spikes per neuron per step"
        page.table(["layer", what], [[k, f"{v:.4f}"] for k, v in mt["firing"].items()])
    for name in PICTURES:
        if (m.dir / name).is_file():
            images.add(page, m.dir / name, f"{m.label}: {name}")


def _deployed(page, reports: list[tuple[Path, dict]]):
    page.h(2, "Deployed .net runs")
    page.table(["net", "backend", "frames", "T", "mIoU %", "pixel acc %", "frames/s", "spikes / frame"],
               [[Path(r["net"]).name, r["backend"], r["frames"], r["time_steps"], percent(r["miou"]),
                 percent(r["pixel_acc"]), f"{r['frames_per_s']:.2f}",
                 _num(sum(r["spikes_per_frame"].values())) if r.get("spikes_per_frame") else ""]
                for _, r in reports])


def _exports(page, models: list[Model]):
    rows = [[m.net.name, m.label, m.export.get("layers"), m.export.get("neurons"), m.export.get("synapses"),
             percent(m.export.get("miou_float")), percent(m.export.get("miou_quantized")), m.export.get("frames", "")]
            for m in models if m.export]
    if rows:
        page.h(2, "Exported .net files")
        page.table(["net", "from", "layers", "neurons", "synapses", "float mIoU %", "quantized mIoU %", "frames"], rows)


def _convert(page, m: Model):
    c = m.convert
    page.h(2, f"ANN-to-SNN conversion: {m.label}")
    page.table(["source", "norm", "statistic", "scale", "threshold", "frames"],
               [[Path(c["source"]).parent.name + "/" + Path(c["source"]).name, c["norm"],
                 "max" if c["percentile"] >= 100 else f"p{c['percentile']:g}", c["scale"],
                 f"{c['threshold']:.4f}", c["frames"]]])


def _energy(page, path: Path, e: dict):
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


def _details(page: Page, run: Run, images: _Images):
    page.h(1, f"Details: {run.root}")
    for m in run.models:
        if m.metrics is not None:
            _training(page, m, images)
    if (run.root / "data-check.png").is_file():
        page.h(2, "Data check")
        images.add(page, run.root / "data-check.png", "data check")
    _exports(page, run.models)
    if run.reports:
        _deployed(page, run.reports)
    for m in run.models:
        if m.convert is not None:
            _convert(page, m)
    for p, e in run.energies:
        _energy(page, p, e)
    for p, rb in run.robustness:
        from .robustness import table

        page.h(2, f"Robustness, every strength: mIoU (%) ({run._rel(p.parent)})")
        page.table(*table(rb))
    preds = sorted(p for p in run.files if p.name.startswith("pred_") and p.suffix == ".png")[:MAX_PREDICTIONS]
    if preds:
        page.h(2, "Predictions of the deployed net")
        for p in preds:
            images.add(page, p, run._rel(p))


def build(run_dirs: list[str | Path], out_dir: str | Path, title: str = "Toolchain report") -> tuple[Path, Path]:
    """Write REPORT_DIR/report.md and report.html (and img/); return their paths."""
    out_dir = Path(out_dir)
    for run in map(Path, run_dirs):
        if not run.is_dir():
            raise ToolchainError(f"{run}: not a run folder")
    runs = [Run(Path(r), out_dir.resolve()) for r in run_dirs]
    if not any(r.models or r.sweeps or r.energies or r.robustness or r.paretos for r in runs):
        raise ToolchainError(f"{', '.join(map(str, run_dirs))}: no metrics.json or study results found")
    page = Page(title)
    images = _Images(out_dir)
    _summary(page, runs, images)
    for r in runs:
        _details(page, r, images)
    md, hp = out_dir / "report.md", out_dir / "report.html"
    write_text(md, page.markdown())
    write_text(hp, page.html())
    return md, hp
