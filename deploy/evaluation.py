"""The one evaluation loop: frames drawn by the data layer, run through a
predictor, scored by `SegmentationMetric`.

A predictor maps a batch (x (N, C, H, W, T), y (N, H, W)) to class maps
(N, H, W) and keeps whatever else its caller reports: `TorchPredictor` (a
torch model: loss, firing rates, readout peak) or `NetPredictor` (a `.net`
on the emulator or in Lava: readout voltages, spikes per layer). Training,
`toolchain run` and the studies all score through `evaluate`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from toolchain.core.metrics import SegmentationMetric
from toolchain.data.dataset import IGNORE, draw

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TorchPredictor:
    """A torch model on `device`; sums the loss, per-layer firing, readout peak
    and, given a `deploy.synops.SynOpsCounter`, SynOps over the batches; the
    loss sees the scores x `logit_scale` (`train.logit_scale`)."""

    def __init__(self, model, device: torch.device | None = None, amp: bool = False, synops=None,
                 logit_scale: float = 1.0):
        self.model, self.amp, self.synops, self.logit_scale = model, amp, synops, logit_scale
        self.device = device or torch.device("cpu")
        self.loss_sum, self.pixels, self.frames, self.readout_max, self.synops_sum = 0.0, 0.0, 0, 0.0, 0.0
        self.firing_sum: dict[str, float] = {}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import models
        from models.blocks import firing_rates

        x, y = x.to(self.device), y.to(self.device)
        with torch.autocast(self.device.type, enabled=self.amp):
            scores, spikes = models.predict(self.model, x, (y.shape[-2], y.shape[-1]))
        scores = scores.float()
        self.readout_max = max(self.readout_max, float(scores.abs().max()))
        valid = int((y != IGNORE).sum())
        if valid:
            self.loss_sum += float(F.cross_entropy(scores * self.logit_scale, y, ignore_index=IGNORE, reduction="sum"))
            self.pixels += valid
        for k, v in firing_rates(spikes).items():
            self.firing_sum[k] = self.firing_sum.get(k, 0.0) + v * len(x)
        if self.synops is not None:
            self.synops_sum += float(self.synops(x, spikes)[0]) * len(x)
        self.frames += len(x)
        return scores.argmax(1)


class NetPredictor:
    """A `.net` (`deploy.Deployed`) on `backend`; keeps the readout voltages and sums the spikes per layer."""

    def __init__(self, deployed, backend: str = "emulator"):
        self.deployed, self.backend = deployed, backend
        self.voltages: list[np.ndarray] = []
        self.counts = {l.name: 0 for l in deployed.net.layers[:-1]}

    def __call__(self, x: torch.Tensor, y=None) -> torch.Tensor:
        r = self.deployed.run(x, backend=self.backend, keep_spikes=False)
        self.voltages.append(r.voltage)
        for name in self.counts:
            self.counts[name] += int(r.counts[name].sum())
        return torch.as_tensor(r.class_map.astype(np.int64))


def evaluate(predictor: Predictor, dataset, indices: Sequence[int], num_classes: int, *, batch_size: int,
             progress: bool = False, desc: str = "eval", leave: bool = True) -> SegmentationMetric:
    """Samples `indices` of `dataset` in batches of `batch_size`, in order, through
    `predictor`; the confusion matrix of its class maps against the labels.

    A data set with epochs is set to epoch 0 first: every evaluation sees the same draw."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    metric = SegmentationMetric(num_classes, IGNORE)
    indices, step = list(indices), max(1, batch_size)
    for start in tqdm(range(0, len(indices), step), desc=desc, unit="batch", leave=leave, disable=not progress):
        x, y = draw(dataset, indices[start:start + step])
        metric.update(predictor(x, y), y)
    return metric
