"""NIR export of a `SpikingGraph` (Neuromorphic Intermediate Representation,
the `nir` package), for simulators and chips that read NIR.

Graph layout: `input` (nir.Input) -> for each node `n`, one NIR node per
synapse `n.syn<k>` (Conv2d, SumPool2d / AvgPool2d, with a Scale after a
weighted sum pool) -> `n` (CubaLIF) -> `n.delay` (Delay of 1 step, slayer's
axon delay; `axon_delay=False` leaves it out) -> consumers. Several edges
into one node add up, as the synapses of one node do. The readout node `n`
is an integrator (nir.I) with r = 1/T, so after T steps its state is the
network output, and it feeds `output`.

Parameter mapping, dt = 1. slayer's CUBA neuron is
    u[t] = (1 - a_u) u[t-1] + x[t],   v[t] = (1 - a_v) v[t-1] + u[t],
    spike and reset v to 0 when v[t] > theta,
with a_u = iDecay / 4096, a_v = vDecay / 4096 (the quantized decays) and
theta the quantized threshold. NIR's CubaLIF,
    tau_syn dI/dt = -I + w_in S,   tau_mem dv/dt = (v_leak - v) + r I,
integrated with forward Euler at dt = 1 (v using the updated I) is the same
recurrence when
    tau_syn = 1 / a_u,  w_in = tau_syn,  tau_mem = 1 / a_v,  r = tau_mem,
    v_leak = 0,  v_threshold = theta,  v_reset = 0.
Not carried over: Loihi's truncation of states to 1/4096 steps; a zero decay
(a perfect integrator) has no finite tau and is refused.
"""
from __future__ import annotations

import os
from pathlib import Path

import nir
import numpy as np
import torch
import torch.nn.functional as F
from lava.lib.dl import slayer

from models.graph import INPUT, Node, SpikingGraph
from toolchain.errors import ToolchainError
from toolchain.files import atomic_path

from .onnx_export import state_shapes, synapse_weight

DECAY_SCALE = 1 << 12


def _pair(v) -> np.ndarray:
    return np.array(v[:2], dtype=np.int64)


def _conv(syn: torch.nn.Conv3d, in_shape: tuple[int, ...], name: str) -> dict:
    if len(in_shape) != 3:
        raise ToolchainError(f"{name}: NIR Conv2d needs a (C, H, W) input, got shape {in_shape}")
    w = synapse_weight(syn)[..., 0].numpy()
    return {name: nir.Conv2d(
        input_shape=tuple(in_shape[1:]), weight=w, stride=_pair(syn.stride),
        padding=_pair(syn.padding), dilation=_pair(syn.dilation), groups=syn.groups,
        bias=np.zeros(w.shape[0], dtype=w.dtype))}


def _pool(syn: torch.nn.Conv3d, in_shape: tuple[int, ...], name: str) -> dict:
    """slayer's Pool is a per-channel sum pool times one weight, unless its
    channel-folding layout lets windows cross channels (padding, or a height
    that is not a multiple of the window): that case has no NIR form."""
    w = synapse_weight(syn)
    values = torch.unique(w)
    kernel, stride, padding = _pair(syn.kernel_size), _pair(syn.stride), _pair(syn.padding)
    probe = torch.rand(1, *in_shape, 1)
    per_channel = F.conv2d(probe[..., 0], w[..., 0].expand(in_shape[0], 1, -1, -1),
                           stride=tuple(stride), padding=tuple(padding), groups=in_shape[0])
    with torch.no_grad():
        slayer_out = syn(probe)[..., 0]
    if values.numel() != 1 or per_channel.shape != slayer_out.shape or \
            not torch.allclose(per_channel, slayer_out, atol=1e-5):
        raise ToolchainError(
            f"{name}: slayer Pool (kernel {kernel.tolist()}, padding {padding.tolist()}) on input "
            f"{tuple(in_shape)} mixes channels at their borders; NIR pooling cannot express it "
            "(use no padding and a height divisible by the kernel, or a depthwise Conv)")
    gain = float(values[0])
    area = int(kernel.prod())
    if np.isclose(gain * area, 1.0):
        return {name: nir.AvgPool2d(kernel_size=kernel, stride=stride, padding=padding)}
    nodes = {name: nir.SumPool2d(kernel_size=kernel, stride=stride, padding=padding)}
    if gain != 1.0:
        nodes[f"{name}.scale"] = nir.Scale(scale=np.full(per_channel.shape[1:], gain, np.float32))
    return nodes


SYNAPSE_NODES = {
    slayer.synapse.Conv: _conv,
    slayer.synapse.Dense: _conv,
    slayer.synapse.Pool: _pool,
}


def cuba_lif(node: Node, shape: tuple[int, ...]):
    """The NIR CubaLIF equivalent of a node's slayer CUBA neuron (module docstring)."""
    n = node.neuron
    a_u = float(n.cx_current_decay) / DECAY_SCALE
    a_v = float(n.cx_voltage_decay) / DECAY_SCALE
    if np.ndim(n.cx_current_decay) or np.ndim(n.cx_voltage_decay):
        raise ToolchainError(f"node {node.name!r}: per-channel decays are not supported in NIR export")
    if a_u == 0 or a_v == 0:
        raise ToolchainError(f"node {node.name!r}: zero current or voltage decay (a perfect "
                             "integrator) has no finite NIR time constant")
    if n.graded_spike or n.norm is not None:
        raise ToolchainError(f"node {node.name!r}: graded spikes / neuron normalization have no NIR form")

    def full(value: float) -> np.ndarray:
        return np.full(shape, value, dtype=np.float32)

    return nir.CubaLIF(tau_syn=full(1 / a_u), tau_mem=full(1 / a_v), r=full(1 / a_v),
                       v_leak=full(0.0), v_threshold=full(float(n.threshold)), v_reset=full(0.0),
                       w_in=full(1 / a_u))


def build_nir(model: SpikingGraph, *, time_steps: int | None = None, axon_delay: bool = True):
    """The nir.NIRGraph of `model` (see the module docstring for its layout)."""
    shapes = {k[:-2]: v for k, v in state_shapes(model).items() if k.endswith(".u")}
    readout = model.nodes[-1]
    shapes[readout.name] = state_shapes(model)["readout.acc"]
    shapes[INPUT] = tuple(model.input_shape)
    nodes = {INPUT: nir.Input(input_type={"input": np.array(model.input_shape)})}
    edges: list[tuple[str, str]] = []
    exits = {INPUT: INPUT}  # the NIR node whose output carries a graph node's spikes
    problems = []
    for node in model.nodes:
        for k, (source, syn) in enumerate(zip(node.sources, node.synapses)):
            name = f"{node.name}.syn{k}"
            make = SYNAPSE_NODES.get(type(syn))
            if make is None:
                problems.append(f"{name} ({type(syn).__name__})")
                continue
            chain = make(syn, shapes[source], name)
            names = list(chain)
            nodes.update(chain)
            edges += [(exits[source], names[0])] + list(zip(names, names[1:])) + [(names[-1], node.name)]
        if node.is_readout:
            steps = 1 if time_steps is None else int(time_steps)
            nodes[node.name] = nir.I(r=np.full(shapes[node.name], 1.0 / steps, np.float32))
            nodes["output"] = nir.Output(output_type={"output": np.array(shapes[node.name])})
            edges.append((node.name, "output"))
        else:
            nodes[node.name] = cuba_lif(node, shapes[node.name])
            exits[node.name] = node.name
            if axon_delay:
                nodes[f"{node.name}.delay"] = nir.Delay(delay=np.ones(shapes[node.name], np.float32))
                edges.append((node.name, f"{node.name}.delay"))
                exits[node.name] = f"{node.name}.delay"
    if problems:
        raise ToolchainError("NIR cannot express these synapses: " + ", ".join(problems)
                             + f" (NIR export supports {', '.join(t.__name__ for t in SYNAPSE_NODES)})")
    metadata = {"producer": "toolchain", "dt": 1.0, "axon_delay": int(axon_delay),
                "readout": "integrator state after T steps" + ("" if time_steps else " (sum; divide by T)")}
    if time_steps:
        metadata["time_steps"] = int(time_steps)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def export_nir(model: SpikingGraph, path: str | os.PathLike, *, time_steps: int | None = None,
               axon_delay: bool = True) -> Path:
    """Write `model` as a NIR HDF5 file; returns the path.

    `time_steps` sets the readout integrator's r = 1/T (without it r = 1 and
    the readout is the sum over steps). Raises ToolchainError naming every
    synapse that NIR cannot express (transposed conv, unpooling, ...).
    """
    path = Path(path)
    if not isinstance(model, SpikingGraph):
        raise ToolchainError(f"{path}: NIR export needs a SpikingGraph, got {type(model).__name__}")
    if time_steps is not None and int(time_steps) < 1:
        raise ToolchainError(f"{path}: time_steps must be >= 1, got {time_steps}")
    try:
        graph = build_nir(model.eval(), time_steps=time_steps, axon_delay=axon_delay)
    except ToolchainError as e:
        raise ToolchainError(f"{path}: {e}") from None
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)
    return path
