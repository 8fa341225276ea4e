"""NIR export of a `.net` file (Neuromorphic Intermediate Representation, the
`nir` package), for simulators and chips that read NIR.

Graph layout: `input` (nir.Input) -> for each layer `L`, one NIR node per
synapse `L.syn<k>` -> `L` (CubaLIF) -> `L.delay` (Delay of 1 step;
`axon_delay=False` leaves it out) -> consumers. Several edges into one node
add up, as the synapses of one layer do. The readout layer `L` is an
integrator (nir.I) with r = 1/T, so after T steps its state is the network
output, and it feeds `output`.

Synapses, weights as floats (the 8-bit integer / 64), built by each `.net`
type's `nir` in `deploy.synapses`:
- conv: Conv2d (grouped convs as their block-diagonal full weight);
- dense: Flatten -> Linear (the layer is then 1-D, (C,));
- pool: SumPool2d, then a Scale by the kernel's weight unless it is 1; a
  pool with unequal kernel weights or dilation is the per-channel Conv2d it is;
  a pool whose windows reach past the input edge has no NIR form;
- convT: no NIR form (nir has no transposed convolution).

Timing: in Lava every connection delays by one step, the input's included.
Here only the layers' outputs are delayed: that shifts every path from the
input alike, so NIR step t is Lava step t+1 (Lava's step 0 receives
nothing), `L.delay`'s output at step t is L's spikes at Lava step t, and the
readout after T+D-1 steps (the input's T, then zeros; D the pipeline depth)
is Lava's after a frame's T+D.

Parameter mapping, dt = 1. Loihi's CUBA neuron (in weight units) is
    u[t] = (1 - a_u) u[t-1] + x[t],   v[t] = (1 - a_v) v[t-1] + u[t],
    spike and reset v to 0 when v[t] > theta,
with a_u = iDecay / 4096, a_v = vDecay / 4096 and theta = vThMant / 64.
NIR's CubaLIF,
    tau_syn dI/dt = -I + w_in S,   tau_mem dv/dt = (v_leak - v) + r I,
integrated with forward Euler at dt = 1 (v using the updated I) is the same
recurrence when
    tau_syn = 1 / a_u,  w_in = tau_syn,  tau_mem = 1 / a_v,  r = tau_mem,
    v_leak = 0,  v_threshold = theta,  v_reset = 0.
Not carried over: Loihi's truncation of states to 1/4096 steps and its
24-bit limits; a zero voltage decay (a perfect integrator) has no finite tau
and is refused.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import nir
import numpy as np

from toolchain.core.errors import ToolchainError
from toolchain.core.files import atomic_path
from toolchain.core.loihi import DECAY_SCALE, W_SCALE

from .netfile import NetFile, Neuron
from .synapses import TYPES, kind

INPUT, OUTPUT = "input", "output"


def cuba_lif(neuron: Neuron, shape: tuple[int, ...], name: str) -> nir.CubaLIF:
    """The NIR CubaLIF equivalent of a layer's Loihi CUBA neuron (module docstring)."""
    a_u, a_v = neuron.iDecay / DECAY_SCALE, neuron.vDecay / DECAY_SCALE
    if a_u == 0 or a_v == 0:
        raise ToolchainError(f"{name}: zero current or voltage decay (a perfect integrator) has no "
                             "finite NIR time constant")

    def full(value: float) -> np.ndarray:
        return np.full(shape, value, dtype=np.float32)

    return nir.CubaLIF(tau_syn=full(1 / a_u), tau_mem=full(1 / a_v), r=full(1 / a_v), v_leak=full(0.0),
                       v_threshold=full(neuron.vThMant / W_SCALE), v_reset=full(0.0), w_in=full(1 / a_u))


def build_nir(net: NetFile, *, axon_delay: bool = True) -> nir.NIRGraph:
    """The nir.NIRGraph of `net` (see the module docstring for its layout)."""
    names = [INPUT, OUTPUT] + [layer.name for layer in net.layers]
    if len(set(names)) != len(names):
        raise ToolchainError(f"layer names must be unique and not {INPUT!r} or {OUTPUT!r}, got {names[2:]}")
    # a layer fed by dense synapses is 1-D in NIR (Linear's output)
    shapes = [tuple(net.input_shape)] + [
        (layer.shape[0],) if any(s.kind.nir_vector for s in layer.synapses) else tuple(layer.shape)
        for layer in net.layers]
    nodes = {INPUT: nir.Input(input_type={"input": np.array(net.input_shape)})}
    edges: list[tuple[str, str]] = []
    exits = {0: INPUT}  # the NIR node whose output carries a layer's spikes
    problems = []
    for i, layer in enumerate(net.layers, start=1):
        for k, (src, syn) in enumerate(zip(layer.sources, layer.synapses, strict=True)):
            name = f"{layer.name}.syn{k}"
            make = syn.kind.nir
            if make is None:
                problems.append(f"{name} ({syn.type})")
                continue
            if len(shapes[src]) == 1 and not syn.kind.nir_vector:
                problems.append(f"{name} ({syn.type} on the 1-D output of a dense layer)")
                continue
            try:
                chain = make(syn, shapes[src], shapes[i], name)
            except ToolchainError as e:
                problems.append(str(e))
                continue
            if syn.delay:  # the synapse's own delay, beyond the connection's step
                chain = {f"{name}.delay": nir.Delay(delay=np.full(shapes[src], float(syn.delay), np.float32)),
                         **chain}
            nodes.update(chain)
            order = list(chain)
            edges += [(exits[src], order[0])] + list(itertools.pairwise(order)) + [(order[-1], layer.name)]
        if i == len(net.layers):
            nodes[layer.name] = nir.I(r=np.full(shapes[i], 1.0 / net.time_steps, np.float32))
            nodes[OUTPUT] = nir.Output(output_type={"output": np.array(shapes[i])})
            edges.append((layer.name, OUTPUT))
            continue
        nodes[layer.name] = cuba_lif(layer.neuron, shapes[i], f"layer {i} ({layer.name})")
        exits[i] = layer.name
        if axon_delay:
            nodes[f"{layer.name}.delay"] = nir.Delay(delay=np.ones(shapes[i], np.float32))
            edges.append((layer.name, f"{layer.name}.delay"))
            exits[i] = f"{layer.name}.delay"
    if problems:
        raise ToolchainError("NIR cannot express these synapses: " + "; ".join(problems)
                             + f" (NIR export supports {', '.join(sorted(t for t in TYPES if kind(t).nir))})")
    metadata = {"producer": "toolchain", "dt": 1.0, "axon_delay": int(axon_delay),
                "time_steps": int(net.time_steps),
                "readout": "integrator state after T+D-1 steps (NIR step t = Lava step t+1)"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def export_nir(net: NetFile, path: str | os.PathLike, *, axon_delay: bool = True) -> Path:
    """Write `net` as a NIR HDF5 file; returns the path. The readout's r is 1/T
    with T = `net.time_steps`. Raises ToolchainError naming every synapse NIR
    cannot express; nothing is written then."""
    path = Path(path)
    if not isinstance(net, NetFile):
        raise ToolchainError(f"{path}: NIR export is built from a .net file (deploy.netfile.read or "
                             f"deploy.export.build_netfile), got {type(net).__name__}")
    try:
        graph = build_nir(net, axon_delay=axon_delay)
    except ToolchainError as e:
        raise ToolchainError(f"{path}: {e}") from None
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)
    return path
