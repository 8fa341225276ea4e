"""`toolchain data check`: validate a DDD17-layout folder, summarise it, draw it."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import ToolchainError
from ..core.files import atomic_path
from ..core.formatting import percent
from .dataset import IGNORE, BadSampleError
from .ddd17 import CLASS_NAMES_DDD17, SPLITS, read_events, read_label, scan_split

log = logging.getLogger("toolchain.data")

CHANNEL_NAMES = ["pos count", "neg count", "pos t mean", "pos t std", "neg t mean", "neg t std"]
# Cityscapes colours of the merged DDD17 classes.
PALETTE = np.array([[128, 64, 128], [70, 70, 70], [220, 220, 0], [107, 142, 35], [220, 20, 60], [0, 0, 142]],
                   np.uint8)


@dataclass
class CheckReport:
    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    shape: tuple[int, int] | None = None
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(len(CLASS_NAMES_DDD17) + 1, np.int64))
    ch_sum: np.ndarray = field(default_factory=lambda: np.zeros(6))
    ch_sq: np.ndarray = field(default_factory=lambda: np.zeros(6))
    ch_min: np.ndarray = field(default_factory=lambda: np.full(6, np.inf))
    ch_max: np.ndarray = field(default_factory=lambda: np.full(6, -np.inf))
    ch_nonzero: np.ndarray = field(default_factory=lambda: np.zeros(6))
    pixels: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)  # (split, name)

    def class_frequencies(self) -> dict[str, float]:
        total = max(int(self.class_pixels.sum()), 1)
        names = CLASS_NAMES_DDD17 + ["ignore (255)"]
        return {n: float(c) / total for n, c in zip(names, self.class_pixels, strict=True)}

    def channel_stats(self) -> list[dict]:
        n = max(self.pixels, 1)
        mean = self.ch_sum / n
        std = np.sqrt(np.maximum(self.ch_sq / n - mean ** 2, 0))
        return [dict(channel=c, mean=float(mean[i]), std=float(std[i]), min=float(self.ch_min[i]),
                     max=float(self.ch_max[i]), nonzero=float(self.ch_nonzero[i] / n))
                for i, c in enumerate(CHANNEL_NAMES)]

    def table(self) -> str:
        lines = [f"data set {self.root}  ({self.shape[0]}x{self.shape[1]} pixels)" if self.shape else str(self.root)]
        lines.append("")
        lines.append(f"{'split':<8}{'samples':>9}")
        for split, c in self.counts.items():
            lines.append(f"{split:<8}{c:>9}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} bad sample(s)")
        lines.append("")
        lines.append(f"{'class':<18}{'pixels %':>9}")
        for name, fr in self.class_frequencies().items():
            lines.append(f"{name:<18}{percent(fr, width=9)}")
        lines.append("")
        lines.append(f"{'channel':<12}{'mean':>9}{'std':>9}{'min':>9}{'max':>9}{'nonzero %':>11}")
        for s in self.channel_stats():
            lines.append(f"{s['channel']:<12}{s['mean']:>9.4f}{s['std']:>9.4f}{s['min']:>9.3f}{s['max']:>9.3f}"
                         f"{percent(s['nonzero'], width=11)}")
        return "\n".join(lines)


def check_folder(root: str | Path, skip_bad: bool = False, examples: int = 4) -> CheckReport:
    """Read every sample of both splits fully; the first bad file raises
    (or, with skip_bad, is counted and skipped with a warning)."""
    root = Path(root)
    if not root.is_dir():
        raise ToolchainError(f"{root}: data folder not found")
    rep = CheckReport(root)
    present = [s for s in SPLITS if (root / "events" / s).is_dir() or (root / "labels" / s).is_dir()]
    if not present:
        raise ToolchainError(f"{root}: no events/train or events/test folder (not the DDD17 layout)")
    for split in present:
        names, unpaired = scan_split(root, split)
        for path, problem in unpaired:
            if not skip_bad:
                raise BadSampleError(problem)
            log.warning("skipping bad sample: %s", problem)
            rep.skipped.append(path)
        good = []
        for name in names:
            ev_path = root / "events" / split / f"{name}.npy"
            lb_path = root / "labels" / split / f"{name}.png"
            try:
                ev, lb = read_events(ev_path), read_label(lb_path)
                if lb.shape != ev.shape[:2]:
                    raise BadSampleError(f"{lb_path}: label size {lb.shape[0]}x{lb.shape[1]} differs from its "
                                         f"events {ev.shape[0]}x{ev.shape[1]}")
                if rep.shape is not None and ev.shape[:2] != rep.shape:
                    raise BadSampleError(f"{ev_path}: size {ev.shape[0]}x{ev.shape[1]} differs from the other "
                                         f"samples' {rep.shape[0]}x{rep.shape[1]}")
            except BadSampleError as e:
                if not skip_bad:
                    raise
                log.warning("skipping bad sample: %s", e)
                rep.skipped.append(str(ev_path))
                continue
            rep.shape = ev.shape[:2]
            good.append(name)
            flat = ev.reshape(-1, 6).astype(np.float64)
            rep.ch_sum += flat.sum(0)
            rep.ch_sq += (flat ** 2).sum(0)
            rep.ch_min = np.minimum(rep.ch_min, flat.min(0))
            rep.ch_max = np.maximum(rep.ch_max, flat.max(0))
            rep.ch_nonzero += (flat != 0).sum(0)
            rep.pixels += flat.shape[0]
            counts = np.bincount(lb.ravel(), minlength=256)
            rep.class_pixels[:-1] += counts[:len(CLASS_NAMES_DDD17)]
            rep.class_pixels[-1] += counts[IGNORE]
        rep.counts[split] = len(good)
        step = max(1, len(good) // max(examples, 1))
        rep.examples += [(split, n) for n in good[::step][:examples]]
    if sum(rep.counts.values()) == 0:
        raise ToolchainError(f"{root}: no usable samples")
    return rep


def overlay(label: np.ndarray, base: np.ndarray) -> np.ndarray:
    """RGB picture: base (H, W) in [0, 1] under the label colours; ignore stays grey."""
    grey = np.repeat((base[..., None] * 255).astype(np.float32), 3, -1)
    colour = PALETTE[np.minimum(label, len(PALETTE) - 1)].astype(np.float32)
    mix = np.where((label == IGNORE)[..., None], grey, 0.45 * grey + 0.55 * colour)
    return np.clip(mix, 0, 255).astype(np.uint8)


def gallery(rep: CheckReport, out: str | Path, examples: list[tuple[str, str]] | None = None) -> Path:
    """PNG with, per sample: ON histogram, OFF histogram, label overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = examples or rep.examples
    if not rows:
        raise ToolchainError(f"{rep.root}: no samples to draw")
    aspect = rep.shape[0] / rep.shape[1]
    fig, axes = plt.subplots(len(rows), 3, figsize=(11, len(rows) * (11 / 3 * aspect + 0.35) + 0.4), squeeze=False)
    for ax_row, (split, name) in zip(axes, rows, strict=True):
        ev = read_events(rep.root / "events" / split / f"{name}.npy")
        lb = read_label(rep.root / "labels" / split / f"{name}.png")
        img_path = rep.root / "images" / split / f"{name}.png"
        if img_path.is_file():
            with Image.open(img_path) as im:
                base = np.asarray(im.convert("L"), np.float32) / 255.0
        else:
            mag = ev[..., 0] + ev[..., 1]
            base = mag / max(float(mag.max()), 1e-9)
        for ax, data, title in ((ax_row[0], ev[..., 0], "ON events"), (ax_row[1], ev[..., 1], "OFF events")):
            ax.imshow(data, cmap="inferno", vmin=0, vmax=max(float(np.percentile(data, 99.5)), 1.0))
            ax.set_title(f"{split}/{name}: {title}", fontsize=8)
        ax_row[2].imshow(overlay(lb, base))
        ax_row[2].set_title("labels", fontsize=8)
        for ax in ax_row:
            ax.set_axis_off()
    handles = [matplotlib.patches.Patch(color=PALETTE[i] / 255, label=n) for i, n in enumerate(CLASS_NAMES_DDD17)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out
