"""mIoU under input corruptions, for a spiking net and its non-spiking twin.

The paper's corruptions act on the normalised frame before encoding:
Gaussian noise (sigma), salt-and-pepper (fraction of pixels), Gaussian blur
(sigma in pixels). Event-camera corruptions act on the histogram channels,
read as event counts with `FULL_SCALE` events at value 1: dropped events
(each event kept with probability 1 - p), hot pixels (a fraction of pixels
firing at full scale in one polarity), background activity (Poisson noise
events, mean per pixel and channel). Timestamp jitter moves every input
spike by a uniform integer number of steps in [-j, j] (clipped to the
window), which is what jitter does to a time-binned event stream.
All draws are seeded per frame, so SNN and ANN see the same corrupted inputs.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import models

from ..core.errors import ToolchainError
from ..core.formatting import percent
from .sweep import load_frames, quiet_export, score

FULL_SCALE = 8  # events that a histogram value of 1 stands for


def gaussian_noise(frame, s, g):
    return frame + s * torch.randn(frame.shape, generator=g)


def salt_pepper(frame, p, g):
    u = torch.rand(frame.shape[-2:], generator=g)
    out = frame.clone()
    out[..., u < p / 2] = 0.0
    out[..., (u >= p / 2) & (u < p)] = 1.0
    return out


def gaussian_blur(frame, sigma, g):
    if sigma <= 0:
        return frame
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = frame.shape[0]
    x = frame[None]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return x[0]


def dropped_events(frame, p, g):
    counts = torch.round(frame.clamp(0, 1) * FULL_SCALE)
    return torch.binomial(counts, torch.full_like(counts, 1 - p), generator=g) / FULL_SCALE


def hot_pixels(frame, p, g):
    hot = torch.rand(frame.shape[-2:], generator=g) < p
    channel = torch.randint(0, frame.shape[0], frame.shape[-2:], generator=g)
    out = frame.clone()
    for c in range(frame.shape[0]):
        out[c][hot & (channel == c)] = 1.0
    return out


def background_activity(frame, rate, g):
    return frame + torch.poisson(torch.full(frame.shape, float(rate)), generator=g) / FULL_SCALE


def timestamp_jitter(x, j, g):
    """Spikes (N, C, H, W, T) each moved by U{-j..j} steps."""
    j = int(j)
    if j == 0:
        return x
    t_steps = x.shape[-1]
    idx = x.nonzero(as_tuple=True)
    shift = torch.randint(-j, j + 1, (len(idx[0]),), generator=g)
    t_new = (idx[-1] + shift).clamp(0, t_steps - 1)
    out = torch.zeros_like(x)
    out[idx[:-1] + (t_new,)] = 1.0
    return out


# name -> (function, strengths, acts on "frame" or "spikes", unit)
CORRUPTIONS: dict[str, tuple[Callable, list[float], str, str]] = {
    "gaussian_noise": (gaussian_noise, [0.05, 0.1, 0.2], "frame", "sigma"),
    "salt_pepper": (salt_pepper, [0.02, 0.05, 0.1], "frame", "fraction of pixels"),
    "gaussian_blur": (gaussian_blur, [0.5, 1.0, 2.0], "frame", "sigma (px)"),
    "dropped_events": (dropped_events, [0.2, 0.4, 0.6], "frame", "drop probability"),
    "hot_pixels": (hot_pixels, [0.002, 0.01, 0.05], "frame", "fraction of pixels"),
    "background_activity": (background_activity, [0.05, 0.1, 0.2], "frame", "noise events per pixel"),
    "timestamp_jitter": (timestamp_jitter, [1, 2, 4], "spikes", "steps"),
}


def corrupt_spikes(x: torch.Tensor, name: str, strength: float, seed: int = 0) -> torch.Tensor:
    fn, _, where, _ = CORRUPTIONS[name]
    if where != "spikes":
        raise ToolchainError(f"corruption {name!r} acts on frames, not on spike trains")
    return fn(x, strength, torch.Generator().manual_seed(seed))


def frame_transform(name: str, strength: float, seed: int = 0):
    """(frame, index) -> corrupted frame, seeded per frame."""
    fn = CORRUPTIONS[name][0]

    def apply(frame, index):
        return fn(frame, strength, torch.Generator().manual_seed(seed * 1_000_003 + index))
    return apply


def robustness(checkpoints: list[tuple[str, str]], corruptions: list[str] | None = None, frames: int = 16,
               time_steps: int | None = None, strengths: dict[str, list[float]] | None = None,
               data_root: str | None = None, log: Callable[[str], None] = print) -> dict:
    """mIoU of each (label, checkpoint) under each corruption at strength 0 and its strengths."""
    corruptions = corruptions or list(CORRUPTIONS)
    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad:
        raise ToolchainError(f"--corruptions: unknown {bad[0]!r} (known: {', '.join(CORRUPTIONS)})")
    rows = []
    for label, path in checkpoints:
        model, cfg = models.load_checkpoint(path, data_root=data_root)
        t_steps = int(time_steps or cfg.data.time_steps)
        spiking = isinstance(model, models.SpikingGraph)
        net = quiet_export(model, t_steps) if spiking else None
        clean_x, clean_y = load_frames(cfg, t_steps, frames)
        clean = score(model, TensorDataset(clean_x, clean_y), net)
        for name in corruptions:
            fn, levels, where, unit = CORRUPTIONS[name]
            levels = (strengths or {}).get(name, levels)
            rows.append(dict(label=label, kind="SNN" if spiking else "ANN", corruption=name, strength=0.0,
                             miou=clean, unit=unit))
            for s in levels:
                if where == "frame":
                    x, y = load_frames(cfg, t_steps, frames, transform=frame_transform(name, s))
                else:
                    x, y = corrupt_spikes(clean_x, name, s), clean_y
                value = score(model, TensorDataset(x, y), net)
                rows.append(dict(label=label, kind="SNN" if spiking else "ANN", corruption=name, strength=float(s),
                                 miou=value, unit=unit))
                log(f"{label:<16} {name:<20} {s:<6g} mIoU {percent(value, width=6)}%")
    return dict(frames=int(frames), corruptions=corruptions, rows=rows)


def middle(result: dict) -> dict:
    """mIoU at each corruption's middle strength: {label: {corruption: (strength, miou)}}."""
    out = {}
    for r in result["rows"]:
        out.setdefault(r["label"], {}).setdefault(r["corruption"], []).append(r)
    return {label: {c: (lambda rs: (rs[len(rs) // 2]["strength"], rs[len(rs) // 2]["miou"]))(
        sorted([r for r in rows if r["strength"] > 0], key=lambda r: r["strength"]))
        for c, rows in per.items()} for label, per in out.items()}


def table(result: dict) -> tuple[list[str], list[list]]:
    labels = list(dict.fromkeys(r["label"] for r in result["rows"]))
    header = ["corruption", "strength"] + labels
    keyed = {(r["corruption"], r["strength"], r["label"]): r["miou"] for r in result["rows"]}
    rows = []
    for c in result["corruptions"]:
        for s in sorted({r["strength"] for r in result["rows"] if r["corruption"] == c}):
            rows.append([c, f"{s:g}"] + [percent(keyed[(c, s, l)]) if (c, s, l) in keyed else ""
                                         for l in labels])
    return header, rows


def plot(result: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.files import atomic_path

    names = result["corruptions"]
    cols = min(4, len(names))
    rows_n = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.8 * rows_n), squeeze=False)
    labels = list(dict.fromkeys(r["label"] for r in result["rows"]))
    for ax, name in zip(axes.flat, names, strict=False):
        for label in labels:
            rs = sorted((r for r in result["rows"] if r["label"] == label and r["corruption"] == name),
                        key=lambda r: r["strength"])
            if rs:
                ax.plot([r["strength"] for r in rs], [100 * r["miou"] for r in rs], "-o", ms=3,
                        label=f"{label} ({rs[0]['kind']})")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(CORRUPTIONS[name][3], fontsize=8)
        ax.set_ylabel("mIoU (%)", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)
