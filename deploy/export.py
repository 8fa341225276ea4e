"""Quantize a trained `SpikingGraph` to Loihi fixed point and write it as `.net`.

Quantization is slayer's own: weights (weight norm folded first) rounded to
steps of 2/64 and clamped to [-256, 254]/64, stored x64 as 8-bit synapse
integers; thresholds int(theta*64); decays round(4096*decay). `quantized_copy`
gives the torch model that computes with exactly those numbers, i.e. the
"quantized torch" execution that Lava must reproduce.

Every synapse is checked numerically at export: its own torch forward on random
spikes must equal the integer map that the `.net` file describes. A synapse
with no exact Lava counterpart stops the export with an error naming the layer,
and nothing is written.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import cast

import numpy as np
import torch
from lava.lib.dl import slayer

from models.graph import INPUT, SpikingGraph
from toolchain.core.errors import ToolchainError
from toolchain.core.loihi import (
    INPUT_SHIFT,
    READOUT_NEURON,
    STATE_SCALE,
    VTH_MAX,
    W_SCALE,
    WEIGHT_MAX,
    WEIGHT_MIN,
    quantize_weight,
)

from . import netfile
from .netfile import Chw, Layer, NetFile, Neuron
from .synapses import Synapse, check_shape, fan_in_bound
from .synapses import apply as synapse_op


def effective_weight(syn: torch.nn.Module) -> torch.Tensor:
    """The float weight the synapse computes with, weight norm folded in."""
    if hasattr(syn, "weight_g") and hasattr(syn, "weight_v"):
        return torch._weight_norm(syn.weight_v, syn.weight_g, 0).detach()
    return syn.weight.detach()


def quantized_copy(model: SpikingGraph) -> SpikingGraph:
    """A copy whose synapses compute with the 8-bit weights (slayer's pre_hook_fx)."""
    # Weight norm keeps `weight` as a tensor computed in the last forward pass;
    # deepcopy refuses non-leaf tensors, and the hook recomputes it anyway.
    for m in model.modules():
        w = m.__dict__.get("weight")
        if isinstance(w, torch.Tensor) and w.grad_fn is not None:
            m.weight = w.detach()
    q = copy.deepcopy(model).eval()
    for node in q.nodes:
        for syn in node.synapses:
            syn._pre_hook_fx = quantize_weight
    return q


def _pair(v) -> tuple[int, int]:
    return int(v[0]), int(v[1])


def _synapse_record(syn: torch.nn.Module, src_shape: tuple, where: str) -> Synapse:
    """Translate one slayer synapse into its integer `.net` record."""
    kinds = (slayer.synapse.Pool, slayer.synapse.Unpool, slayer.synapse.Dense,
             slayer.synapse.ConvTranspose, slayer.synapse.Conv)
    if not isinstance(syn, kinds):
        raise ToolchainError(f"{where}: synapse {type(syn).__name__} has no Lava counterpart "
                             f"(supported: slayer Conv, Dense, Pool, ConvTranspose, Unpool)")
    w_float = effective_weight(syn).float()
    w = quantize_weight(w_float, descale=True).round().to(torch.int64).cpu().numpy()
    # slayer clamps the same way in its quantized forward pass, so the exported
    # net computes what the quantized model computes; still, say how many moved
    rounded = torch.round(w_float * (W_SCALE / 2)) * 2
    clamped = int(((rounded < WEIGHT_MIN) | (rounded > WEIGHT_MAX)).sum())
    if clamped:
        warnings.warn(f"{where}: {clamped} of {w.size} weights lie outside Loihi's 8-bit range "
                      f"[{WEIGHT_MIN}, {WEIGHT_MAX}]/64 and were clamped to it", stacklevel=4)
    if getattr(syn, "bias", None) is not None:
        raise ToolchainError(f"{where}: synapse bias has no counterpart in the exported LIF layers")
    if isinstance(syn, (slayer.synapse.Pool, slayer.synapse.Unpool)):
        kernel = w.reshape(w.shape[2:4])
        if isinstance(syn, slayer.synapse.Pool):
            return Synapse("pool", kernel, _pair(syn.stride), _pair(syn.padding), _pair(syn.dilation))
        c = src_shape[0]  # slayer Unpool: one kernel shared by all channels
        return Synapse("convT", np.repeat(kernel[None, None], c, axis=0), _pair(syn.stride),
                       _pair(syn.padding), _pair(syn.dilation), groups=c)
    if isinstance(syn, slayer.synapse.Dense):
        if tuple(w.shape[2:4]) == tuple(src_shape[1:]):
            return Synapse("dense", w.reshape(w.shape[0], -1))
        # slayer Dense on a spatial input with a smaller kernel acts per pixel: a conv
        return Synapse("conv", w.reshape(w.shape[:4]))
    if isinstance(syn, slayer.synapse.ConvTranspose):
        return Synapse("convT", w.reshape(w.shape[:4]), _pair(syn.stride), _pair(syn.padding),
                       _pair(syn.dilation), groups=int(syn.groups))
    return Synapse("conv", w.reshape(w.shape[:4]), _pair(syn.stride), _pair(syn.padding),
                   _pair(syn.dilation), groups=int(syn.groups))


def _check_synapse(syn: torch.nn.Module, rec: Synapse, src_shape, out_shape, where: str) -> None:
    """The torch synapse with quantized weights must equal the record's integer map."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand((2, *src_shape, 2), generator=gen) < 0.5).float()
    saved = getattr(syn, "_pre_hook_fx", None)
    # slayer's weight hook is a plain attribute, which torch's Module stubs do not know
    syn._pre_hook_fx = quantize_weight  # type: ignore[assignment]
    try:
        with torch.no_grad():
            ref = syn(x) * W_SCALE
    finally:
        syn._pre_hook_fx = saved  # type: ignore[assignment]
    if tuple(ref.shape[1:4]) != tuple(out_shape):
        raise ToolchainError(f"{where}: synapse output {tuple(ref.shape[1:4])} is not the layer's {out_shape}")
    try:
        check_shape(rec, src_shape, out_shape, where)
    except ToolchainError as e:
        raise ToolchainError(f"{e}; no exact Lava counterpart") from e
    ours = synapse_op(rec, x.permute(0, 4, 1, 2, 3).reshape(-1, *src_shape), out_shape)
    ours = ours.reshape(2, 2, *out_shape).permute(0, 2, 3, 4, 1).to(ref.dtype)
    if not torch.equal(ref.round(), ours):
        raise ToolchainError(f"{where}: {type(syn).__name__} synapse does not act per channel as a "
                             f"{rec.type} layer (e.g. slayer Pool with padding mixes channels); "
                             f"it has no exact Lava counterpart")


def _neuron_record(neuron, where: str) -> Neuron:
    if neuron is None:
        r = READOUT_NEURON
        return Neuron(iDecay=r["iDecay"], vDecay=r["vDecay"], vThMant=r["vThMant"])
    if getattr(neuron, "norm", None) is not None:
        raise ToolchainError(f"{where}: neuron normalization ({type(neuron.norm).__name__}) has no Loihi counterpart")
    if getattr(neuron, "graded_spike", False):
        raise ToolchainError(f"{where}: graded spikes are not supported")
    if int(neuron.w_scale) != W_SCALE or int(neuron.s_scale) != STATE_SCALE:
        raise ToolchainError(f"{where}: neuron scale {neuron.w_scale} is not Loihi's 64")
    p = neuron.device_params
    i_decay, v_decay = np.asarray(p["iDecay"]), np.asarray(p["vDecay"])
    if i_decay.size != 1 or v_decay.size != 1:
        raise ToolchainError(f"{where}: per-channel decays are not supported (use shared_param=True)")
    rec = Neuron(iDecay=int(i_decay), vDecay=int(v_decay), vThMant=int(p["vThMant"]))
    if rec.iDecay < 1:
        raise ToolchainError(f"{where}: current_decay 0 (iDecay 0) has no Lava LIF equivalent")
    if not 0 < rec.vThMant <= VTH_MAX:
        raise ToolchainError(f"{where}: threshold mantissa {rec.vThMant} outside Loihi's 1..{VTH_MAX}")
    return rec


def build_netfile(model: SpikingGraph, *, time_steps: int, encoding: str = "poisson",
                  class_names: list[str] | tuple[str, ...] = ()) -> NetFile:
    """Quantize `model` into a validated NetFile (nothing written)."""
    model = model.eval()
    index = {INPUT: 0}
    shapes: dict[int, Chw] = {0: cast(Chw, tuple(model.input_shape))}
    layers = []
    with torch.no_grad():
        x = torch.zeros((1, *model.input_shape, 1))
        outs = {INPUT: x}
        for i, node in enumerate(model.nodes, start=1):
            where = f"layer {i} ({node.name})"
            z = node.current([outs[s] for s in node.sources])
            c, h, w = (int(d) for d in z.shape[1:4])
            out_shape = (c, h, w)
            outs[node.name] = z
            synapses = []
            for src, syn, delay in zip(node.sources, node.synapses, node.delays, strict=True):
                rec = _synapse_record(syn, shapes[index[src]], where)
                _check_synapse(syn, rec, shapes[index[src]], out_shape, where)
                rec.delay = int(delay)
                synapses.append(rec)
            kind = synapses[0].type if len(synapses) == 1 else "add"
            layers.append(Layer(node.name, kind, out_shape, [index[s] for s in node.sources],
                                synapses, _neuron_record(node.neuron, where)))
            index[node.name] = i
            shapes[i] = out_shape
    net = NetFile(input_shape=shapes[0], time_steps=int(time_steps), layers=layers,
                  encoding=encoding, class_names=list(class_names))
    netfile.validate(net, "export")
    _warn_overflow(net)
    return net


def readout_bound(net: NetFile) -> int:
    """Worst-case |readout voltage|: every input spike on every step."""
    layer = net.layers[-1]
    per_step = sum(fan_in_bound(syn) for syn in layer.synapses)
    return per_step * (1 << INPUT_SHIFT) * net.time_steps


def _warn_overflow(net: NetFile) -> None:
    """Lava's readout voltage is 24-bit and the integrator fires above vThMant<<6;
    a bound past that means rare inputs could clip the readout (emulator and Lava
    still agree; torch, which has no limit, would not)."""
    bound, limit = readout_bound(net), VTH_MAX << INPUT_SHIFT
    if bound > limit:
        warnings.warn(f"layer {len(net.layers)} ({net.layers[-1].name}): worst-case readout "
                      f"voltage {bound} exceeds Loihi's 24-bit limit {limit}; inputs that drive "
                      f"every synapse at once would saturate it", stacklevel=3)


def export(model: SpikingGraph, path: str | Path, *, time_steps: int, encoding: str = "poisson",
           class_names: list[str] | tuple[str, ...] = ()) -> NetFile:
    """Quantize `model` and write it atomically to `path` as a `.net` file."""
    net = build_netfile(model, time_steps=time_steps, encoding=encoding, class_names=class_names)
    netfile.write(path, net)
    return net
