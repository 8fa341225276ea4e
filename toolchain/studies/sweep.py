"""mIoU against the number of time steps T (the paper's latency study).

Spiking checkpoints are exported to their `.net` form at each T and run on
the bit-exact emulator (what Lava computes); non-spiking twins are evaluated
in torch on the same encoded frames (their input is the spike rate), as a
reference line. Conversion needs many more steps than direct training: the
converted net's rates must settle before they approximate ReLU activations.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

import models

from ..core import checkpoint
from ..core.errors import ToolchainError
from ..core.formatting import percent

BATCH = 8


def load_frames(cfg, time_steps: int, frames: int, split: str = "test", transform=None):
    """(x (N, C, H, W, T), y (N, H, W)) from the checkpoint's data set at `time_steps`.

    `transform(frame, index) -> frame` corrupts the normalised frame before encoding."""
    ds, n = _dataset(cfg, time_steps, frames, split, encode_input=False)
    xs, ys = [], []
    for i in range(n):
        frame, label = ds[i]
        if transform is not None:
            frame = transform(frame, i).clamp(0, 1)
        xs.append(ds.encode(frame, i))  # the clean sample's own draw, as in evaluation
        ys.append(label)
    return torch.stack(xs), torch.stack(ys)


def _dataset(cfg, time_steps: int, frames: int, split: str = "test", encode_input: bool = True):
    """The checkpoint's data set at `time_steps` and how many of its frames to use."""
    from toolchain.data import build_dataset

    ds = build_dataset(replace(cfg.data, time_steps=int(time_steps)), split, encode_input=encode_input)
    n = min(frames, len(ds))
    if n == 0:
        raise ToolchainError(f"{split}: no frames to evaluate")
    return ds, n


def score(model, dataset, net=None, frames: int | None = None) -> float:
    """mIoU of the one evaluator over `dataset` (its first `frames` samples):
    spiking models through their exported `.net` on the emulator, twins in torch."""
    from deploy import Deployed
    from deploy.evaluation import NetPredictor, TorchPredictor, evaluate

    if isinstance(model, models.SpikingGraph):
        if net is None:
            net = quiet_export(model, dataset[0][0].shape[-1])
        predictor = NetPredictor(Deployed(net))
    else:
        predictor = TorchPredictor(model)
    n = len(dataset) if frames is None else min(frames, len(dataset))
    return evaluate(predictor, dataset, range(n), len(model.class_names), batch_size=BATCH).compute()["miou"]


def quiet_export(model, time_steps: int):
    """The `.net` graph at `time_steps`; the readout-range warning is about
    worst-case inputs and would repeat for every T."""
    import warnings

    from deploy.export import build_netfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_netfile(model, time_steps=time_steps)


def sweep(checkpoints: list[tuple[str, str]], steps: list[int], frames: int = 32, data_root: str | None = None,
          log: Callable[[str], None] = print) -> dict:
    """mIoU of each (label, checkpoint) at each T in `steps`."""
    if not steps or any(t < 1 for t in steps):
        raise ToolchainError(f"--steps: need positive time steps, got {steps}")
    rows = []
    for label, path in checkpoints:
        ckpt = checkpoint.load(path)
        model, cfg = models.load_checkpoint(path, data_root=data_root, entries=ckpt)
        spiking = isinstance(model, models.SpikingGraph)
        kind = ("converted" if "conversion" in ckpt else "trained") if spiking else "ANN twin"
        for t in steps:
            ds, n = _dataset(cfg, t, frames)
            value = score(model, ds, quiet_export(model, t) if spiking else None, n)
            rows.append(dict(label=label, checkpoint=str(path), kind=kind, time_steps=int(t), miou=value,
                             frames=n,
                             pipeline_depth=int(model.pipeline_depth) if spiking else None))
            log(f"{label:<20} T={t:<4d} mIoU {percent(value, width=6)}%")
    return dict(steps=[int(t) for t in steps], rows=rows)


def table(result: dict) -> tuple[list[str], list[list]]:
    """Header and rows: one row per model, one column per T (mIoU %)."""
    labels = list(dict.fromkeys(r["label"] for r in result["rows"]))
    header = ["model", "kind"] + [f"T={t}" for t in result["steps"]]
    rows = []
    for label in labels:
        mine = {r["time_steps"]: r for r in result["rows"] if r["label"] == label}
        kind = next(iter(mine.values()))["kind"]
        rows.append([label, kind] + [percent(mine[t]["miou"]) if t in mine else "" for t in result["steps"]])
    return header, rows


def plot(result: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.files import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["label"] for r in result["rows"]):
        rs = sorted((r for r in result["rows"] if r["label"] == label), key=lambda r: r["time_steps"])
        style = "--" if rs[0]["kind"] == "ANN twin" else "-o"
        line, = ax.plot([r["time_steps"] for r in rs], [100 * r["miou"] for r in rs], style,
                        label=f"{label} ({rs[0]['kind']})")
        depth = rs[0].get("pipeline_depth")
        if depth:  # a frame answers T + D steps after it starts: the latency T does not show
            ax.axvline(depth, color=line.get_color(), linestyle=":", alpha=0.7)
            ax.annotate(f"D={depth}", (depth, 0.02), xycoords=("data", "axes fraction"), color=line.get_color(),
                        fontsize=8, rotation=90, ha="right", va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("time steps T (a frame runs T + D steps; dotted: pipeline depth D)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("mIoU against latency")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
