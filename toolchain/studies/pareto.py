"""The accuracy-energy front: one spiking model fine-tuned under several SynOps
budgets, each point deployed (`.net` on the emulator) and measured the way
`toolchain energy` measures it, next to the ANN twin's point.

Every point is a folder `budget-<N>/` under the study's folder holding an
ordinary training run (resumable: an interrupted study continues where it
stopped) and its `.net`; `pareto.json` holds the figures, `pareto.png` the front.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..core.config import config_from_dict, to_dict
from ..core.errors import ToolchainError
from ..core.formatting import percent


def _points(label: str, model, cfg, frames: int, folder: Path, budget: float | None,
            steps: list[int]) -> list[dict]:
    """Deploy `model` and measure it at its training T and at each of `steps`:
    one emulator run of the `.net` on the test split's first `frames` frames
    gives both the class maps (mIoU) and the spikes (energy). The `.net` at the
    training T is kept in `folder`."""
    import torch

    from deploy.netfile import write

    from ..core.metrics import SegmentationMetric
    from . import energy
    from .sweep import load_frames, quiet_export

    names = list(model.class_names)
    out = []
    for t in dict.fromkeys([cfg.data.time_steps, *steps]):
        net = quiet_export(model, t)
        net.class_names = names  # the per-class IoU by name
        if t == cfg.data.time_steps:
            write(folder / "model.net", net)
        x, y = load_frames(cfg, t, frames)
        counts = energy.count_run(net, x)
        metric = SegmentationMetric(len(names))
        metric.update(torch.from_numpy(counts["class_map"]), y)
        scores = metric.compute()
        e = energy.energy(counts)
        out.append(dict(label=label, budget=budget, time_steps=t, net=str(folder / "model.net"), frames=len(x),
                        miou=scores["miou"], iou_per_class=dict(zip(names, scores["iou_per_class"], strict=True)),
                        synops_per_frame=e["synops_per_frame"],
                        neuron_updates_per_frame=e["neuron_updates_per_frame"],
                        spikes_per_frame=e["spikes_per_frame"], snn_45nm_uj=e["snn_45nm_uj"],
                        loihi_uj=e["loihi_uj"], macs_per_frame=e["macs_per_frame"], ann_45nm_uj=e["ann_45nm_uj"]))
    return out


def _finished(run: Path) -> bool:
    """Whether the training run in `run` ran all its epochs (its metrics say final)."""
    metrics = run / "metrics.json"
    return metrics.is_file() and json.loads(metrics.read_text()).get("final") is True


def _same_fine_tuning(run: Path, wanted) -> None:
    """A budget's folder is reused (finished, or resumed) only for the same fine-tuning."""
    from ..core.config import load_config

    had = load_config(run / "config.yaml").train
    keys = ("init", "synops_budget", "synops_weight", "epochs", "lr")
    changed = [f"{k} {getattr(had, k)} -> {getattr(wanted.train, k)}" for k in keys
               if getattr(had, k) != getattr(wanted.train, k)]
    if changed:
        raise ToolchainError(f"{run}: fine-tuned with other settings ({', '.join(changed)}); "
                             f"give the study another --out")


def pareto(checkpoint: str, budgets: list[float], out_dir: str | Path, *, epochs: int = 3, frames: int = 64,
           lr: float | None = None, weight: float = 1.0, steps: list[int] = (), ann_checkpoint: str | None = None,
           data_root: str | None = None, log=print) -> dict:
    """Fine-tune `checkpoint` under each budget (SynOps per frame) for `epochs`
    epochs at `lr` (default: a tenth of its training rate; at the full rate
    the budget's first steps throw away what the model had learnt) and
    measure every deployed point, the starting model's included, at its
    training T and at each T of `steps` (fewer steps: fewer neuron updates)."""
    import models
    from models.ann import AnnGraph

    from ..train.loop import train
    from .sweep import _dataset, score

    if not budgets or any(b <= 0 for b in budgets):
        raise ToolchainError(f"pareto: budgets {budgets} must be SynOps per frame above 0")
    out = Path(out_dir)
    start, cfg = models.load_checkpoint(checkpoint, data_root=data_root)
    if not isinstance(start, models.SpikingGraph):
        raise ToolchainError(f"{checkpoint}: a non-spiking twin; the front starts from a spiking model")
    lr = cfg.train.lr / 10 if lr is None else lr
    (out / "start").mkdir(parents=True, exist_ok=True)
    points = _points("start", start, cfg, frames, out / "start", None, list(steps))
    _log_points(points, log)
    for b in sorted(budgets, reverse=True):
        run = out / f"budget-{b:.0f}"
        tuned = config_from_dict(to_dict(cfg))
        tuned.train.init, tuned.train.synops_budget, tuned.train.epochs = str(checkpoint), float(b), epochs
        tuned.train.lr, tuned.train.synops_weight = lr, weight
        if (run / "config.yaml").is_file():
            _same_fine_tuning(run, tuned)
        if not _finished(run):
            log(f"budget {b:.4g} SynOps/frame: fine-tuning {epochs} epoch(s) in {run}")
            train(tuned, run, resume=(run / "checkpoint.pt").is_file(), log=log)
        model, tuned = models.load_checkpoint(run / "checkpoint.pt", data_root=data_root)
        points += _log_points(_points(f"budget {b:.4g}", model, tuned, frames, run, float(b), list(steps)), log)
    ann = None
    if ann_checkpoint is not None:
        twin, twin_cfg = models.load_checkpoint(ann_checkpoint, data_root=data_root)
        if not isinstance(twin, AnnGraph):
            raise ToolchainError(f"{ann_checkpoint}: not a non-spiking twin (`toolchain train --ann`)")
        ds, n = _dataset(twin_cfg, twin_cfg.data.time_steps, frames)
        ann = dict(label="ANN twin", miou=score(twin, ds, None, n), macs_per_frame=points[0]["macs_per_frame"],
                   ann_45nm_uj=points[0]["ann_45nm_uj"], frames=n)
    return dict(checkpoint=str(checkpoint), epochs=epochs, lr=lr, synops_weight=weight, frames=frames,
                points=points, ann=ann)


def _log_points(points: list[dict], log) -> list[dict]:
    for p in points:
        log(f"{p['label']}, T={p['time_steps']}: mIoU {percent(p['miou'])}%  {p['synops_per_frame']:.4g} SynOps/frame"
            f"  {p['neuron_updates_per_frame']:.4g} neuron updates/frame")
    return points


def table(result: dict) -> tuple[list[str], list[list[str]]]:
    header = ["point", "T", "mIoU %", "SynOps/frame", "neuron updates/frame", "45 nm uJ", "Loihi uJ"]
    rows = [[p["label"], str(p.get("time_steps", "-")), percent(p["miou"]), f"{p['synops_per_frame']:.4g}",
             f"{p['neuron_updates_per_frame']:.4g}", f"{p['snn_45nm_uj']:.4g}", f"{p['loihi_uj']:.4g}"]
            for p in result["points"]]
    if result["ann"] is not None:
        a = result["ann"]
        rows.append([a["label"], "-", percent(a["miou"]), f"{a['macs_per_frame']:.4g} MACs", "-",
                     f"{a['ann_45nm_uj']:.4g}", "-"])
    return header, rows


def plot(result: dict, path: str | Path) -> Path:
    """mIoU against SynOps per frame, and against energy per frame (45 nm and Loihi)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    trained_t = result["points"][0].get("time_steps") if result["points"] else None
    by_t: dict = {}
    for p in result["points"]:  # files written before T was recorded hold one T
        by_t.setdefault(p.get("time_steps", trained_t), []).append(p)
    for t, pts in by_t.items():
        tag = "" if t is None else f" T={t}"
        style = "-" if t == trained_t else ":"
        miou = [100 * p["miou"] for p in pts]
        line = a.plot([p["synops_per_frame"] for p in pts], miou, "o" + style, label=f"SNN{tag} (deployed .net)")[0]
        b.plot([p["snn_45nm_uj"] for p in pts], miou, "o" + style, color=line.get_color(), label=f"SNN{tag}, 45 nm")
        b.plot([p["loihi_uj"] for p in pts], miou, "s" + style, color=line.get_color(), mfc="none",
               label=f"SNN{tag}, Loihi figures")
        if t == trained_t:
            for p, m in zip(pts, miou, strict=True):
                a.annotate(p["label"], (p["synops_per_frame"], m), fontsize=7, xytext=(3, 3),
                           textcoords="offset points")
    if result["ann"] is not None:
        ann = result["ann"]
        a.plot([ann["macs_per_frame"]], [100 * ann["miou"]], "k*", ms=10, label="ANN twin (MACs)")
        b.plot([ann["ann_45nm_uj"]], [100 * ann["miou"]], "k*", ms=10, label="ANN twin, 45 nm")
    a.set(xlabel="SynOps per frame", ylabel="mIoU %", xscale="log", title="accuracy against operations")
    b.set(xlabel="uJ per frame", ylabel="mIoU %", xscale="log", title="accuracy against energy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
