"""ANN-to-SNN conversion by threshold balancing (the paper's baseline).

A spiking neuron with threshold theta fed I per step fires at about I/theta
spikes per step, so it stands for its ANN twin's ReLU activation a if
a / lambda = rate, where lambda is the activation that makes it fire every
step. The paper sets lambda to 0.7 x the maximum activation seen on training
data (layer- or channel-wise); `percentile` replaces the maximum by a robust
percentile.

The balance goes into the weights (Rueckauer et al.'s weight normalisation):
W'[o, i] = theta_node * W[o, i] * lambda_src[i] / lambda_node[o]. Scaling a
layer's input weights and threshold together leaves its spikes as they are,
so each layer gets its own threshold (`model.layer_thresholds`), as large as
its 8-bit weights allow: every layer's weights span Loihi's range, where one
threshold for the net (`thresholds="net"`, the layer with the largest
weights deciding) left a deep layer a tenth of it, about ten levels. A pool's
k^2 synapses weigh 1 and its threshold is one 1/64 step under k^2 (one
threshold for the net: its weight just above theta / k^2, `pool_weight`):
a pool averages rates. The readout is scaled by lambda_src only (the class scores
keep the ANN's units, up to one positive factor that fits the weight range).
The converted neurons integrate without leak (voltage_decay 0): the IF neuron
conversion assumes. A twin tuned under `train.ann_clip` converts on its
activations' maximum (percentile 100), which is its clip levels.

Loihi's neuron resets to zero and fires only above its threshold, so a
converted neuron's rate bends below the ReLU's line (measured: 0.6 where the
ReLU says 1). `convert_checkpoint` measures each layer's curve, and a twin
tuned under it (`train.ann_transfer`) converts at the levels it was tuned for.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from lava.lib.dl import slayer

import models
from models.ann import TRANSFER_KNOTS, TRANSFER_STEP, activation_stats, layer_levels
from models.graph import INPUT

from ..core.errors import ToolchainError
from ..core.loihi import STATE_SCALE, U_MAX, VTH_MAX, W_SCALE, WEIGHT_MAX
from ..core.metrics import SegmentationMetric

W_MAX = WEIGHT_MAX / W_SCALE  # slayer's largest 8-bit weight
W_STEP = 2 / W_SCALE
FIT = 0.98  # head-room under W_MAX against rounding
# A step's summed input must stay inside Loihi's 24-bit current: in weight
# units, U_MAX / STATE_SCALE (2048), with FIT's head-room for rounding.
INPUT_MAX = FIT * U_MAX / STATE_SCALE
POOL_SYNAPSE = 1.0  # a pool's weight when it has a threshold of its own
THRESHOLDS = ("layer", "net")
CHANNEL_FLOOR = 1 / 8  # smallest channel lambda, as a fraction of its layer's largest


def _set_weight(syn, w: torch.Tensor) -> None:
    """Store `w` in a slayer synapse, through its weight norm when it has one."""
    w = w.to(syn.weight.dtype if not hasattr(syn, "weight_v") else syn.weight_v.dtype).reshape(
        (syn.weight_v if hasattr(syn, "weight_v") else syn.weight).shape)
    if hasattr(syn, "weight_g") and hasattr(syn, "weight_v"):
        syn.weight_v.data.copy_(w)
        syn.weight_g.data.copy_(torch.norm_except_dim(w, 2, 0))
        syn.weight = torch._weight_norm(syn.weight_v, syn.weight_g, 0).detach()
    else:
        syn.weight.data.copy_(w)


def _scaled(ann_syn, snn_syn, lam_src: torch.Tensor, lam_dst: torch.Tensor) -> torch.Tensor:
    """W * lambda_src[in] / lambda_dst[out] in the slayer synapse's layout (theta not applied)."""
    w = ann_syn.weight.detach().double()
    if isinstance(snn_syn, slayer.synapse.ConvTranspose):  # (in, out, kh, kw)
        w = w * lam_src.view(-1, 1, 1, 1) / lam_dst.view(1, -1, 1, 1)
    else:  # (out, in, kh, kw)
        w = w * lam_src.view(1, -1, 1, 1) / lam_dst.view(-1, 1, 1, 1)
    return w[..., None]


def pool_threshold(k2: int) -> float:
    """A pool's own threshold: one 1/64 step under its k2 synapses of
    POOL_SYNAPSE, so that all k2 inputs spiking fire it every step and k2 - 1
    do not (Loihi fires above the threshold)."""
    return k2 * POOL_SYNAPSE - 1 / W_SCALE


def layer_threshold(synapses: list[tuple[torch.nn.Module, torch.Tensor]]) -> float:
    """The largest threshold on Loihi's 1/64 grid at which a node's balanced
    weights (for theta 1), scaled by it, fit the 8-bit range and no step's
    input overflows the 24-bit current (bounded per output channel by all
    its synapses of one sign, every source spiking)."""
    def per_output(syn, w: torch.Tensor) -> torch.Tensor:  # summed over all but the output channel
        return w.transpose(0, 1 if isinstance(syn, slayer.synapse.ConvTranspose) else 0).flatten(1).sum(1)

    w_max = max(float(w.abs().max()) for _, w in synapses)
    fan = max(float(sum(per_output(syn, (sign * w).clamp(min=0)) for syn, w in synapses).max())
              for sign in (1, -1))
    top = VTH_MAX / W_SCALE
    limit = min(FIT * W_MAX / w_max if w_max > 0 else top, INPUT_MAX / fan if fan > 0 else top)
    return min(max(math.floor(limit * W_SCALE), 1), VTH_MAX) / W_SCALE


def pool_weight(threshold: float, k2: int) -> float:
    """The weight of each of a pool's k2 synapses: the smallest multiple of
    Loihi's 2/64 step with k2 x weight > threshold. A Loihi neuron fires when
    its voltage exceeds the threshold, so at k2 x weight == threshold (or
    below, rounded down) all k2 inputs spiking in a step do not fire the pool
    and it passes on half their rate."""
    return (math.floor(threshold / k2 / W_STEP) + 1) * W_STEP


def convert(ann, snn, stats: dict[str, torch.Tensor], scale: float = 0.7, thresholds: str = "layer") -> dict:
    """Write the balanced weights of `ann` (an AnnGraph) into `snn` (a fresh
    SpikingGraph of the same topology); the network it makes needs neurons
    built with the thresholds returned in `info["layer_thresholds"]` (one a
    spiking node; all equal to `info["threshold"]`, the net's, with
    `thresholds="net"`)."""
    if not 0 < scale <= 10:
        raise ToolchainError(f"--scale: {scale} must be in (0, 10] (or auto)")
    if thresholds not in THRESHOLDS:
        raise ToolchainError(f"--thresholds: {thresholds!r} is not one of {', '.join(THRESHOLDS)}")
    in_c = snn.input_shape[0]
    lam = {INPUT: torch.ones(in_c, dtype=torch.float64)}
    plan = []  # (snn synapse, unscaled weight or None for a pool, node)
    for node, twin in zip(snn.nodes, ann.nodes, strict=True):
        pools = [isinstance(s, slayer.synapse.Pool) for s in node.synapses]
        if any(pools):
            if len(node.synapses) != 1:
                raise ToolchainError(f"conversion: node {node.name} mixes pooling with other synapses")
            # a pool at gain 1 passes the source's rates through: same lambda
            lam[node.name] = lam[node.sources[0]].clone()
            plan.append((node.synapses[0], None, node))
            continue
        if node.is_readout:
            dst = torch.ones(node.synapses[0].out_channels, dtype=torch.float64)
        else:
            s = stats[node.name].double() * scale
            c = node.synapses[0].out_channels
            s = s.expand(c).clone() if s.numel() == 1 else s
            # a channel that stayed silent on the training data (or whose
            # percentile is 0) gets the layer's largest lambda, and no channel
            # goes below CHANNEL_FLOOR of it: a tiny lambda would blow its
            # input weights up and squeeze the layer's other weights into
            # a few 8-bit levels
            top = max(float(s.max()), 1e-6)
            dst = torch.where(s > 1e-3 * top, s, torch.full_like(s, top)).clamp(min=CHANNEL_FLOOR * top)
        lam[node.name] = dst
        for syn, asyn, src in zip(node.synapses, twin.synapses, node.sources, strict=True):
            plan.append((syn, _scaled(asyn, syn, lam[src], dst), node))
    hidden = [abs(float(w.abs().max())) for syn, w, node in plan if w is not None and not node.is_readout]
    w_max = max(hidden) if hidden else 1.0
    threshold = FIT * W_MAX / w_max if w_max > 0 else 1.0
    # the pool weight, about theta/4, must fit too; keep theta on Loihi's 1/64 grid
    threshold = min(threshold, FIT * W_MAX * 4)
    threshold = max(math.floor(threshold * W_SCALE), 1) / W_SCALE
    layer_thresholds = {}
    for node in snn.nodes[:-1]:
        if thresholds == "net":
            layer_thresholds[node.name] = threshold
        elif isinstance(node.synapses[0], slayer.synapse.Pool):
            layer_thresholds[node.name] = pool_threshold(int(np.prod(node.synapses[0].weight.shape[2:4])))
        else:
            layer_thresholds[node.name] = layer_threshold([(syn, w) for syn, w, n in plan if n is node])
    readout = [w for syn, w, node in plan if w is not None and node.is_readout]
    r_max = max(float(w.abs().max()) for w in readout) if readout else 1.0
    r_gain = FIT * W_MAX / r_max if r_max > 0 else 1.0
    with torch.no_grad():
        for syn, w, node in plan:
            if w is None:
                syn.weight.data.fill_(POOL_SYNAPSE if thresholds == "layer" else
                                      pool_weight(threshold, int(np.prod(syn.weight.shape[2:4]))))
            else:
                _set_weight(syn, w * (r_gain if node.is_readout else layer_thresholds[node.name]))
    return dict(threshold=threshold, layer_thresholds=layer_thresholds, thresholds=thresholds,
                readout_gain=r_gain, scale=scale,
                lambdas={k: [float(v) for v in t] for k, t in lam.items() if k != INPUT})


def training_batches(cfg, frames: int, batch_size: int = 16):
    """Encoded training frames, as the ANN saw them (without augmentation)."""
    from toolchain.data import build_dataset
    from toolchain.data.dataset import draw

    ds = build_dataset(cfg.data, "train")
    ds.set_epoch(0)
    n = min(frames, len(ds))
    for start in range(0, n, batch_size):
        yield draw(ds, range(start, min(n, start + batch_size)))[0]


# `--scale auto` tries these. With pool weights at theta/4 (since fixed) 0.05
# off the best could halve a converted net's mIoU; now neighbours differ by a
# few points (the 80-epoch twin at T=16: 56.1 / 57.5 / 59.0% at 0.25 / 0.3 /
# 0.35 on 32 training frames). A twin clipped at p99 converts best at 0.35,
# one clipped at p99.9 (higher levels) at 0.2 (0.15 and 0.12 score lower).
# More steps want larger scales: 0.4 / 0.5 / 0.7 at T=24 / 32 / 48 for the
# twin tuned 40 epochs under the clip (0.85 at T=48 scores higher on training
# frames, lower on test)
AUTO_SCALES = (0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.7)
# memory for one batch of the scale search: 16 frames of DeepLab-tiny at
# 200x346 and T=48 need about 20 GiB
EVAL_BUDGET = 4 * 2 ** 30


def _balanced(ann, cfg, ds: dict, stats, scale: float, quantized: bool = False, thresholds: str = "layer"):
    """The spiking net of `cfg`'s topology converted from `ann` at `scale`, its
    neurons built with the balanced thresholds; (net, its config, convert's info)."""
    snn_cfg = copy.deepcopy(cfg)
    snn_cfg.train.ann = False
    snn_cfg.train.qat = False
    # how the twin was tuned does not describe the spiking net
    snn_cfg.train.ann_clip, snn_cfg.train.ann_clip_layers, snn_cfg.train.ann_transfer = None, {}, None
    snn_cfg.train.ann_transfer_noise = 0.0
    snn_cfg.model.voltage_decay = 0.0
    snn = models.from_config(snn_cfg, ds["in_channels"], ds["num_classes"])
    info = convert(ann, snn, stats, scale, thresholds)
    snn_cfg.model.threshold, snn_cfg.model.layer_thresholds = info["threshold"], dict(info["layer_thresholds"])
    # the threshold is fixed when a neuron is built: rebuild with the balanced ones
    balanced = models.from_config(snn_cfg, ds["in_channels"], ds["num_classes"], quantized=quantized)
    balanced.load_state_dict(snn.state_dict())
    return balanced, snn_cfg, info


@torch.no_grad()
def logit_scale(ann, snn, batches) -> float:
    """The factor c that brings the converted net's class scores closest to
    its twin's (least squares over `batches`; 1 where they do not agree in
    sign). The readout counts spikes in its own units, so its scores come out
    several times smaller than the twin's; in a softmax that flat the
    training loss sharpens every score at once and the rare classes lose
    first. A spiking fine-tune takes c as `train.logit_scale`."""
    num = den = 0.0
    for x in batches:
        s, _ = snn(x)
        z, _ = ann(x)
        num += float((s.double() * z.double()).sum())
        den += float((s.double() ** 2).sum())
    return num / den if num > 0 and den > 0 else 1.0


@torch.no_grad()
def layer_losses(ann, snn, lambdas: Mapping[str, Sequence[float]], dataset, *, batch_size: int = 4,
                 device: torch.device | None = None, progress: bool = False) -> dict[str, dict]:
    """Where a conversion loses its twin's accuracy, layer by layer: the
    twin's metrics with one hidden layer's activations replaced by the spiking
    net's spike rates x that layer's `lambdas` (convert's: the activation a
    neuron firing every step stands for), so that every layer up to it spikes
    and every layer after it is the twin. One entry per hidden layer, in
    order, between the twin's own ("twin") and the spiking net's ("spiking");
    the drop from one entry to the next is what that layer's spikes cost.
    The last hidden layer's entry is the spiking net's answer (its readout is
    linear in those rates; 8-bit readout weights move it a little)."""
    from deploy.evaluation import evaluate
    from toolchain.data.dataset import IGNORE

    hidden = [n.name for n in snn.nodes[:-1]]
    if [n.name for n in ann.nodes] != [n.name for n in snn.nodes]:
        raise ToolchainError(f"the twin's layers ({', '.join(n.name for n in ann.nodes)}) are not the spiking "
                             f"net's ({', '.join(n.name for n in snn.nodes)})")
    missing = [name for name in hidden if name not in lambdas]
    if missing:
        raise ToolchainError(f"the conversion holds no lambdas for {', '.join(missing)}")
    device = device or torch.device("cpu")
    lam = {name: torch.as_tensor(lambdas[name], dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
           for name in hidden}
    rows = ["twin", *hidden]
    metrics = {row: SegmentationMetric(dataset.num_classes, IGNORE) for row in rows}
    ann, snn = ann.to(device).eval(), snn.to(device).eval()

    def spiking(x, y):  # the spiking net's class maps; the spliced twins' go into `metrics` on the way
        x, size = x.to(device), (y.shape[-2], y.shape[-1])
        readout, spikes = snn(x)
        for row in rows:
            # the readout divides by the input's steps: so do the rates
            replace = {row: spikes[row].sum(-1) / x.shape[-1] * lam[row]} if row in lam else {}
            metrics[row].update(models.upsample(ann(x, replace)[0], size).argmax(1), y)
        return models.upsample(readout, size).argmax(1)

    metrics["spiking"] = evaluate(spiking, dataset, range(len(dataset)), dataset.num_classes, batch_size=batch_size,
                                  progress=progress, desc="layer by layer", leave=False)
    return {row: m.compute() for row, m in metrics.items()}


MIN_SAMPLES = 200  # neurons a knot's mean rate needs; with fewer, the mean over layers of its kind


class TransferRecorder:
    """Each hidden node's spike rate against its input per step over the
    threshold (r, in the twin's units: a pool's input is the mean of its
    sources' rates), binned on the twin's transfer knots: the mean rate at
    each (`curves`) and its standard deviation over neurons and frames
    (`spreads`)."""

    def __init__(self, snn, time_steps: int):
        self.time_steps = time_steps
        self.pools = {n.name for n in snn.nodes[:-1] if isinstance(n.synapses[0], slayer.synapse.Pool)}
        self.sums: dict[str, torch.Tensor] = {}
        self.squares: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def __call__(self, node, args, spikes) -> None:
        z = node.current(args[0])
        threshold, gain = float(node.neuron.threshold), 1.0
        if node.name in self.pools:  # k^2 synapses of one weight each: their sum over the threshold
            syn = node.synapses[0]
            gain = float(syn.weight.flatten()[0]) * syn.weight[0, 0].numel() / threshold
        r = (z.sum(-1) / (self.time_steps * threshold * gain)).flatten()
        rate = (spikes.sum(-1) / self.time_steps).flatten()
        k = torch.round(r / TRANSFER_STEP)
        keep = (k >= 0) & (k < TRANSFER_KNOTS)
        k, rate = k[keep].long(), rate[keep].double()
        self.sums[node.name] = self.sums.get(node.name, 0) + torch.bincount(k, rate, TRANSFER_KNOTS)
        self.squares[node.name] = self.squares.get(node.name, 0) + torch.bincount(k, rate ** 2, TRANSFER_KNOTS)
        self.counts[node.name] = self.counts.get(node.name, 0) + torch.bincount(k, minlength=TRANSFER_KNOTS)

    def _knots(self, moments: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Each node's mean of `moments` at each knot: its own where it has
        MIN_SAMPLES samples there, else its kind's (pools or the rest); 0 at
        0, 1 at the last knot if none reached it (a neuron past every knot
        fires every step), linear between."""
        def kind(pool: bool):
            names = [n for n in moments if (n in self.pools) == pool]
            return (sum(moments[n] for n in names), sum(self.counts[n] for n in names)) if names else None
        kinds = {pool: kind(pool) for pool in (True, False)}
        out = {}
        for name in moments:
            mean = (moments[name] / self.counts[name].clamp(min=1)).numpy()
            known = self.counts[name].numpy() >= MIN_SAMPLES
            pooled = kinds[name in self.pools]
            if pooled is not None:
                fill = (pooled[1].numpy() >= MIN_SAMPLES) & ~known
                mean = np.where(fill, (pooled[0] / pooled[1].clamp(min=1)).numpy(), mean)
                known |= fill
            known[0] = True
            mean[0] = 0.0
            if not known[-1]:
                known[-1], mean[-1] = True, 1.0
            r = np.arange(TRANSFER_KNOTS)
            out[name] = np.interp(r, r[known], mean[known])
        return out

    def curves(self) -> dict[str, list[float]]:
        """The mean rate at each knot (`_knots`; 1 at the last if none
        reached it), rising, in [0, 1]."""
        return {name: np.clip(np.maximum.accumulate(rates), 0.0, 1.0).tolist()
                for name, rates in self._knots(self.sums).items()}

    def spreads(self) -> dict[str, list[float]]:
        """The rates' standard deviation at each knot about its mean (`_knots`;
        0 at 0, and at the last if none reached it: saturated neurons agree)."""
        means, squares = self._knots(self.sums), self._knots(self.squares)
        return {name: np.sqrt(np.clip(squares[name] - means[name] ** 2, 0.0, 0.25)).tolist() for name in means}


@contextmanager
def recording_transfer(snn, time_steps: int) -> Iterator[TransferRecorder]:
    """Record `snn`'s transfer curves (`TransferRecorder`) while it runs."""
    recorder = TransferRecorder(snn, time_steps)
    handles = [n.register_forward_hook(recorder) for n in snn.nodes[:-1]]
    try:
        yield recorder
    finally:
        for h in handles:
            h.remove()


def pick_scale(ann, cfg, ds: dict, stats, frames: int, scales=AUTO_SCALES, thresholds: str = "layer",
               log: Callable[[str], None] = print) -> tuple[float, dict[str, float]]:
    """The scale whose converted net, with Loihi 8-bit weights at the config's
    T, scores the best mIoU on the first `frames` training frames (not the
    test split, which would then no longer be held out)."""
    from toolchain.data import build_dataset

    from ..train.loop import evaluate

    train_ds = build_dataset(cfg.data, "train")
    train_ds.set_epoch(0)
    scores = {}
    batch = None  # the same topology at every scale: sized once
    for scale in scales:
        snn, _, _ = _balanced(ann, cfg, ds, stats, scale, quantized=True, thresholds=thresholds)
        batch = batch or snn.frames_within(cfg.data.time_steps, EVAL_BUDGET)
        scores[f"{scale:g}"] = float(evaluate(snn, train_ds, torch.device("cpu"), frames=frames,
                                              batch_size=batch)["miou"])
        log(f"  scale {scale:g}: mIoU {100 * scores[f'{scale:g}']:.2f}% on {min(frames, len(train_ds))} training frames")
    best = max(scales, key=lambda s: scores[f"{s:g}"])
    return best, scores


def neuron_overrides(info: dict) -> list[str]:
    """The config overrides (section.field=value) that build a training run's
    neurons as a conversion's (`neurons` in convert.json)."""
    layers = [f"model.layer_thresholds.{k}={float(v)!r}" for k, v in info["layer_thresholds"].items()]
    return [f"model.threshold={float(info['threshold'])!r}", *layers, "model.voltage_decay=0.0"]


def convert_checkpoint(ann_ckpt: str | Path, out: str | Path, *, norm: str = "layer", percentile: float = 100.0,
                       scale: float | str = 0.7, frames: int = 64, thresholds: str = "layer",
                       data_root: str | None = None,
                       config_path: str | Path | None = None, overrides: tuple[str, ...] | list[str] = (),
                       log: Callable[[str], None] = print) -> dict:
    """Convert a trained ANN-twin checkpoint into a spiking checkpoint at `out`;
    `scale="auto"` picks it from `AUTO_SCALES` by `pick_scale`; `thresholds`:
    one a layer or one for the net (`convert`). The spiking net's
    configuration: the twin's (or `config_path`'s) with `overrides`."""
    from ..core import checkpoint
    from ..core.config import to_dict

    ckpt = checkpoint.load(ann_ckpt)
    ann, cfg = models.load_checkpoint(ann_ckpt, data_root=data_root, config_path=config_path, overrides=overrides,
                                      entries=ckpt)
    if isinstance(ann, models.SpikingGraph):
        raise ToolchainError(f"{ann_ckpt}: holds a spiking model; convert takes a twin trained with --ann")
    ds = ckpt["dataset"]
    search = None
    tuned_levels = ann.transfer_levels()
    if tuned_levels:
        if norm != "layer":
            raise ToolchainError(f"{ann_ckpt}: tuned under a conversion's transfer, one level per layer; "
                                 f"convert it with --norm layer")
        # its activations are already rates x its levels: balance at them
        stats = {k: torch.tensor([v], dtype=torch.float64) for k, v in tuned_levels.items()}
        scale, percentile = 1.0, 100.0
    else:
        stats = activation_stats(ann, training_batches(cfg, frames), norm, percentile)
        if scale == "auto":
            scale, search = pick_scale(ann, cfg, ds, stats, frames, thresholds=thresholds, log=log)
    snn, snn_cfg, info = _balanced(ann, cfg, ds, stats, float(scale), thresholds=thresholds)
    batch = snn.frames_within(cfg.data.time_steps, EVAL_BUDGET)
    # the factors bring scores onto the twin's in the units its own loss saw
    # (a twin tuned under a conversion's curves scores smaller than its loss did)
    units = cfg.train.logit_scale
    with recording_transfer(snn, cfg.data.time_steps) as recorder:
        info["logit_scale"] = units * logit_scale(ann, snn.eval(), training_batches(cfg, frames, batch))
    snn_cfg.train.logit_scale = info["logit_scale"]
    if norm == "layer":
        # a twin tuned under this conversion's transfer, and the factor that keeps its loss in this twin's units
        info["transfer"], info["transfer_spread"] = recorder.curves(), recorder.spreads()
        twin = copy.deepcopy(ann)
        twin.set_transfer(layer_levels(info["lambdas"]), info["transfer"])
        info["transfer_logit_scale"] = units * logit_scale(ann, twin, training_batches(cfg, frames))
    info.update(norm=norm, percentile=percentile, frames=min(frames, 10 ** 9), source=str(ann_ckpt))
    if search is not None:
        info["scale_search"] = search
    checkpoint.save(out, model=snn.state_dict(), config=to_dict(snn_cfg), dataset=ds, conversion=info,
                    epoch=ckpt.get("epoch", 0), history=ckpt.get("history", []))
    balance = "at its tuned levels" if tuned_levels else \
        f"{'max' if percentile >= 100 else f'p{percentile:g}'} x {scale}"
    log(f"converted {ann_ckpt} -> {out}: {norm}-wise, {balance}, thresholds "
        + ", ".join(f"{k} {v:g}" for k, v in info["layer_thresholds"].items()))
    given = "".join(f" --set {o}" for o in overrides)
    info["neurons"] = neuron_overrides(info)
    log(f"fine-tune it with: toolchain train --set train.init={out} {' '.join(f'--set {o}' for o in info['neurons'])} "
        f"--set train.logit_scale={info['logit_scale']!r}{given} (and the twin's config)")
    if "transfer" in info:
        log(f"or tune the twin under its spike-rate transfer: toolchain train --ann --set train.init={ann_ckpt} "
            f"--set train.ann_transfer={out} --set train.logit_scale={info['transfer_logit_scale']!r}{given} "
            f"(and the twin's config), then convert that")
    return info
