"""Segmentation metrics from a confusion matrix (torchvision's reference shape).

One `SegmentationMetric` accumulates a K x K confusion matrix (rows: ground
truth, columns: prediction) over any number of batches; `compute()` derives
mIoU, per-class IoU and pixel accuracy from it. Pixels labelled
`ignore_index` count nowhere. Classes that never occur in either the ground
truth or the prediction have an undefined IoU (NaN) and are left out of the
mean, as in the usual VOC/DDD17 protocol.
"""
from __future__ import annotations

import torch


class SegmentationMetric:
    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: `pred` and `target` are (N, H, W) integer class maps."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred = pred.detach().reshape(-1).to("cpu", torch.int64)
        target = target.detach().reshape(-1).to("cpu", torch.int64)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(f"target holds a class outside 0..{self.num_classes - 1} (and not {self.ignore_index})")
        if pred.numel() and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"prediction holds a class outside 0..{self.num_classes - 1}")
        k = self.num_classes
        self.confusion += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)

    def reduce(self) -> None:
        """Sum the confusion matrix over all ranks of a torch.distributed job."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            backend = dist.get_backend()
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            t = self.confusion.to(device)
            dist.all_reduce(t)
            self.confusion = t.cpu()

    def compute(self) -> dict:
        h = self.confusion.double()
        tp = h.diag()
        gt = h.sum(1)
        predicted = h.sum(0)
        union = gt + predicted - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        valid = ~torch.isnan(iou)
        total = h.sum()
        return {
            "miou": float(iou[valid].mean()) if valid.any() else float("nan"),
            "iou_per_class": [float(v) for v in iou],
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        }
