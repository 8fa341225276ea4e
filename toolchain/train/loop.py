"""The training loop, read top to bottom (torchvision's reference shape).

set-up -> data -> model -> optimiser and schedule -> (resume) -> baselines
-> for each epoch: train, evaluate, log, checkpoint -> gallery and summary.

Reproducibility: every random draw is seeded from (train.seed, epoch): the
sampler's order (DistributedSampler.set_epoch), the augmentation generator
and the data set's Poisson draw (`set_epoch`). A checkpoint also records the
position inside an interrupted epoch and the augmentation generator's state,
so that `--resume` reproduces the uninterrupted run exactly on the CPU.
"""
from __future__ import annotations

import csv
import gc
import io
import json
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import models
from deploy.synops import SynOpsCounter, budget_penalty
from models.ann import activation_stats, layer_levels
from models.blocks import set_quantized
from models.fused_cuba import set_neuron_impl

from ..core import checkpoint
from ..core.allocator import keep_freed_memory
from ..core.config import NEURON_FIELDS, Config, config_from_dict, save_config, to_dict
from ..core.errors import ToolchainError
from ..core.files import write_text
from ..core.metrics import SegmentationMetric
from ..data.dataset import IGNORE, draw
from . import distributed, plots

CHECKPOINT = "checkpoint.pt"
GALLERY_SIZE = 4


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ToolchainError("train.device=cuda but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ToolchainError(f"train.device: {name!r} is not one of auto, cpu, cuda")
    return torch.device(name)


def build_datasets(cfg: Config, d: distributed.Dist):
    from toolchain.data import build_dataset, ensure_default_data

    # Only one process generates the default data; the others wait for it.
    if cfg.data.root is None and cfg.data.dataset == "ddd17":
        if d.main:
            ensure_default_data(cfg.data)
        distributed.barrier(d)
    return build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")


def make_optimizer(cfg: Config, params):
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    raise ToolchainError(f"train.optimizer: {t.optimizer!r} is not one of sgd, adamw")


def make_scheduler(cfg: Config, optimizer):
    t = cfg.train
    if t.schedule == "step":  # the paper: x0.1 at 50% and 80% of the epochs
        milestones = sorted({max(1, int(t.epochs * 0.5)), max(1, int(t.epochs * 0.8))})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, t.epochs))
    raise ToolchainError(f"train.schedule: {t.schedule!r} is not one of step, cosine")


def scheduler_state(scheduler) -> dict:
    """The schedule's state in plain values for the checkpoint: MultiStepLR
    keeps its milestones in a Counter, stored as a list."""
    state = scheduler.state_dict()
    if isinstance(state.get("milestones"), Counter):
        state["milestones"] = sorted(state["milestones"].elements())
    return state


def load_scheduler_state(scheduler, state: dict) -> None:
    """The inverse of `scheduler_state`; the stored milestones win over the
    rebuilt ones (a resumed run that adds epochs keeps the schedule it started with)."""
    if isinstance(state.get("milestones"), list):
        state = dict(state, milestones=Counter(state["milestones"]))
    scheduler.load_state_dict(state)


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip and random crop (pad by 1/8 of the size, crop
    back), per sample, drawn from `gen`. x: (N, C, H, W, T), y: (N, H, W)."""
    n, _, h, w, _ = x.shape
    ph, pw = max(1, h // 8), max(1, w // 8)
    flips = torch.rand(n, generator=gen) < 0.5
    dy = torch.randint(0, 2 * ph + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pw + 1, (n,), generator=gen)
    xp = F.pad(x, (0, 0, pw, pw, ph, ph))
    yp = F.pad(y, (pw, pw, ph, ph), value=IGNORE)
    xs, ys = [], []
    for i in range(n):
        xi = xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        yi = yp[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        if flips[i]:
            xi, yi = xi.flip(-2), yi.flip(-1)
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)


def loss_fn(scores: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
            dice_weight: float = 0.0, boundary_weight: float = 0.0) -> torch.Tensor:
    """Cross-entropy, plus `dice_weight` x the soft Dice loss (mean over the
    classes present in the batch), which counts a class by its overlap rather
    than its pixels: a pole of 10 pixels weighs as much as the road. With
    `boundary_weight`, pixels on a label boundary weigh 1 + boundary_weight in
    the cross-entropy: a pole 1-2 pixels wide is all boundary, the road's
    inside none."""
    if boundary_weight:
        ce = F.cross_entropy(scores, target, weight=weight, ignore_index=IGNORE, reduction="none")
        pixel = 1 + boundary_weight * boundaries(target).float()
        if weight is not None:  # the weighted mean F.cross_entropy takes: by class weight of the target
            pixel = pixel * weight[target.clamp(max=len(weight) - 1)]
        pixel = pixel * (target != IGNORE)
        loss = (ce * pixel).sum() / pixel.sum().clamp(min=1e-12)
    else:
        loss = F.cross_entropy(scores, target, weight=weight, ignore_index=IGNORE)
    if dice_weight:
        loss = loss + dice_weight * dice_loss(scores, target)
    return loss


def distill_loss(scores: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the class distributions at `temperature`, mean
    over pixels, times temperature^2 (Hinton et al.'s scaling, so that its
    gradient keeps its size as the temperature changes). Every pixel counts,
    ignored ones too: the teacher has an answer there."""
    log_p = F.log_softmax(scores / temperature, dim=1)
    log_q = F.log_softmax(teacher / temperature, dim=1)
    return (log_q.exp() * (log_q - log_p)).sum(dim=1).mean() * temperature ** 2


def layer_distill_loss(spikes: dict[str, torch.Tensor], acts: dict[str, torch.Tensor],
                       levels: dict[str, float], time_steps: int) -> torch.Tensor:
    """Mean over the `levels`' layers of sum((rate - a / level)^2) / sum((a /
    level)^2): each spiking layer's rates (spikes per step over the
    frame's `time_steps`) against what its twin's activations `acts` stand for."""
    terms = []
    for name, level in levels.items():
        rate = spikes[name].float().sum(-1) / time_steps
        want = acts[name].float() / level
        terms.append(((rate - want) ** 2).sum() / (want ** 2).sum().clamp(min=1e-12))
    return torch.stack(terms).mean()


def boundaries(target: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool: labelled pixels with another label among their 8
    neighbours (ignored pixels neither count as a label nor are marked)."""
    t = target.unsqueeze(1).long()
    valid = t != IGNORE
    high = F.max_pool2d(torch.where(valid, t, -1).float(), 3, 1, 1)
    low = -F.max_pool2d(-torch.where(valid, t, IGNORE + 1).float(), 3, 1, 1)
    return ((high != low) & valid)[:, 0]


def dice_loss(scores: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - soft Dice of the softmax against the labels, averaged over the classes
    that occur in the batch's labels; ignored pixels left out."""
    valid = (target != IGNORE).unsqueeze(1)
    prob = scores.float().softmax(1) * valid
    onehot = F.one_hot(target.clamp(max=scores.shape[1] - 1) * valid[:, 0], scores.shape[1]).permute(0, 3, 1, 2)
    onehot = onehot * valid
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    total = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    present = onehot.sum(dim=(0, 2, 3)) > 0
    dice = (2 * inter + eps) / (total + eps)
    return 1 - dice[present].mean() if bool(present.any()) else scores.sum() * 0


@torch.no_grad()
def evaluate(model, dataset, device, d: distributed.Dist | None = None, batch_size: int = 16,
             amp: bool = False, progress: bool = False, frames: int | None = None, synops=None,
             logit_scale: float = 1.0) -> dict:
    """mIoU, per-class IoU, pixel accuracy, loss and firing rate per layer
    over `dataset`, or its first `frames` samples (the ranks split them;
    results are reduced over all), through the one evaluator; the loss sees
    the scores x `logit_scale`, as in training."""
    from deploy.evaluation import TorchPredictor
    from deploy.evaluation import evaluate as score

    d = d or distributed.Dist()
    model.eval()
    count = len(dataset) if frames is None else min(frames, len(dataset))
    p = TorchPredictor(model, device, amp, synops, logit_scale)
    metric = score(p, dataset, range(d.rank, count, d.world), dataset.num_classes, batch_size=batch_size,
                   progress=progress and d.main and sys.stderr.isatty(), leave=False)
    names = [n.name for n in model.nodes[:-1]]
    totals = distributed.all_sum(d, [p.loss_sum, p.pixels, float(p.frames), p.synops_sum]
                                 + [p.firing_sum.get(k, 0.0) for k in names])
    metric.reduce()
    out = metric.compute()
    out["loss"] = totals[0] / max(totals[1], 1.0)
    out["firing"] = {k: v / max(totals[2], 1.0) for k, v in zip(names, totals[4:], strict=True)}
    if synops is not None:
        out["synops_per_frame"] = totals[3] / max(totals[2], 1.0)
    out["readout_max"] = distributed.all_max(d, p.readout_max)
    return out


def class_counts(labels, num_classes: int) -> torch.Tensor:
    """Labelled pixels per class over `labels` (ignored pixels left out)."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for y in labels:
        y = y[y != IGNORE]
        counts += torch.bincount(y.reshape(-1), minlength=num_classes)[:num_classes]
    return counts


def majority_baseline(train_counts: torch.Tensor, test_labels) -> tuple[int, dict]:
    """The most frequent training class predicted everywhere, scored on test."""
    cls = int(train_counts.argmax())
    metric = SegmentationMetric(len(train_counts), IGNORE)
    for y in test_labels:
        metric.update(torch.full_like(y, cls), y)
    return cls, metric.compute()


def class_weights(kind: str, counts: torch.Tensor) -> list[float] | None:
    """Cross-entropy class weights from the training pixel counts: None, or
    1/sqrt(frequency) scaled to mean 1 over the classes present (a class
    absent from the training split gets 0: nothing to learn it from)."""
    if kind == "none":
        return None
    if kind != "inverse-sqrt":
        raise ToolchainError(f"train.class_weights: {kind!r} is not one of none, inverse-sqrt")
    freq = counts.double() / max(int(counts.sum()), 1)
    w = torch.where(freq > 0, freq.clamp_min(1e-12).rsqrt(), torch.zeros_like(freq))
    return (w * int((freq > 0).sum()) / w.sum()).tolist()


def _labels(cfg: Config, split: str):
    from toolchain.data import build_dataset

    ds = build_dataset(cfg.data, split, encode_input=False)
    for i in range(len(ds)):
        yield ds[i][1]


def _write_csv(history: list[dict], class_names: list[str], path: Path) -> None:
    layers = list(history[-1].get("firing", {}))
    cols = ["epoch", "lr", "train_loss", "test_loss", "miou", "pixel_acc", "seconds"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols + [f"iou_{c}" for c in class_names] + [f"fire_{n}" for n in layers])
    for h in history:
        w.writerow([h.get(c if c != "test_loss" else "loss") for c in cols] + h["iou_per_class"]
                   + [h.get("firing", {}).get(n) for n in layers])
    write_text(path, buf.getvalue())


class _Interrupt:
    """Turns SIGINT into a flag checked between steps, so the loop can save a
    checkpoint at a clean point before it stops."""

    def __init__(self):
        self.flag = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._old = None
        return self

    def _handle(self, signum, frame):
        self.flag = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _all_flag(d: distributed.Dist, flag: bool) -> bool:
    return bool(distributed.all_sum(d, [float(flag)])[0]) if d.enabled else flag


@dataclass
class Session:
    """Everything one training run holds between epochs."""

    cfg: Config
    run_dir: Path
    d: distributed.Dist
    device: torch.device
    amp: bool
    model: torch.nn.Module
    net: torch.nn.Module  # the model, wrapped for DDP when distributed
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    dataset_facts: dict
    synops: SynOpsCounter | None = None  # spiking models only
    teacher: torch.nn.Module | None = None  # train.teacher, in eval mode
    teacher_units: float = 1.0  # the factor on its scores its own loss saw (its train.logit_scale)
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    @property
    def class_names(self) -> list[str]:
        return self.dataset_facts["class_names"]

    def save(self, epoch: int, step: int, aug_state=None, partial=None) -> None:
        if self.d.main:
            checkpoint.save(self.checkpoint_path, model=self.model.state_dict(),
                            optimizer=self.optimizer.state_dict(), lr_scheduler=scheduler_state(self.scheduler),
                            scaler=self.scaler.state_dict(), epoch=epoch, step=step, aug_rng=aug_state,
                            partial=partial, history=self.history, extra=self.extra, config=to_dict(self.cfg),
                            dataset=self.dataset_facts)
        distributed.barrier(self.d)


def setup_device(t) -> tuple[torch.device, distributed.Dist, bool]:
    """The device, the distributed context and whether to use mixed precision."""
    device = pick_device(t.device)
    d = distributed.setup(device)
    if device.type == "cuda":
        torch.cuda.set_device(d.local_rank)
        device = torch.device("cuda", d.local_rank)
        torch.backends.cudnn.benchmark = True
    else:
        keep_freed_memory()  # for library callers; `toolchain` set it before torch loaded
        if d.enabled:
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // d.world))
    return device, d, bool(t.amp and device.type == "cuda")


def setup(cfg: Config, run_dir: Path, train_ds, device: torch.device, d: distributed.Dist, amp: bool) -> Session:
    """Model, optimiser, schedule and scaler for `cfg` on the data set's channels and classes."""
    t = cfg.train
    if t.neuron == "fused" and device.type != "cpu":
        raise ToolchainError(f"train.neuron=fused runs on the CPU only; this run trains on {device.type} "
                             f"(use auto, which picks slayer's CUDA kernels there)")
    try:
        set_neuron_impl(t.neuron)
    except ValueError as e:
        raise ToolchainError(f"train.neuron: {e}") from e
    torch.manual_seed(t.seed)
    facts = dict(in_channels=int(train_ds.in_channels), num_classes=int(train_ds.num_classes),
                 class_names=list(train_ds.class_names))
    model = models.from_config(cfg, facts["in_channels"], facts["num_classes"], ann=t.ann, quantized=t.qat).to(device)
    if t.init:
        init_weights(model, t.init, cfg)
    if not t.ann:
        set_quantized(model, t.qat)
    clips = {"train.ann_clip": t.ann_clip} if t.ann_clip is not None else {}
    clips.update({f"train.ann_clip_layers.{k}": v for k, v in t.ann_clip_layers.items()})
    for key, p in clips.items():
        if not (t.ann and t.init and 0 < p <= 100):
            raise ToolchainError(f"{key}={p}: a percentile in (0, 100] of a trained twin's activations; "
                                 f"it needs train.ann=true and train.init (the twin to tune under the clip)")
    layers = [n.name for n in model.nodes[:-1] if not n.is_pool] if t.ann_clip_layers else []
    unknown = sorted(set(t.ann_clip_layers) - set(layers))
    if unknown:
        raise ToolchainError(f"train.ann_clip_layers: {', '.join(unknown)} not among the twin's clipped layers "
                             f"({', '.join(layers)})")
    if t.ann_transfer is not None and not (t.ann and t.init):
        raise ToolchainError(f"train.ann_transfer={t.ann_transfer}: tunes a trained twin under its conversion's "
                             f"transfer; it needs train.ann=true and train.init (the twin that was converted)")
    if t.ann_transfer_noise < 0 or (t.ann_transfer_noise and t.ann_transfer is None):
        raise ToolchainError(f"train.ann_transfer_noise={t.ann_transfer_noise}: a factor >= 0 on the spike "
                             f"rates' scatter, for a twin tuned under train.ann_transfer")
    if t.logit_scale < 0:
        raise ToolchainError(f"train.logit_scale={t.logit_scale}: must be >= 0 (it multiplies the class scores)")
    if t.synops_budget is not None and (t.ann or t.synops_budget <= 0):
        raise ToolchainError(f"train.synops_budget={t.synops_budget}: "
                             + ("the ANN twin has no spikes to budget" if t.ann else "must be above 0"))
    counter = None if t.ann else SynOpsCounter(model, cfg.data.time_steps).to(device)
    if t.distill_layers and not t.teacher:
        raise ToolchainError(f"train.distill_layers={t.distill_layers}: needs train.teacher, the twin tuned under "
                             f"its conversion's curves whose activations the layers learn")
    teacher, teacher_units = load_teacher(t.teacher, cfg, facts) if t.teacher else (None, 1.0)
    teacher = teacher.to(device) if teacher is not None else None
    net = torch.nn.parallel.DistributedDataParallel(model) if d.enabled else model
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    return Session(cfg, run_dir, d, device, amp, model, net, optimizer, make_scheduler(cfg, optimizer),
                   torch.cuda.amp.GradScaler(enabled=amp), facts, counter, teacher=teacher, teacher_units=teacher_units)


def load_teacher(path: str, cfg: Config, facts: dict) -> tuple[torch.nn.Module, float]:
    """train.teacher's model, frozen, checked to score the same classes at the
    same input size; and its units, the factor on its scores its own loss saw
    (a twin tuned under a conversion's curves scores several times smaller
    than its loss did: its raw softmax would teach a flat answer)."""
    t = cfg.train
    if t.distill_weight < 0 or t.distill_temperature <= 0:
        raise ToolchainError(f"train.distill_weight={t.distill_weight} must be >= 0 and "
                             f"train.distill_temperature={t.distill_temperature} above 0")
    teacher, theirs_cfg = models.load_checkpoint(path)
    ours = (facts["in_channels"], facts["num_classes"], cfg.data.height, cfg.data.width)
    c, h, w = teacher.input_shape
    theirs = (c, teacher.nodes[-1].synapses[0].out_channels, h, w)
    if theirs != ours:
        raise ToolchainError(f"train.teacher: {path} takes {theirs[0]} channels at {h}x{w} and scores "
                             f"{theirs[1]} classes; this run has {ours[0]} channels at {ours[2]}x{ours[3]} "
                             f"and {ours[1]} classes")
    if t.distill_layers:
        hidden = [n.name for n in teacher.nodes[:-1]]
        if t.distill_layers < 0 or t.ann or not isinstance(teacher, models.AnnGraph) or \
                sorted(teacher.transfer_levels()) != sorted(hidden):
            raise ToolchainError(f"train.distill_layers={t.distill_layers}: a weight >= 0 for a spiking run whose "
                                 f"teacher is a twin tuned under its conversion's curves (train.ann_transfer): "
                                 f"its levels say what a spike rate stands for; {path} is not one")
    return teacher.eval().requires_grad_(False), float(theirs_cfg.train.logit_scale)


def init_weights(model: torch.nn.Module, path: str, cfg: Config) -> None:
    """Load the model weights of the training checkpoint at `path` (train.init),
    read and checked by `models.load_checkpoint`."""
    stored, stored_cfg = models.load_checkpoint(path)

    def what(c: Config) -> str:
        return c.model.name + (" (ANN twin)" if c.train.ann else "")

    if what(stored_cfg) != what(cfg):
        raise ToolchainError(f"train.init: {path} holds {what(stored_cfg)}; this run trains {what(cfg)}")
    # weights are scaled to their neurons' threshold and leak (a converted
    # twin's especially): starting them under other neurons starts elsewhere
    differ = {f: getattr(stored_cfg.model, f) for f in NEURON_FIELDS
              if getattr(stored_cfg.model, f) != getattr(cfg.model, f)}
    if differ and not cfg.train.ann:
        def flags(f, v):  # a mapping one flag a key; an empty one cannot be set, only left out
            if isinstance(v, dict):
                return " ".join(f"--set model.{f}.{k}={x!r}" for k, x in v.items()) or f"(no model.{f})"
            return f"--set model.{f}={v!r}"
        sets = " ".join(flags(f, v) for f, v in differ.items())
        raise ToolchainError(f"train.init: {path} was trained with other neurons than this run's "
                             f"({', '.join(f'{f} {getattr(cfg.model, f)!r}' for f in differ)}); "
                             f"start from them with {sets}")
    try:
        model.load_state_dict(stored.state_dict())
    except RuntimeError as e:
        raise ToolchainError(f"train.init: {path}: weights do not fit: {e}".splitlines()[0]) from e


CLIP_FRAMES = 64  # training frames whose activations set train.ann_clip's levels


def clip_twin(model, train_ds, percentile: float | None, layers: dict[str, float] | None = None,
              log: Callable[[str], None] = print) -> None:
    """train.ann_clip: clip each hidden layer of the twin at `percentile` of its
    activations on the first training frames, or at `layers`' percentile for
    the layers it names (`toolchain convert` then finds the levels as the
    activations' maximum)."""
    train_ds.set_epoch(0)
    n = min(CLIP_FRAMES, len(train_ds))
    device = next(model.parameters()).device
    batches = (draw(train_ds, range(a, min(n, a + 16)))[0].to(device) for a in range(0, n, 16))
    wanted = {node.name: (layers or {}).get(node.name, percentile) for node in model.nodes[:-1] if not node.is_pool}
    wanted = {name: p for name, p in wanted.items() if p is not None}
    levels = {name: float(v) for name, v in activation_stats(model, batches, "layer", wanted).items()}
    model.clip_at(levels)
    shown = ", ".join(f"{name} {levels[name]:.3g} (p{p:g})" for name, p in wanted.items())
    log(f"clipped the twin at percentiles of its activations on {n} training frames: {shown}")


def transfer_twin(model, converted: str, noise: float = 0.0, log: Callable[[str], None] = print) -> None:
    """train.ann_transfer: give the twin the levels and spike-rate curves its
    conversion `converted` (a `toolchain convert` checkpoint) measured, and
    `noise` x their scatter (train.ann_transfer_noise)."""
    info = checkpoint.load(converted).get("conversion")
    if not info:
        raise ToolchainError(f"train.ann_transfer: {converted} is not a `toolchain convert` checkpoint")
    if "transfer" not in info:
        raise ToolchainError(f"train.ann_transfer: {converted} holds no transfer curves "
                             f"(a --norm channel conversion, or one older than them): convert the twin again")
    if noise and "transfer_spread" not in info:
        raise ToolchainError(f"train.ann_transfer_noise: {converted} holds no spike-rate scatter "
                             f"(a conversion older than it): convert the twin again")
    levels = layer_levels(info["lambdas"])
    try:
        model.set_transfer(levels, info["transfer"], info.get("transfer_spread"), noise)
    except ToolchainError as e:
        raise ToolchainError(f"train.ann_transfer: {converted}: {e}") from e
    shown = ", ".join(f"{name} {levels[name]:.3g}" for name in model.transfer_levels())
    log(f"tuning the twin under the spike rates of the conversion {converted}, levels {shown}"
        + (f", noise {noise:g} x their scatter" if noise else ""))


def restore(s: Session, state: dict) -> tuple[int, int]:
    """Load a checkpoint's states into the session; returns (epoch, step) to continue from."""
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    load_scheduler_state(s.scheduler, state["lr_scheduler"])
    if "scaler" in state:
        s.scaler.load_state_dict(state["scaler"])
    checkpoint.set_rng_state(state["rng"])
    s.history, s.extra = state["history"], state["extra"]
    return state["epoch"], state["step"]


def baselines(s: Session, train_ds, test_ds, given_datasets: bool) -> dict:
    """Epoch 0: the untrained model and the majority-class baseline; the
    training split's pixels per class and the loss's class weights."""
    cfg = s.cfg
    n = s.dataset_facts["num_classes"]
    if given_datasets:
        counts = class_counts((train_ds[i][1] for i in range(len(train_ds))), n)
        cls, base = majority_baseline(counts, (test_ds[i][1] for i in range(len(test_ds))))
    else:
        counts = class_counts(_labels(cfg, "train"), n)
        cls, base = majority_baseline(counts, _labels(cfg, "test"))
    weights = class_weights(cfg.train.class_weights, counts)
    t0 = time.time()
    ev = evaluate(s.model, test_ds, s.device, s.d, cfg.train.batch_size, s.amp, synops=s.synops,
                  logit_scale=cfg.train.logit_scale)
    s.history.append(dict(epoch=0, lr=None, train_loss=None, seconds=time.time() - t0, **ev))
    s.extra = dict(untrained=ev, majority_class=cls, majority=base, train_seconds=0.0, samples=0,
                   class_pixels=counts.tolist(), class_weights=weights)
    return dict(untrained=ev["miou"], majority_class=s.class_names[cls], majority=base["miou"])


def train_one_epoch(s: Session, train_ds, sampler, epoch: int, interrupt, *, resume_state=None,
                    callback: Callable[[int, int], None] | None = None,
                    log: Callable[[str], None] = print) -> tuple[float, float, float]:
    """One pass over the training split; returns (summed loss, samples) over
    all ranks and this rank's seconds of training in it.

    `resume_state` continues an epoch interrupted mid-way from its recorded
    step, augmentation generator, partial loss and seconds. On an interrupt
    the position is checkpointed and KeyboardInterrupt raised."""
    t0 = time.time()
    t = s.cfg.train
    per_rank = max(1, t.batch_size // s.d.world)
    s.model.train()
    sampler.set_epoch(epoch)
    train_ds.set_epoch(epoch)
    torch.manual_seed(t.seed * 1_000_003 + epoch)
    gen = torch.Generator().manual_seed(t.seed * 7919 + epoch)
    order = list(sampler)
    n_steps = math.ceil(len(order) / per_rank)
    loss_sum, seen, step0, before = 0.0, 0, 0, 0.0
    synops_sum = 0.0  # of this run of the epoch: the bar's running figure
    if resume_state is not None and resume_state["step"] > 0:
        gen.set_state(resume_state["aug_rng"])
        loss_sum, seen, *rest = resume_state["partial"]
        before = rest[0] if rest else 0.0  # checkpoints before seconds were recorded hold two values
        step0 = resume_state["step"]
    loader = DataLoader(train_ds, batch_size=per_rank, sampler=order[step0 * per_rank:], num_workers=t.workers)
    # a live bar on a terminal; in a log file one line per epoch (drawn at the
    # start and completed at the end, never per batch)
    tty = sys.stderr.isatty()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t.epochs}", initial=step0, total=n_steps, unit="batch",
               disable=not s.d.main, leave=not tty, mininterval=0.1 if tty else float("inf"))
    weights = s.extra.get("class_weights")
    weight = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=s.device)
    for step, (x, y) in enumerate(bar, start=step0):
        if t.augment:
            x, y = augment(x, y, gen)
        x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
        with torch.autocast(s.device.type, enabled=s.amp):
            scores, spikes = models.predict(s.net, x, y.shape[-2:])
            scores = scores.float() * t.logit_scale
            loss = loss_fn(scores, y, weight, t.dice_weight, t.boundary_weight)
            if s.teacher is not None and (t.distill_weight or t.distill_layers):
                with torch.no_grad():
                    taught, acts = models.predict(s.teacher, x, y.shape[-2:])
                if t.distill_weight:
                    loss = loss + t.distill_weight * distill_loss(scores, taught.float() * s.teacher_units,
                                                                  t.distill_temperature)
                if t.distill_layers:
                    loss = loss + t.distill_layers * layer_distill_loss(
                        spikes, acts, s.teacher.transfer_levels(), s.cfg.data.time_steps)
            if s.synops is not None:
                with torch.set_grad_enabled(t.synops_budget is not None):  # else counted for the log only
                    synops, _ = s.synops(x, spikes)
                synops_sum += float(synops) * len(x)
                if t.synops_budget is not None:
                    loss = loss + t.synops_weight * budget_penalty(synops.float(), t.synops_budget)
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        loss_sum += float(loss) * len(x)
        seen += len(x)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", **({"synops/frame": f"{synops_sum / seen:.3g}"}
                                                         if s.synops is not None else {}), refresh=tty)
        if callback is not None:
            callback(epoch, step)
        if _all_flag(s.d, interrupt.flag) and step + 1 < n_steps:
            s.save(epoch, step + 1, gen.get_state(), (loss_sum, seen, before + time.time() - t0))
            log(f"interrupted: checkpoint saved to {s.checkpoint_path}; continue with --resume")
            raise KeyboardInterrupt
    bar.close()
    loss_sum, samples = distributed.all_sum(s.d, [loss_sum, float(seen)])
    return loss_sum, samples, before + time.time() - t0


def log_epoch(s: Session, log: Callable[[str], None], writer, samples_per_s: float) -> None:
    """The epoch's line, TensorBoard scalars, log.csv, curves and metrics.json (rank 0 only)."""
    if not s.d.main:
        return
    h = s.history[-1]
    synops = f"  {h['synops_per_frame']:.4g} SynOps/frame" if "synops_per_frame" in h else ""
    log(f"epoch {h['epoch']}/{s.cfg.train.epochs}  loss {h['train_loss']:.4f}  test mIoU {h['miou']:.4f}  "
        f"pixel acc {h['pixel_acc']:.4f}{synops}  {samples_per_s:.1f} samples/s")
    _log_epoch(writer, h, s.class_names)
    _write_csv(s.history, s.class_names, s.run_dir / "log.csv")
    plots.curves(s.history, s.run_dir / "curves.png")
    _write_metrics(s.run_dir, s.cfg, s.history, s.extra, s.class_names, final=False)


def check_readout_hears(s: Session, ev: dict) -> None:
    """A spiking readout that stays all zero after an epoch trains at loss ln K
    for ever (no gradient reaches the weights through silent layers): stop and
    say what to change instead of training silently."""
    if s.cfg.train.ann or ev["readout_max"] > 0:
        return
    t, depth = s.cfg.data.time_steps, s.model.pipeline_depth
    raise ToolchainError(
        f"the readout stayed all zero after epoch {s.history[-1]['epoch']} (T={t}, pipeline depth D={depth}, "
        f"{t + depth} steps per frame): no spike reaches it, so nothing trains. Raise the input rate or T "
        f"(data.time_steps), lower model.threshold, or start from larger weights; the checkpoint is kept "
        f"in {s.run_dir}")


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False, epochs: int | None = None,
          datasets=None, callback: Callable[[int, int], None] | None = None,
          log: Callable[[str], None] = print) -> dict | None:
    """Train `cfg.model.name` on `cfg.data`; write checkpoints, logs, plots
    and `metrics.json` to `run_dir`; return the final metrics (None on
    ranks other than 0).

    With `resume`, the configuration stored in the run's checkpoint wins
    over `cfg` (only `epochs` may extend it; the schedule stays the one the
    run started with). `datasets` (train, test) replaces the configured data;
    `callback(epoch, step)` runs after every optimiser step."""
    run_dir = Path(run_dir)
    if resume and not (run_dir / CHECKPOINT).is_file():
        raise ToolchainError(f"{run_dir / CHECKPOINT}: no checkpoint to resume from")
    state = checkpoint.load(run_dir / CHECKPOINT) if resume else None
    if state is not None:
        cfg = config_from_dict(state["config"])
    if epochs is not None:
        cfg.train.epochs = int(epochs)
    t = cfg.train
    device, d, amp = setup_device(t)
    train_ds, test_ds = datasets if datasets is not None else build_datasets(cfg, d)
    if len(train_ds) == 0 or len(test_ds) == 0:
        raise ToolchainError(f"data: empty split (train {len(train_ds)}, test {len(test_ds)} samples)")
    s = setup(cfg, run_dir, train_ds, device, d, amp)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir)
    start_epoch = 0
    if state is not None:
        start_epoch, start_step = restore(s, state)
        log(f"resumed from {s.checkpoint_path}: epoch {start_epoch + 1}, step {start_step}")
    writer = None
    if d.main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tensorboard"))
    if state is None and (t.ann_clip is not None or t.ann_clip_layers):
        clip_twin(s.model, train_ds, t.ann_clip, t.ann_clip_layers, log)
    if state is None and t.ann_transfer is not None:
        transfer_twin(s.model, t.ann_transfer, t.ann_transfer_noise, log)
    if not s.history:
        b = baselines(s, train_ds, test_ds, datasets is not None)
        start = f"starting weights ({t.init})" if t.init else "untrained"
        log(f"{start}: mIoU {b['untrained']:.4f}   majority class ({b['majority_class']}): "
            f"mIoU {b['majority']:.4f}")

    sampler = DistributedSampler(train_ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=t.seed,
                                 drop_last=False)
    with _Interrupt() as interrupt:
        for epoch in range(start_epoch, t.epochs):
            loss_sum, samples, train_seconds = train_one_epoch(
                s, train_ds, sampler, epoch, interrupt, callback=callback, log=log,
                resume_state=state if epoch == start_epoch else None)
            lr = s.optimizer.param_groups[0]["lr"]
            s.scheduler.step()
            t0 = time.time()
            ev = evaluate(s.model, test_ds, s.device, d, t.batch_size, s.amp, synops=s.synops,
                          logit_scale=t.logit_scale)
            s.history.append(dict(epoch=epoch + 1, lr=lr, train_loss=loss_sum / max(samples, 1.0),
                                  seconds=train_seconds + time.time() - t0, **ev))
            s.extra["train_seconds"] += train_seconds
            s.extra["samples"] += samples
            s.save(epoch + 1, 0)
            log_epoch(s, log, writer, samples / train_seconds)
            check_readout_hears(s, ev)
            if _all_flag(d, interrupt.flag):
                log(f"interrupted: checkpoint saved to {s.checkpoint_path}; continue with --resume")
                raise KeyboardInterrupt

    result = None
    if d.main:
        writer.close()
        if len(s.history) == 1:  # nothing trained in this run (epochs already done)
            plots.curves(s.history, run_dir / "curves.png")
        _gallery(s.model, test_ds, s.device, s.class_names, run_dir / "gallery.png", s.amp)
        result = _write_metrics(run_dir, cfg, s.history, s.extra, s.class_names, final=True)
    distributed.barrier(d)
    # The DDP wrapper must go before its process group: freeing it afterwards
    # can block forever in gloo's destructor (collect: it may sit in a cycle).
    s.net = None
    del s
    gc.collect()
    distributed.teardown(d)
    return result


def _log_epoch(writer, h: dict, class_names: list[str]) -> None:
    e = h["epoch"]
    writer.add_scalar("loss/train", h["train_loss"], e)
    writer.add_scalar("loss/test", h["loss"], e)
    writer.add_scalar("miou", h["miou"], e)
    writer.add_scalar("pixel_acc", h["pixel_acc"], e)
    writer.add_scalar("lr", h["lr"], e)
    for c, v in zip(class_names, h["iou_per_class"], strict=True):
        writer.add_scalar(f"iou/{c}", v, e)
    for k, v in h["firing"].items():
        writer.add_scalar(f"firing/{k}", v, e)
    writer.flush()


def _gallery(model, dataset, device, class_names, path, amp):
    model.eval()
    dataset.set_epoch(0)
    x, y = draw(dataset, range(min(GALLERY_SIZE, len(dataset))))
    with torch.no_grad(), torch.autocast(device.type, enabled=amp):
        scores, _ = models.predict(model, x.to(device), y.shape[-2:])
    plots.gallery(x, y, scores.argmax(1).cpu(), class_names, path)


def _write_metrics(run_dir: Path, cfg: Config, history, extra, class_names, final: bool) -> dict:
    last = history[-1]
    result = dict(
        model=cfg.model.name, init=cfg.train.init, teacher=cfg.train.teacher, ann=bool(cfg.train.ann),
        ann_clip=cfg.train.ann_clip, ann_clip_layers=dict(cfg.train.ann_clip_layers),
        ann_transfer=cfg.train.ann_transfer, ann_transfer_noise=cfg.train.ann_transfer_noise,
        quantized=bool(cfg.train.qat and not cfg.train.ann),
        epochs=last["epoch"], final=final,
        miou=last["miou"], pixel_acc=last["pixel_acc"], loss=last["loss"],
        iou_per_class=dict(zip(class_names, last["iou_per_class"], strict=True)), firing=last["firing"],
        synops_per_frame=last.get("synops_per_frame"), synops_budget=cfg.train.synops_budget,
        untrained_miou=extra["untrained"]["miou"], majority_miou=extra["majority"]["miou"],
        majority_class=class_names[extra["majority_class"]], train_seconds=extra["train_seconds"],
        train_samples_per_s=extra["samples"] / extra["train_seconds"] if extra["train_seconds"] else None,
        class_names=class_names,
        history=[{k: v for k, v in h.items()} for h in history],
    )
    write_text(run_dir / "metrics.json", json.dumps(result, indent=1, allow_nan=True))
    return result
