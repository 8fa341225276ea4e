"""NIR export of a `.net` file (Neuromorphic Intermediate Representation, the
`nir` package), for simulators and chips that read NIR. Two graphs, chosen by
`timing` (`toolchain export --target nir --nir-timing portable|exact`):

- "portable" (the default): only nodes that NIR consumers import (norse 1.1
  and snntorch 1.0 were checked, `tests/test_nir_consumers.py`): Conv2d,
  Flatten, Linear, CubaLIF, and Delay only where it is needed (below);
- "exact": Lava's step-for-step timing, with Delay, Scale, SumPool2d and an
  integrator readout (nir.I), which no consumer framework imports today.

Portable graph: `input` -> per layer `L`, one node per synapse `L.syn<k>`
(a pool is the per-channel Conv2d it is, its kernel weight folded in:
norse imports no Scale, snntorch no SumPool2d) -> `L` (CubaLIF) -> consumers.
The readout layer is left out: its synapses feed `output`, so the graph's
output is the readout integrator's input, and the host sums it over the
`metadata["run_steps"]` steps it runs (the frame's T input steps, then zeros)
and divides by T (`metadata["time_steps"]`), as Lava's readout integrator
does (`toolchain.core.loihi.readout_value`, in weight units).

Timing of the portable graph: Lava delays every connection by one step. In a
chain that only shifts each layer's spike train (layer i's spikes at NIR
step t are its Lava spikes at step t + i: the steps before carry no input,
so nothing spikes), so the portable graph drops the per-connection step.
Generally layer i lags L_i = min over its synapses j of L_src + 1 + delay_j
steps (L_0 = 0 for the input); a synapse whose path is shorter than that,
L_src + 1 + delay_j > L_i (paths of different depth meeting, e.g. an FCN
skip without a matching synaptic delay), keeps a Delay node `L.syn<k>.delay`
of the difference before it. norse 1.1 and snntorch 1.0 import no Delay:
such a graph runs in neither (`metadata["delay_nodes"]` names them).
`metadata["lag"]` is the readout input's lag L_R: the output at NIR step t is
the readout's input at Lava step t + L_R, and `run_steps` = T + D - L_R (D
the pipeline depth, `NetFile.pipeline_depth`), which is T for a chain.

Exact graph: `input` (nir.Input) -> for each layer `L`, one NIR node per
synapse `L.syn<k>` -> `L` (CubaLIF) -> `L.delay` (Delay of 1 step;
`axon_delay=False` leaves it out) -> consumers. Several edges into one node
add up, as the synapses of one layer do. The readout layer `L` is an
integrator (nir.I) with r = 1/T, so after T steps its state is the network
output, and it feeds `output`.

Synapses, weights as floats (the 8-bit integer / 64), built by each `.net`
type's `nir` in `deploy.synapses`:
- conv: Conv2d (grouped convs as their block-diagonal full weight);
- dense: Flatten -> Linear (the layer is then 1-D, (C,));
- pool (exact graph): SumPool2d, then a Scale by the kernel's weight unless
  it is 1; a pool with unequal kernel weights or dilation is the per-channel
  Conv2d it is (always so in the portable graph); a pool whose windows reach
  past the input edge has no NIR form;
- convT: no NIR form (nir has no transposed convolution).

Timing of the exact graph: in Lava every connection delays by one step, the
input's included.
Here only the layers' outputs are delayed: that shifts every path from the
input alike, so NIR step t is Lava step t+1 (Lava's step 0 receives
nothing), `L.delay`'s output at step t is L's spikes at Lava step t, and the
readout after T+D-1 steps (the input's T, then zeros; D the pipeline depth)
is Lava's after a frame's T+D.

Parameter mapping, time step dt (1 in the exact graph; `PORTABLE_DT` = 1e-4
in the portable one, since snntorch 1.0's importer assumes dt = 1e-4 and
norse's `from_nir` takes dt as an argument). Loihi's CUBA neuron (in weight
units) is
    u[t] = (1 - a_u) u[t-1] + x[t],   v[t] = (1 - a_v) v[t-1] + u[t],
    spike and reset v to 0 when v[t] > theta,
with a_u = iDecay / 4096, a_v = vDecay / 4096 and theta = vThMant / 64.
NIR's CubaLIF,
    tau_syn dI/dt = -I + w_in S,   tau_mem dv/dt = (v_leak - v) + r I,
integrated with forward Euler at step dt (v using the updated I) is the same
recurrence when
    tau_syn = dt / a_u,  w_in = 1 / a_u,  tau_mem = dt / a_v,  r = 1 / a_v,
    v_leak = 0,  v_threshold = theta,  v_reset = 0.
Both consumers integrate exactly so (norse: LIBox then LIFBox cells, Euler;
snntorch: Synaptic with alpha = 1 - dt/tau_syn = 1 - a_u, beta = 1 - a_v,
its input scale w_in dt / tau_syn = 1, reset to zero), in float32.
Not carried over: Loihi's truncation of the decayed states toward zero on a
grid of 1/4096 weight units (floats decay a little less: a state differs by
at most about one grid step per step) and its 24-bit limits; a zero voltage
decay (a perfect integrator) has no finite tau and is refused.
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
TIMINGS = ("portable", "exact")
PORTABLE_DT = 1e-4  # snntorch 1.0's NIR import hard-codes dt = 1e-4
CONSUMERS_WITHOUT_DELAY = "norse 1.1, snntorch 1.0"


def cuba_lif(neuron: Neuron, shape: tuple[int, ...], name: str, dt: float = 1.0) -> nir.CubaLIF:
    """The NIR CubaLIF equivalent of a layer's Loihi CUBA neuron at time step `dt` (module docstring)."""
    a_u, a_v = neuron.iDecay / DECAY_SCALE, neuron.vDecay / DECAY_SCALE
    if a_u == 0 or a_v == 0:
        raise ToolchainError(f"{name}: zero current or voltage decay (a perfect integrator) has no "
                             "finite NIR time constant")

    def full(value: float) -> np.ndarray:
        return np.full(shape, value, dtype=np.float32)

    return nir.CubaLIF(tau_syn=full(dt / a_u), tau_mem=full(dt / a_v), r=full(1 / a_v), v_leak=full(0.0),
                       v_threshold=full(neuron.vThMant / W_SCALE), v_reset=full(0.0), w_in=full(1 / a_u))


def _check_names(net: NetFile) -> None:
    names = [INPUT, OUTPUT] + [layer.name for layer in net.layers]
    if len(set(names)) != len(names):
        raise ToolchainError(f"layer names must be unique and not {INPUT!r} or {OUTPUT!r}, got {names[2:]}")


def _nir_shapes(net: NetFile) -> list[tuple[int, ...]]:
    """Shape of the input (0) and of each layer in NIR: a layer fed by dense synapses is 1-D (Linear's output)."""
    return [tuple(net.input_shape)] + [
        (layer.shape[0],) if any(s.kind.nir_vector for s in layer.synapses) else tuple(layer.shape)
        for layer in net.layers]


def _synapse_chain(syn, src_shape: tuple, shape: tuple, name: str, problems: list[str], *,
                   as_conv: bool = False) -> dict | None:
    """The NIR nodes of one synapse in chain order, or None (the reason appended to `problems`)."""
    make = syn.kind.nir
    if make is None:
        problems.append(f"{name} ({syn.type})")
        return None
    if len(src_shape) == 1 and not syn.kind.nir_vector:
        problems.append(f"{name} ({syn.type} on the 1-D output of a dense layer)")
        return None
    try:
        if as_conv and syn.type == "pool":
            return make(syn, src_shape, shape, name, as_conv=True)
        return make(syn, src_shape, shape, name)
    except ToolchainError as e:
        problems.append(str(e))
        return None


def _refuse(problems: list[str]) -> None:
    if problems:
        raise ToolchainError("NIR cannot express these synapses: " + "; ".join(problems)
                             + f" (NIR export supports {', '.join(sorted(t for t in TYPES if kind(t).nir))})")


def layer_lags(net: NetFile) -> list[int]:
    """L_i of the portable graph for the input (0) and each layer: the steps by
    which its spikes (the readout: its input) run ahead of Lava's."""
    lags = [0]
    for layer in net.layers:
        lags.append(min(lags[src] + 1 + int(syn.delay) for src, syn in zip(layer.sources, layer.synapses,
                                                                            strict=True)))
    return lags


def build_nir(net: NetFile, *, timing: str = "portable", axon_delay: bool = True,
              dt: float = PORTABLE_DT) -> nir.NIRGraph:
    """The nir.NIRGraph of `net` (see the module docstring for both layouts).
    `axon_delay` applies to the exact graph, `dt` to the portable one."""
    if timing not in TIMINGS:
        raise ToolchainError(f"NIR timing {timing!r}: choose one of {', '.join(TIMINGS)}")
    _check_names(net)
    if timing == "portable":
        return _build_portable(net, dt)
    shapes = _nir_shapes(net)
    nodes = {INPUT: nir.Input(input_type={"input": np.array(net.input_shape)})}
    edges: list[tuple[str, str]] = []
    exits = {0: INPUT}  # the NIR node whose output carries a layer's spikes
    problems: list[str] = []
    for i, layer in enumerate(net.layers, start=1):
        for k, (src, syn) in enumerate(zip(layer.sources, layer.synapses, strict=True)):
            name = f"{layer.name}.syn{k}"
            chain = _synapse_chain(syn, shapes[src], shapes[i], name, problems)
            if chain is None:
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
    _refuse(problems)
    metadata = {"producer": "toolchain", "timing": "exact", "dt": 1.0, "axon_delay": int(axon_delay),
                "time_steps": int(net.time_steps),
                "readout": "integrator state after T+D-1 steps (NIR step t = Lava step t+1)"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def _build_portable(net: NetFile, dt: float) -> nir.NIRGraph:
    """The portable graph (module docstring): no readout node, no per-connection delay."""
    shapes, lags = _nir_shapes(net), layer_lags(net)
    nodes: dict[str, nir.NIRNode] = {INPUT: nir.Input(input_type={"input": np.array(net.input_shape)})}
    edges: list[tuple[str, str]] = []
    problems: list[str] = []
    delay_nodes: list[str] = []
    last = len(net.layers)
    for i, layer in enumerate(net.layers, start=1):
        target = OUTPUT if i == last else layer.name
        for k, (src, syn) in enumerate(zip(layer.sources, layer.synapses, strict=True)):
            name = f"{layer.name}.syn{k}"
            chain = _synapse_chain(syn, shapes[src], shapes[i], name, problems, as_conv=True)
            if chain is None:
                continue
            wait = lags[src] + 1 + int(syn.delay) - lags[i]  # >= 0: lags[i] is the minimum
            if wait:
                chain = {f"{name}.delay": nir.Delay(delay=np.full(shapes[src], float(wait * dt), np.float32)),
                         **chain}
                delay_nodes.append(f"{name}.delay")
            nodes.update(chain)
            order = list(chain)
            src_node = INPUT if src == 0 else net.layers[src - 1].name
            edges += [(src_node, order[0])] + list(itertools.pairwise(order)) + [(order[-1], target)]
        if i == last:
            nodes[OUTPUT] = nir.Output(output_type={"output": np.array(shapes[i])})
        else:
            nodes[layer.name] = cuba_lif(layer.neuron, shapes[i], f"layer {i} ({layer.name})", dt)
    _refuse(problems)
    lag = lags[last]
    metadata = {
        "producer": "toolchain", "timing": "portable", "dt": float(dt), "time_steps": int(net.time_steps),
        "lag": int(lag), "run_steps": int(net.frame_steps() - lag),
        "layer_lags": {layer.name: int(lags[i]) for i, layer in enumerate(net.layers[:-1], start=1)},
        "readout": (f"output = the readout integrator's input; run run_steps steps (the T = {net.time_steps} "
                    "input steps, then zeros), sum the output over them and divide by T; output at NIR step t "
                    "is the readout input at Lava step t + lag, layer L's spikes at t are Lava's at "
                    "t + layer_lags[L]"),
        "delay_nodes": ", ".join(delay_nodes),
        "consumers": ("runs in norse 1.1 (norse.torch.from_nir, dt=metadata dt) and snntorch 1.0 "
                      "(snntorch.import_nir.import_from_nir)" if not delay_nodes else
                      f"paths of different depth meet: Delay nodes ({', '.join(delay_nodes)}), which "
                      f"{CONSUMERS_WITHOUT_DELAY} cannot import"),
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def export_nir(net: NetFile, path: str | os.PathLike, *, timing: str = "portable", axon_delay: bool = True,
               dt: float = PORTABLE_DT) -> Path:
    """Write `net` as a NIR HDF5 file; returns the path. `timing` "portable"
    (default) or "exact" picks the graph (module docstring); the exact
    graph's readout has r = 1/T with T = `net.time_steps`. Raises
    ToolchainError naming every synapse NIR cannot express; nothing is
    written then."""
    path = Path(path)
    if not isinstance(net, NetFile):
        raise ToolchainError(f"{path}: NIR export is built from a .net file (deploy.netfile.read or "
                             f"deploy.export.build_netfile), got {type(net).__name__}")
    try:
        graph = build_nir(net, timing=timing, axon_delay=axon_delay, dt=dt)
    except ToolchainError as e:
        raise ToolchainError(f"{path}: {e}") from None
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)
    return path
