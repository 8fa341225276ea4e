"""Training curves and the prediction gallery, as PNG files."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..core.files import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def curves(history: list[dict], path: str | Path) -> Path:
    """Loss, mIoU / pixel accuracy and firing rate against epoch."""
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.5))
    trained = [h for h in history if h.get("train_loss") is not None]
    ax[0].plot([h["epoch"] for h in trained], [h["train_loss"] for h in trained], "o-", label="train")
    ax[0].set(title="cross-entropy loss", xlabel="epoch")
    ax[1].plot(ep, [h["miou"] for h in history], "o-", label="mIoU")
    ax[1].plot(ep, [h["pixel_acc"] for h in history], "s--", label="pixel accuracy")
    ax[1].set(title="test metrics", xlabel="epoch", ylim=(0, 1))
    ax[1].legend()
    layers = list(history[-1].get("firing", {}))
    for name in layers:
        ax[2].plot(ep, [h.get("firing", {}).get(name, np.nan) for h in history], label=name)
    ax[2].set(title="firing rate (spikes/neuron/step)", xlabel="epoch")
    if layers:
        ax[2].legend(fontsize=6, ncol=2)
    return _save(fig, Path(path))


def _palette(k: int) -> np.ndarray:
    colors = plt.get_cmap("tab10" if k <= 10 else "tab20")(np.arange(k))[:, :3]
    return np.concatenate([colors, np.ones((256 - k, 3))])  # ignore (255) is white


def gallery(inputs: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, class_names: list[str],
            path: str | Path) -> Path:
    """Rows of (event input | ground truth | prediction). `inputs` are
    (N, C, H, W, T) spikes; the picture shows spikes summed over time, ON
    minus OFF when there are two channels or more."""
    n = len(inputs)
    x = inputs.float().sum(-1)
    img = (x[:, 0] - x[:, 1]) if x.shape[1] > 1 else x[:, 0]
    pal = _palette(len(class_names))
    fig, ax = plt.subplots(n, 3, figsize=(9, 2.6 * n), squeeze=False)
    for i in range(n):
        lim = float(img[i].abs().max()) or 1.0
        ax[i, 0].imshow(img[i].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax[i, 1].imshow(pal[labels[i].clamp(0, 255).numpy()])
        ax[i, 2].imshow(pal[preds[i].numpy()])
        for a in ax[i]:
            a.axis("off")
    for a, t in zip(ax[0], ("event input", "ground truth", "prediction"), strict=False):
        a.set_title(t)
    handles = [matplotlib.patches.Patch(color=pal[k], label=c) for k, c in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(class_names), 6), fontsize=8)
    return _save(fig, Path(path))
