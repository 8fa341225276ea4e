"""Building `SpikingGraph`s from slayer synapses, and the switches every model shares.

`GraphBuilder` adds nodes one at a time while tracking each node's (C, H, W),
so that a model file reads as a list of layers. Every synapse is one the
exporter supports: `slayer.synapse.Conv` (no bias), `Pool` (sum pooling with
a fixed scalar weight) and `ConvTranspose`.

Fixed point: synapses quantize their weights in the forward pass with
`neuron.quantize_8bit` (Loihi's 8-bit weights: steps of 2/64, clamped to
[-256, 254]/64) when the model is quantized; `set_quantized` switches that
hook on or off on the same weights, so the float and the quantized network
are one set of parameters.

Normalisation: the paper's BNTT (a batch norm per time step) has no Loihi
counterpart. We use slayer's weight normalisation (w = g * v / |v| per
output channel) instead: it gives the optimiser the same per-channel scale
freedom while training, and `fold_for_export` turns it into plain weights
that quantize and export like any other.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping

import torch
from lava.lib.dl import slayer

from toolchain.core.errors import ToolchainError

from .graph import INPUT, NeuronParams, Node, SpikingGraph

# slayer's synapses call torch.nn.utils.weight_norm, which warns on every call
# that a newer API exists; slayer 0.6 is final, so the notice says nothing to act on.
warnings.filterwarnings("ignore", message=r"torch\.nn\.utils\.weight_norm is deprecated", category=UserWarning)

# Pooling is a sum-pooling synapse with a fixed weight into a neuron group.
# 1/k^2 would be a true average, but a neuron then needs k^2 input spikes (a
# dozen steps at typical rates) before it first fires, which a T of 10-20
# steps cannot afford. Weight 1/2 fires on two spikes in a window (or one,
# twice), so the pool averages over time as well as space. Exact in Loihi's
# 2/64 weight steps.
POOL_KERNEL = 2
POOL_WEIGHT = 0.5


def _synapses(model: torch.nn.Module):
    for node in model.nodes:
        yield node, list(node.synapses)


class GraphBuilder:
    """Accumulates nodes of a `SpikingGraph`, tracking shapes.

    `weight_scale` multiplies slayer's default (Kaiming-uniform) init; spiking
    nets with threshold 1 need weights that are a few 8-bit steps large at
    init, or the deeper layers never fire. `layer_thresholds` gives named
    spiking layers their own threshold instead of `neuron`'s.
    """

    def __init__(self, in_channels: int, input_hw: tuple[int, int], neuron: NeuronParams, *,
                 quantized: bool = False, weight_norm: bool = True, weight_scale: float = 1.0,
                 pool_weight: float = POOL_WEIGHT, layer_thresholds: Mapping[str, float] | None = None):
        self.neuron = neuron
        self.layer_thresholds = dict(layer_thresholds or {})
        bad = {k: v for k, v in self.layer_thresholds.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ToolchainError(f"model.layer_thresholds: thresholds must be positive, got {bad}")
        self.quantized = quantized
        self.weight_norm = weight_norm
        self.weight_scale = weight_scale
        self.pool_weight = pool_weight
        self.input_shape = (int(in_channels), int(input_hw[0]), int(input_hw[1]))
        self.shapes: dict[str, tuple[int, int, int]] = {INPUT: self.input_shape}
        self.depths: dict[str, int] = {INPUT: 0}  # steps from the input: connections plus delays
        self.nodes: list[Node] = []
        self.last = INPUT

    # -- synapses -----------------------------------------------------------
    def _conv(self, cin, cout, k, dilation=1, quantizer=None):
        pad = dilation * (k - 1) // 2
        syn = slayer.synapse.Conv(cin, cout, k, stride=1, padding=pad, dilation=dilation,
                                  weight_scale=self.weight_scale, weight_norm=self.weight_norm,
                                  pre_hook_fx=quantizer if self.quantized else None)
        return syn

    def _add(self, name, sources, synapses, out_shape, spiking=True, delays=None):
        params = self.neuron
        if spiking and name in self.layer_thresholds:
            params = dataclasses.replace(params, threshold=float(self.layer_thresholds[name]))
        neuron = params.make() if spiking else None
        quantizer = (neuron or params.make()).quantize_8bit
        for syn in synapses:
            syn._pre_hook_fx = quantizer if self.quantized else None
        node = Node(name, sources, synapses, neuron, delays)
        self.depths[name] = max(self.depths[s] + 1 + d for s, d in zip(sources, node.delays, strict=True))
        # The readout has no neuron to lend its quantizer: keep one beside the
        # node, outside the module tree so it adds nothing to the state dict.
        node.__dict__["quantizer"] = quantizer
        self.nodes.append(node)
        self.shapes[name] = out_shape
        self.last = name
        return name

    # -- layers -------------------------------------------------------------
    def conv(self, name, cout, k=3, dilation=1, src=None, spiking=True):
        src = src or self.last
        cin, h, w = self.shapes[src]
        return self._add(name, [src], [self._conv(cin, cout, k, dilation)], (cout, h, w), spiking)

    def pool(self, name, src=None):
        src = src or self.last
        c, h, w = self.shapes[src]
        syn = slayer.synapse.Pool(POOL_KERNEL, stride=POOL_KERNEL, weight_scale=self.pool_weight)
        # slayer pads odd sizes up before pooling, so odd sizes round up
        out = (c, math.ceil(h / POOL_KERNEL), math.ceil(w / POOL_KERNEL))
        return self._add(name, [src], [syn], out)

    def upsample_add(self, name, up_src, skip_src, spiking=True, channels=None):
        """Stride-2 transposed conv of `up_src` plus a 1x1 score conv of
        `skip_src` (the FCN skip), summed into one neuron group of `channels`
        (default: those of `up_src`). The kernel
        is 4 (pad 1) along an axis whose target size is even and 3 (pad 1)
        where it is odd, so the output lands exactly on the skip's size
        without a crop.

        The skip is the shorter path, so it carries a synaptic delay that
        makes it arrive as late as the upsampled path: every input of the
        group then belongs to the same frame, which lets Lava stream frames
        back to back (`deploy.lava`)."""
        cu, hu, wu = self.shapes[up_src]
        cs, hs, ws = self.shapes[skip_src]
        kernel = []
        for n_in, n_out in ((hu, hs), (wu, ws)):
            if n_out == 2 * n_in:
                kernel.append(4)
            elif n_out == 2 * n_in - 1:
                kernel.append(3)
            else:
                raise ValueError(f"node {name}: cannot upsample {n_in} to {n_out} with stride 2")
        cout = channels or cu
        up = slayer.synapse.ConvTranspose(cu, cout, tuple(kernel), stride=2, padding=1,
                                          weight_scale=self.weight_scale, weight_norm=self.weight_norm)
        score = self._conv(cs, cout, 1)
        delay = self.depths[up_src] - self.depths[skip_src]
        if delay < 0:
            raise ValueError(f"node {name}: the skip {skip_src!r} is deeper than {up_src!r}")
        return self._add(name, [up_src, skip_src], [up, score], (cout, hs, ws), spiking, delays=[0, delay])

    def build(self) -> SpikingGraph:
        spiking = [n.name for n in self.nodes if not n.is_readout]
        unknown = sorted(set(self.layer_thresholds) - set(spiking))
        if unknown:
            raise ToolchainError(f"model.layer_thresholds: no spiking layer named {', '.join(unknown)} "
                                 f"(this net's: {', '.join(spiking)})")
        graph = SpikingGraph(self.nodes, self.input_shape, self.neuron)
        graph.quantized = self.quantized
        return graph


def set_quantized(model: SpikingGraph, flag: bool) -> SpikingGraph:
    """Switch Loihi 8-bit weight quantization in the forward pass on or off."""
    for node, synapses in _synapses(model):
        for syn in synapses:
            syn._pre_hook_fx = node.__dict__["quantizer"] if flag else None
    model.quantized = bool(flag)
    return model


def fold_for_export(model: SpikingGraph) -> SpikingGraph:
    """Fold weight normalisation into plain `weight` tensors (in place)."""
    for _, synapses in _synapses(model):
        for syn in synapses:
            if getattr(syn, "weight_norm_enabled", False):
                syn.disable_weight_norm()
    return model


def firing_rates(spikes: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean spikes per neuron per time step, for each spiking node."""
    return {name: float(s.detach().float().abs().mean()) for name, s in spikes.items()}


def parameter_count(model: torch.nn.Module) -> int:
    """Trainable synaptic weights (weight-norm g and v count as one weight)."""
    total = 0
    for _, synapses in _synapses(model):
        for syn in synapses:
            if isinstance(syn, slayer.synapse.Pool):
                continue
            total += syn.weight.numel()
    return total
