"""The results table of docs/results.md from run folders: one markdown row per run.

A spiking run deployed by `scripts/deploy_run.sh` (RUN/deploy/) gives float /
quantized (torch) / emulator / Lava mIoU, Lava's per-class IoU, spikes,
synaptic operations and energy per frame; an ANN twin gives its torch mIoU and
per-class IoU. Training time and epochs come from RUN/metrics.json.

Usage: python scripts/results_table.py RUN [RUN ...]
"""
from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

from toolchain.core.config import load_config, to_dict
from toolchain.core.formatting import percent
from toolchain.studies.report import Model, class_ious, markdown_table, miou_cells

NONE = "-"  # not measured, or not existing for this model
pct = partial(percent, digits=1, missing=NONE)


def _load(path: Path) -> dict:
    if not path.is_file():
        sys.exit(f"{path}: missing (train the run, and deploy a spiking one with scripts/deploy_run.sh)")
    return json.loads(path.read_text())


def _source(init: Path) -> str:
    """A starting checkpoint by its run folder when it is that run's own."""
    return init.parent.name if init.name == "checkpoint.pt" else init.name


def row(run: Path) -> tuple[list[str], list[str]]:
    cfg = load_config(run / "config.yaml")
    metrics = _load(run / "metrics.json")
    d = cfg.data
    setting = f"{d.height}x{d.width}, {6 if d.channels == 'all' else 2} ch, T={d.time_steps}"
    t = cfg.train
    recipe = f"{t.optimizer} {t.lr:g}" + (", class weights" if t.class_weights != "none" else "") + \
        (f", Dice x{t.dice_weight:g}" if t.dice_weight else "") + \
        (f", boundary x{t.boundary_weight:g}" if t.boundary_weight else "") + \
        (f", from {_source(Path(t.init))}" if t.init else "") + \
        (f", distilled from {_source(Path(t.teacher))} x{t.distill_weight:g}, temperature {t.distill_temperature:g}"
         if t.teacher else "")
    hours = metrics["train_seconds"] / 3600
    trained = f"{metrics['epochs']} ep, {hours:.2f} h" if hours >= 1 else \
        f"{metrics['epochs']} ep, {metrics['train_seconds'] / 60:.0f} min"
    model = Model(run.name, run, metrics=metrics, config=to_dict(cfg))
    if model.ann:
        name, cost = f"{cfg.model.name} ANN twin", [NONE] * 3
    else:
        dep = run / "deploy"
        model.export = _load(dep / "model.net.json")
        model.runs = dict(emulator=_load(dep / "run-emulator.json"), lava=_load(dep / "run-lava.json"))
        energy = _load(dep / "energy" / "energy.json")["energy"]
        name, cost = cfg.model.name, [f"{energy['spikes_per_frame'] / 1e6:.2f} M",
                                      f"{energy['synops_per_frame'] / 1e6:.0f} M",
                                      f"{energy['snn_45nm_uj']:.0f} / {energy['ann_45nm_uj']:.0f}"]
    _, ious = class_ious(model)  # an ANN's from training, a spiking run's from Lava
    cells = [name, setting, recipe] + miou_cells(model, pct, na=NONE) + [pct(v) for v in ious.values()]
    return list(ious), cells + cost + [trained]


def main(runs: list[str]) -> None:
    rows = [row(Path(r)) for r in runs]
    classes = rows[0][0]
    head = ["model", "input", "recipe", "float", "quantized", "emulator", "Lava"] + [f"IoU {c}" for c in classes] + \
        ["spikes/frame", "SynOps/frame", "uJ/frame SNN / ANN (45 nm)", "training"]
    print("\n".join(markdown_table(head, [cells for _, cells in rows])))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
