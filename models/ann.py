"""The non-spiking twin of a `SpikingGraph`, for ANN-to-SNN conversion.

Same nodes, same sources, one plain torch layer per slayer synapse (so
`ann.nodes[i].synapses[j].weight[..., None]` is the spiking synapse's
weight), ReLU where the spiking net has neurons, average pooling where it
sum-pools with weight 1/k^2. No bias, no normalisation, as in the SNN.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from lava.lib.dl import slayer

from toolchain.core.errors import ToolchainError

from .graph import INPUT, SpikingGraph


class _AvgPool(torch.nn.Module):
    def __init__(self, kernel: int):
        super().__init__()
        self.kernel = kernel

    def forward(self, x):
        # slayer zero-pads odd sizes before pooling; do the same
        ph, pw = (-x.shape[-2]) % self.kernel, (-x.shape[-1]) % self.kernel
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return F.avg_pool2d(x, self.kernel)


def _twin(syn: torch.nn.Module) -> torch.nn.Module:
    k = tuple(syn.kernel_size[:2])
    s, p, d = tuple(syn.stride[:2]), tuple(syn.padding[:2]), tuple(syn.dilation[:2])
    if isinstance(syn, slayer.synapse.Pool):
        return _AvgPool(k[0])
    if isinstance(syn, slayer.synapse.ConvTranspose):
        return torch.nn.ConvTranspose2d(syn.in_channels, syn.out_channels, k, s, p, dilation=d, bias=False)
    if isinstance(syn, slayer.synapse.Conv):
        return torch.nn.Conv2d(syn.in_channels, syn.out_channels, k, s, p, dilation=d, bias=False)
    raise TypeError(f"no ANN twin for synapse {type(syn).__name__}")


# A converted neuron's spike rate against its input per step over the
# threshold r, sampled at r = 0, STEP, ..., (KNOTS - 1) x STEP; past the last
# knot a neuron fires (nearly) every step
TRANSFER_STEP = 0.05
TRANSFER_KNOTS = 61


def transfer(r: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """The rate at r >= 0, linear between the knots `rates`, flat past the last."""
    u = (r / TRANSFER_STEP).clamp(0, TRANSFER_KNOTS - 1)
    i = u.detach().floor().clamp(max=TRANSFER_KNOTS - 2).long()
    return rates[i] + (rates[i + 1] - rates[i]) * (u - i)


def layer_levels(lambdas: Mapping[str, list[float]]) -> dict[str, float]:
    """Each node's λ from a layer-wise conversion's lambdas (its channels share one)."""
    return {k: max(v) for k, v in lambdas.items()}


class AnnNode(torch.nn.Module):
    """`clip`: the largest activation the node passes on (inf: a plain ReLU). A
    spiking neuron fires at most once a step, so it carries its twin's
    activations only up to a level; a twin trained under that clip
    (`train.ann_clip`) no longer leans on the few activations above it.

    `level` (inf: none) and `rates`: the activation is level x rate(z /
    level), the spike rate a converted neuron balanced at that level reaches
    (`toolchain convert` measures it). Loihi's neuron resets to zero and
    fires only above its threshold, so it loses what it integrated past the
    threshold: its rate falls below the ReLU's line (0.6 where the ReLU says
    1), and a twin tuned under the measured curve (`train.ann_transfer`)
    learns weights that do not lean on the line.

    `spread` (zeros: none): while training, each activation gets Gaussian
    noise of that standard deviation (in rates, at z / level): the scatter of
    the spike counts about the curve, which a twin trained under it learns
    to bear."""

    def __init__(self, name, sources, synapses, relu: bool):
        super().__init__()
        self.name, self.sources, self.relu = name, list(sources), relu
        self.synapses = torch.nn.ModuleList(synapses)
        self.register_buffer("clip", torch.tensor(float("inf")))
        self.register_buffer("level", torch.tensor(float("inf")))
        self.register_buffer("rates", torch.zeros(TRANSFER_KNOTS))
        self.register_buffer("spread", torch.zeros(TRANSFER_KNOTS))
        self._register_load_state_dict_pre_hook(_unclipped_if_absent)

    @property
    def is_pool(self) -> bool:
        return isinstance(self.synapses[0], _AvgPool)

    def forward(self, inputs):
        z = sum(syn(x) for syn, x in zip(self.synapses, inputs, strict=True))
        if not self.relu:
            return z
        if not bool(torch.isinf(self.level)):
            r = F.relu(z) / self.level
            rate = transfer(r, self.rates)
            if self.training and bool(self.spread.any()):
                rate = (rate + transfer(r.detach(), self.spread) * torch.randn_like(rate)).clamp(0, 1)
            return self.level * rate
        return F.relu(z) if bool(torch.isinf(self.clip)) else torch.minimum(F.relu(z), self.clip)


def _unclipped_if_absent(state_dict, prefix, *args):
    # twins saved before clipping (or transfer curves) existed hold none: they had none
    state_dict.setdefault(prefix + "clip", torch.tensor(float("inf")))
    state_dict.setdefault(prefix + "level", torch.tensor(float("inf")))
    state_dict.setdefault(prefix + "rates", torch.zeros(TRANSFER_KNOTS))
    state_dict.setdefault(prefix + "spread", torch.zeros(TRANSFER_KNOTS))


class AnnGraph(torch.nn.Module):
    """Returns (scores (N, K, H', W'), activations per hidden node) like the
    spiking graph. Input (N, C, H, W), or (N, C, H, W, T) spikes, which are
    averaged over T into rates."""

    def __init__(self, graph: SpikingGraph):
        super().__init__()
        self.nodes = torch.nn.ModuleList(
            AnnNode(n.name, n.sources, [_twin(s) for s in n.synapses], relu=not n.is_readout) for n in graph.nodes)
        self.input_shape = graph.input_shape
        self.neuron_params = graph.neuron_params
        self.name = getattr(graph, "name", None)

    def clip_at(self, levels: dict[str, float]) -> None:
        """Clip each named node's activations at its level (pools are left
        alone: an average of clipped values stays under the clip)."""
        for node in self.nodes:
            if node.name in levels and not node.is_pool:
                node.clip.fill_(float(levels[node.name]))

    def set_transfer(self, levels: Mapping[str, float], rates: Mapping[str, list[float]],
                     spread: Mapping[str, list[float]] | None = None, noise: float = 0.0) -> None:
        """Give every hidden node the activation level x rate(z / level) of a
        conversion balanced at `levels` whose neurons fire at `rates` (the
        knots of `transfer`), and while training noise x `spread` (the
        knots of the spike rates' standard deviation) as Gaussian noise."""
        wanted = (levels, rates) + ((spread or {},) if noise else ())
        missing = [n.name for n in self.nodes[:-1] if any(n.name not in m for m in wanted)]
        if missing:
            raise ToolchainError(f"transfer: no level{', rates or spread' if noise else ' or rates'} for "
                                 f"{', '.join(missing)}")
        for node in self.nodes[:-1]:
            knots = rates[node.name], (spread[node.name] if noise and spread else [0.0] * TRANSFER_KNOTS)
            if any(len(k) != TRANSFER_KNOTS for k in knots) or not levels[node.name] > 0:
                raise ToolchainError(f"transfer: {node.name} needs a level > 0 and {TRANSFER_KNOTS} rates")
            node.level.fill_(float(levels[node.name]))
            node.rates.copy_(torch.as_tensor(knots[0], dtype=node.rates.dtype))
            node.spread.copy_(noise * torch.as_tensor(knots[1], dtype=node.spread.dtype))

    def transfer_levels(self) -> dict[str, float]:
        """The levels of a twin tuned under a conversion's transfer ({}: a ReLU twin)."""
        return {n.name: float(n.level) for n in self.nodes[:-1] if not bool(torch.isinf(n.level))}

    def forward(self, x, replace: Mapping[str, torch.Tensor] | None = None):
        """`replace`: activations to use instead of the named nodes' own (the
        layers after them compute from those)."""
        if x.dim() == 5:
            x = x.mean(dim=-1)
        replace = replace or {}
        outputs = {INPUT: x}
        for node in self.nodes:
            outputs[node.name] = replace[node.name] if node.name in replace else \
                node([outputs[s] for s in node.sources])
        acts = {n.name: outputs[n.name] for n in self.nodes[:-1]}
        return outputs[self.nodes[-1].name], acts


@torch.no_grad()
def activation_stats(ann, batches, norm: str = "layer",
                     percentile: float | Mapping[str, float] = 100.0) -> dict[str, torch.Tensor]:
    """Per hidden node of the twin `ann`, the maximum (or `percentile`) of its ReLU
    activations over `batches` of input; a scalar for norm="layer", one value
    per channel for norm="channel". A mapping gives each node its own
    percentile, in one pass over the batches; nodes it leaves out are skipped."""
    if norm not in ("layer", "channel"):
        raise ToolchainError(f"--norm: {norm!r} is not one of layer, channel")
    wanted = dict(percentile) if isinstance(percentile, Mapping) else None
    for p in (wanted.values() if wanted is not None else [percentile]):
        if not 0 < p <= 100:
            raise ToolchainError(f"--percentile: {p} is outside (0, 100]")
    ann.eval()
    acts: dict[str, list[torch.Tensor]] = {}
    for x in batches:
        _, a = ann(x)
        for name, v in a.items():
            if wanted is None or name in wanted:
                # (C, everything else): channel-major, so one row per channel
                acts.setdefault(name, []).append(v.detach().transpose(0, 1).reshape(v.shape[1], -1))
    if not acts:
        raise ToolchainError("conversion: no training frames to measure activations on")
    out = {}
    for name, parts in acts.items():
        a = torch.cat(parts, dim=1).double().cpu().numpy()
        if norm == "layer":
            a = a.reshape(1, -1)
        p = wanted[name] if wanted is not None else percentile
        stat = a.max(axis=1) if p >= 100 else np.percentile(a, p, axis=1)
        out[name] = torch.as_tensor(stat, dtype=torch.float64)
    return out
