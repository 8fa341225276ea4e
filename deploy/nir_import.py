"""NIR import: a NIR graph (`nir.read`) quantized to Loihi fixed point as a `.net`
file (`toolchain import --nir FILE.nir --out MODEL.net`), the inverse of
`deploy.nir_export`'s portable graph, and read as snntorch 1.0 and norse 1.1
write graphs.

Nodes: Input, Output, Conv2d, Linear, Affine, SumPool2d, AvgPool2d, Flatten
(the synapses) and CubaLIF, LIF, IF (the layers). Anything else (Delay,
Threshold, Scale, I, LI, recurrent subgraphs, ...) is refused by name.

Structure: every neuron node is one `.net` layer; the nodes on a path into it
from the input or another neuron are one synapse:
- one Conv2d: conv; one SumPool2d / AvgPool2d: pool (kernel weights 1 and
  1/(kh*kw));
- [maps...] Flatten? Linear|Affine: dense, the whole path composed into one
  matrix (e.g. AvgPool2d -> Flatten -> Linear, as snntorch writes it);
- biases must be zero (a `.net` synapse has none).
Several paths into one neuron add up (an `add` layer). The synapses into the
Output node become the readout integrator (their sum integrated over the
frame, as the portable export's output); a graph whose output is a neuron's
spikes gets an identity readout `readout` (weight 1.0) that counts them.

Timing: NIR passes values within a step; Lava delays every connection by one
step. Layer i runs L_i = max over its sources (L_src + 1) steps behind the NIR
graph (L_0 = 0), and a synapse from a shallower source gets `.net` delay
L_i - L_src - 1, so paths of different depth meet as in NIR. A frame of T
input steps then integrates, in the readout, exactly the NIR output of steps
0..T-1, and NIR step t of layer i is Lava step t + L_i.

Neurons, at time step dt (`dt`, default: the graph's metadata["dt"], else
1e-4, snntorch's and the portable export's): forward Euler of NIR's
equations, the inverse of `deploy.nir_export`'s mapping:
- CubaLIF: a_u = dt/tau_syn, a_v = dt/tau_mem, input gain g = a_u w_in a_v r;
- LIF:     a_u = 1 (no current state), a_v = dt/tau, g = a_v r;
- IF:      a_u = 1, a_v = 0 (no leak), g = r (v += r I per step, as norse runs it);
iDecay = round(4096 a_u), vDecay = round(4096 a_v); v_leak and v_reset must
be 0 (Loihi leaks toward 0 and resets to 0); every neuron of a layer must
share its parameters. Then the float voltage is g times Loihi's (in weight
units), so the threshold is theta/g.

Quantization, per layer: weights W and threshold theta/g are multiplied by
one scale s (spikes are unchanged by scaling both), W*s rounded to the 8-bit
grid (steps of 2/64, [-256, 254]/64, as `toolchain.core.loihi.quantize_weight`)
and vThMant = round(64 theta s/g). s = 1 where W and theta/g already lie on
the grid (a toolchain export: the round trip is exact), else the largest s
that keeps W*s in range, 254/64 up and 256/64 down, and vThMant <= 2^17-1.
Each weight goes to its nearest grid point, except that per output the
fewest weights move one step the other way to keep the output's weight sum
(`round_to_grid`). The readout's s scales the readout value (class argmax
unchanged); `ImportResult.layers` reports every s and the weight error it left.

What moves spikes, measured on snntorch-built conv and dense SNNs (8 weight
draws each, 10 steps; every effect alone against `simulate`): the 8-bit
weights, almost all of it; threshold rounding (vThMant ~ 360 or more) a
tenth as much; the rounded decays and Loihi's truncation of decayed states
(on a grid of 1/4096 weight units, against a threshold of ~ 4096 x 360)
under 1 in 10^4 spikes. Small weight errors flip neurons near threshold, and
each flip changes all later steps of that neuron and its targets, so the
disagreement grows with depth: on the conv SNN of the tests (8 weight and 3
input draws) 0.13% of the first layer's spikes, 1.2% of the second's and
2.0% of the readout's argmax disagree (plain rounding at 254/64: 0.18%,
1.5%, 2.5%; plain rounding of 10-bit weights would leave 0.7% of the
readout). `agreement` measures it on a graph: `simulate` (float64 forward
Euler, this module's reference) against the emulator.

Split weights (`precision="split"`, `toolchain import --weight-split`): a
Loihi neuron adds up every connection into it, so each path becomes two
synapses from the same source with the same delay (an `add` layer): a coarse
one, W's nearest 8-bit mantissas at weight exponent e, and a fine one, the
rest (|rest| <= 2^(e-1) grid steps, `round_to_grid`) at exponent 0; s and
vThMant are 2^e times the 8-bit path's. That is 8 + e bits a weight (signed)
for twice the synapses and synaptic operations. e is the largest of 1..7
that keeps vThMant <= 2^17-1 and the layer's worst-case state within Loihi's
24 bits: every input of one output's positive (or negative) weights spiking
on every step, summed over the current's decay (the readout's voltage: over
the frame's T + D steps), since a wrapped current flips a neuron's sign
(with e = 7 everywhere the readout below agrees on 79%). The voltage's clip
at -2^23 is left unbounded: it acts only on a neuron more than 2^23 / (64
vThMant) thresholds below firing. A layer is split only where all its
synapses run as Lava's Conv, which takes integer weights of any size (its
Dense and Sparse, which pooling, dense and delayed synapses run as, clip
weights to 8 bits; `deploy.netfile`); the others keep one 8-bit synapse a
path, and a note says so. On the conv SNN of the tests (8 weight draws x 3
input draws of 24 frames, e = 6, 2, 3 for its layers): readout argmax
agreement 97.86% -> 99.81% (worst draw 95.75% -> 99.39%), first layer
99.866% -> 99.996%, second 98.84% -> 99.915%; synapses 56,352 -> 105,504 and
synaptic operations per frame 100,790 -> 201,475 (weight draw 0).
"""
from __future__ import annotations

import graphlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import nir
import numpy as np
import torch
import torch.nn.functional as F

from toolchain.core.errors import ToolchainError
from toolchain.core.loihi import (
    DECAY_SCALE,
    INPUT_SHIFT,
    READOUT_NEURON,
    U_MAX,
    VTH_MAX,
    W_SCALE,
    WEIGHT_MAX,
    WEIGHT_MIN,
)

from . import netfile
from .netfile import MAX_WEIGHT_EXP, Chw, Layer, NetFile, Neuron
from .synapses import Synapse, kind

SYNAPSE_NODES: tuple[type, ...] = (nir.Conv2d, nir.Linear, nir.Affine, nir.SumPool2d, nir.AvgPool2d, nir.Flatten)
NEURON_NODES: tuple[type, ...] = (nir.CubaLIF, nir.LIF, nir.IF)
SUPPORTED = ("Input", "Output") + tuple(t.__name__ for t in SYNAPSE_NODES + NEURON_NODES)
DEFAULT_DT = 1e-4  # snntorch 1.0's NIR convention, and deploy.nir_export.PORTABLE_DT
MAX_DENSE_INPUTS = 1 << 16  # a composed dense path pushes an identity basis of this size through torch
READOUT_NAME = "readout"
PRECISIONS = ("8bit", "split")


@dataclass
class LayerReport:
    """What quantization did to one layer (`max_rel`: largest |weight error| / largest |weight|;
    `mean_rel`: mean |weight error| / mean |weight|, both in the float graph's units)."""

    name: str
    node: str  # the NIR node (the Output node for the readout)
    type: str
    scale: float
    max_rel: float
    mean_rel: float
    threshold: float | None  # theta / g in the float graph's weight units; None for the readout
    v_th_mant: int
    clamped: int = 0  # weights outside the 8-bit range after scaling (never, unless s = 1 was forced)
    exponent: int = 0  # split: the coarse synapse's weight exponent (the fine one's is 0); 0: one synapse a path


@dataclass
class ImportResult:
    net: NetFile
    graph: nir.NIRGraph
    dt: float
    layers: list[LayerReport]
    lags: dict[str, int]  # layer name -> L_i (NIR step t is Lava step t + L_i)
    readout_scale: float  # the readout value is readout_scale x the float graph's mean output
    spiking_output: bool  # the graph's output is a neuron's spikes (an identity readout was added)
    nir_input_shape: tuple[int, ...] = ()  # the input as the NIR graph shapes it
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading
def read_graph(path: str | os.PathLike) -> nir.NIRGraph:
    path = Path(path)
    if not path.is_file():
        raise ToolchainError(f"{path}: no such NIR file")
    try:
        graph = nir.read(path)
    except Exception as e:  # nir raises whatever h5py or its own parsing raises
        raise ToolchainError(f"{path}: not a readable NIR file ({type(e).__name__}: "
                             f"{' '.join(str(e).split())})") from e
    if not isinstance(graph, nir.NIRGraph):
        raise ToolchainError(f"{path}: holds a single {type(graph).__name__} node, not a NIR graph")
    return graph


def _arr(v: Any) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=np.float64)


def _pair(v: Any, name: str, where: str) -> tuple[int, int]:
    a = np.asarray(v).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, 2)
    if a.size != 2:
        raise ToolchainError(f"{where}: {name} {v!r} is not one or two integers")
    return int(a[0]), int(a[1])


def _conv_padding(node: nir.Conv2d, where: str) -> tuple[int, int]:
    p = node.padding
    if isinstance(p, str):
        if p == "valid":
            return (0, 0)
        k = _arr(node.weight).shape[-2:]
        d = _pair(node.dilation, "dilation", where)
        if p == "same" and all(kk % 2 for kk in k) and _pair(node.stride, "stride", where) == (1, 1):
            return (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
        raise ToolchainError(f"{where}: padding {p!r} with kernel {tuple(k)} has no symmetric equivalent")
    return _pair(p, "padding", where)


def _uniform(node: Any, attr: str, where: str) -> float:
    a = _arr(getattr(node, attr)).reshape(-1)
    if a.size == 0:
        raise ToolchainError(f"{where}: {attr} is empty")
    if not np.allclose(a, a[0], rtol=1e-6, atol=0):
        raise ToolchainError(f"{where}: {attr} differs between neurons ({a.min():g}..{a.max():g}); a .net "
                             "layer shares one neuron")
    return float(a[0])


# ---------------------------------------------------------------- the float maps (shared by import and simulate)
def _apply(node: Any, x: torch.Tensor, where: str) -> torch.Tensor:
    """One synapse node on a batch (B, ...) of float64 values."""
    if isinstance(node, nir.Conv2d):
        w = torch.as_tensor(_arr(node.weight))
        b = _arr(node.bias) if node.bias is not None else None
        return F.conv2d(x, w, None if b is None else torch.as_tensor(b).reshape(-1), stride=_pair(node.stride, "stride", where),
                        padding=_conv_padding(node, where), dilation=_pair(node.dilation, "dilation", where),
                        groups=int(node.groups))
    if isinstance(node, (nir.Linear, nir.Affine)):
        y = x @ torch.as_tensor(_arr(node.weight)).T
        return y + torch.as_tensor(_arr(node.bias)) if isinstance(node, nir.Affine) else y
    if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        k = _pair(node.kernel_size, "kernel_size", where)
        y = F.avg_pool2d(x, k, _pair(node.stride, "stride", where), _pair(node.padding, "padding", where),
                         count_include_pad=True)
        return y * (k[0] * k[1]) if isinstance(node, nir.SumPool2d) else y
    if isinstance(node, nir.Flatten):
        end = int(node.end_dim)
        return x.flatten(int(node.start_dim) + 1, end + 1 if end >= 0 else end)
    raise ToolchainError(f"{where}: not a synapse node")  # pragma: no cover (types checked before)


# ---------------------------------------------------------------- the graph's structure
@dataclass
class _Path:
    source: str  # the Input or neuron node it reads
    nodes: list[str]  # synapse nodes, in order


def _structure(graph: nir.NIRGraph, where: str) -> tuple[str, str, list[str], dict[str, list[_Path]]]:
    """(input node, output node, neuron nodes in topological order, paths into each neuron and the output)."""
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise ToolchainError(f"{where}: node {name!r} is a subgraph (a recurrent layer); a .net is "
                                 f"feed-forward (supported nodes: {', '.join(SUPPORTED)})")
        if type(node).__name__ not in SUPPORTED:
            raise ToolchainError(f"{where}: node {name!r} ({type(node).__name__}) has no .net counterpart "
                                 f"(supported nodes: {', '.join(SUPPORTED)})")
    inputs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Input)]
    outputs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ToolchainError(f"{where}: needs exactly one Input and one Output node, found inputs {inputs}, "
                             f"outputs {outputs}")
    preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for a, b in graph.edges:
        if a not in graph.nodes or b not in graph.nodes:
            raise ToolchainError(f"{where}: edge ({a!r}, {b!r}) names a node the graph does not have")
        preds[b].append(a)
    try:
        order = list(graphlib.TopologicalSorter(preds).static_order())
    except graphlib.CycleError as e:
        raise ToolchainError(f"{where}: recurrent edges (a cycle through {e.args[1]}); a .net is "
                             "feed-forward") from None
    neurons = [n for n in order if isinstance(graph.nodes[n], NEURON_NODES)]
    paths: dict[str, list[_Path]] = {}
    for target in neurons + outputs:
        if not preds[target]:
            raise ToolchainError(f"{where}: node {target!r} has no input")
        paths[target] = []
        for p in preds[target]:
            chain: list[str] = []
            cur = p
            while isinstance(graph.nodes[cur], SYNAPSE_NODES):
                chain.insert(0, cur)
                if len(preds[cur]) != 1:
                    raise ToolchainError(f"{where}: node {cur!r} ({type(graph.nodes[cur]).__name__}) has "
                                         f"{len(preds[cur])} inputs; only neurons and the output may sum inputs")
                cur = preds[cur][0]
            if isinstance(graph.nodes[cur], nir.Output):  # pragma: no cover (an Output feeds nothing)
                raise ToolchainError(f"{where}: node {cur!r} reads the Output")
            if not chain and target != outputs[0]:
                raise ToolchainError(f"{where}: neuron {target!r} reads {cur!r} without a synapse between")
            paths[target].append(_Path(cur, chain))
    return inputs[0], outputs[0], neurons, paths


def _input_shape(graph: nir.NIRGraph, name: str, given: tuple[int, ...] | None, where: str) -> tuple[int, ...]:
    t = (graph.nodes[name].input_type or {}).get("input")
    shape = tuple(int(s) for s in np.asarray(t).reshape(-1)) if t is not None else ()
    if given:
        if shape and int(np.prod(shape)) != int(np.prod(given)):
            raise ToolchainError(f"{where}: --input-shape {given} does not fit the graph's input {shape}")
        return tuple(given)
    if not shape or min(shape) < 1:
        raise ToolchainError(f"{where}: the Input node carries no shape; pass --input-shape C,H,W")
    return shape


def _chw(shape: tuple[int, ...], what: str, where: str) -> Chw:
    if len(shape) == 1:
        return (shape[0], 1, 1)
    if len(shape) == 3:
        return cast(Chw, shape)
    raise ToolchainError(f"{where}: {what} has shape {shape}; a .net layer is (C,) or (C, H, W)")


# ---------------------------------------------------------------- synapses
def _float_synapse(graph: nir.NIRGraph, path: _Path, src_shape: tuple[int, ...], where: str
                   ) -> tuple[str, np.ndarray, dict, tuple[int, ...]]:
    """(type, float weight, geometry, output NIR shape) of one path."""
    nodes = [graph.nodes[n] for n in path.nodes]
    names = " -> ".join(f"{n} ({type(v).__name__})" for n, v in zip(path.nodes, nodes, strict=True))
    pw = f"{where}: path {path.source} -> {names}"
    for n, v in zip(path.nodes, nodes, strict=True):
        bias = getattr(v, "bias", None)
        if bias is not None and np.any(_arr(bias) != 0):
            raise ToolchainError(f"{where}: node {n!r} ({type(v).__name__}) has a nonzero bias; a .net synapse has none")
    x = torch.zeros((1, *src_shape), dtype=torch.float64)
    try:
        y = x
        for n, v in zip(path.nodes, nodes, strict=True):
            y = _apply(v, y, f"{where}: node {n!r}")
    except (RuntimeError, ValueError) as e:
        raise ToolchainError(f"{pw}: does not apply to input {src_shape} ({' '.join(str(e).split())})") from None
    out = tuple(int(s) for s in y.shape[1:])
    if isinstance(nodes[-1], (nir.Linear, nir.Affine)):
        n_in = int(np.prod(src_shape))
        if len(nodes) == 1 or (len(nodes) == 2 and isinstance(nodes[0], nir.Flatten)):
            w = _arr(nodes[-1].weight)
        elif n_in > MAX_DENSE_INPUTS:
            raise ToolchainError(f"{pw}: composing {n_in} inputs into one dense synapse is too large")
        else:  # push the identity basis through the whole path: the composed matrix
            basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *src_shape)
            for v in nodes:
                basis = _apply(v, basis, where)
            w = basis.reshape(n_in, -1).T.numpy()
        if w.shape != (out[0], n_in):
            raise ToolchainError(f"{pw}: weight {w.shape} does not map {n_in} inputs")
        return "dense", w, {}, out
    if len(nodes) == 1 and isinstance(nodes[0], nir.Conv2d) and len(src_shape) == 3:
        v = nodes[0]
        w = _arr(v.weight)
        return "conv", w, dict(stride=_pair(v.stride, "stride", pw), padding=_conv_padding(v, pw),
                               dilation=_pair(v.dilation, "dilation", pw), groups=int(v.groups)), out
    if len(nodes) == 1 and isinstance(nodes[0], (nir.SumPool2d, nir.AvgPool2d)) and len(src_shape) == 3:
        v = nodes[0]
        k = _pair(v.kernel_size, "kernel_size", pw)
        w = np.full(k, 1.0 if isinstance(v, nir.SumPool2d) else 1.0 / (k[0] * k[1]))
        return "pool", w, dict(stride=_pair(v.stride, "stride", pw), padding=_pair(v.padding, "padding", pw)), out
    raise ToolchainError(f"{pw}: no .net synapse computes this path (one Conv2d, one SumPool2d/AvgPool2d, "
                         "or maps ending in Linear/Affine; put a neuron between two maps)")


def _on_grid(values: np.ndarray, step: float) -> bool:
    q = values / step
    return bool(np.all(np.abs(q - np.round(q)) < 1e-4))


def round_to_grid(r: np.ndarray) -> np.ndarray:
    """Integers nearest r (rows, n), clamped to Loihi's 8-bit mantissa [-128, 127],
    then per row the fewest entries moved one step the other way, those whose
    rounding was nearest a tie, so that the row's sum stays within half a step of
    r's: the least squared error among roundings that keep each row's sum.
    (Clamped entries are not made up for; `_quantize_layer`'s scale clamps none.)

    A row is one output's fan-in. A neuron integrates its fan-in over many
    inputs and steps, so the part of the rounding error that every input shares
    (the row's sum) grows with the count of inputs, the rest only with its root;
    kept sums cut the spikes that disagree with the float graph by 20 to 30%
    (module docstring). Each entry stays within one step of r."""
    lo, hi = WEIGHT_MIN // 2, WEIGHT_MAX // 2
    res = r - np.round(r)
    k = np.round(res.sum(1, keepdims=True))  # steps the row's sum is off (clamping aside: |k| <= n/2)
    q = np.clip(np.round(r), lo, hi)
    cols = np.arange(r.shape[1])
    for sign, room in ((1, q < hi), (-1, q > lo)):
        # rank the entries by how near they came to rounding the other way (rank 0: nearest)
        order = np.argsort(np.where(room, -sign * res, np.inf), axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(cols, order.shape), axis=1)
        q += sign * ((sign * k > 0) & (rank < np.abs(k)) & room)
    return q


def _fan_in_rows(typ: str, w: np.ndarray) -> np.ndarray:
    """w as (outputs, fan-in): a pool's one kernel serves every channel."""
    return w.reshape(1, -1) if typ == "pool" else w.reshape(w.shape[0], -1)


def _split(typ: str, w: np.ndarray, scale: float, exp: int) -> list[np.ndarray]:
    """w * scale as two synapses whose sum it is: the coarse one w's nearest
    8-bit mantissas at weight exponent `exp`, the fine one the rest at exponent 0
    (`round_to_grid`, so each output's weight sum is kept); synapse units."""
    x = _fan_in_rows(typ, w) * scale * (W_SCALE / 2)  # in grid steps at exponent 0
    coarse = np.clip(np.round(x / 2 ** exp), WEIGHT_MIN // 2, WEIGHT_MAX // 2)
    fine = round_to_grid(x - coarse * 2 ** exp)  # |rest| <= 2^(exp-1) steps: never clamped
    return [(2 * v).reshape(w.shape).astype(np.int32) for v in (coarse * 2 ** exp, fine)]


def _input_bound(weights: list[tuple[str, np.ndarray]], q: list[list[np.ndarray]]) -> float:
    """The largest |input| one step can bring one neuron (synapse units): every
    input of its positive (or negative) weights spiking at once."""
    total = 0.0
    for (typ, _), parts in zip(weights, q, strict=True):
        rows = _fan_in_rows(typ, np.sum(parts, axis=0, dtype=np.float64))
        total += max(rows.clip(min=0).sum(1).max(), -rows.clip(max=0).sum(1).min())
    return total


def _quantize_layer(name: str, node: str, weights: list[tuple[str, np.ndarray]], threshold: float | None,
                    where: str, *, split_gain: float = 0.0) -> tuple[list[list[np.ndarray]], int, LayerReport]:
    """Integer weights (per path: one synapse's, or the coarse and the fine
    synapse's where split), vThMant and the report of one layer (module
    docstring, Quantization). `split_gain` > 0: split, with the largest
    exponent whose worst-case state, `split_gain` x `_input_bound`, stays
    within Loihi's 24 bits and whose threshold fits vThMant."""
    flat = np.concatenate([w.reshape(-1) for _, w in weights])
    top = float(np.abs(flat).max()) if flat.size else 0.0
    if top == 0:
        raise ToolchainError(f"{where}: layer {name!r} has only zero weights")
    w_max, w_min = WEIGHT_MAX / W_SCALE, WEIGHT_MIN / W_SCALE
    grid = _on_grid(flat, 2 / W_SCALE) and flat.max() <= w_max + 1e-9 and flat.min() >= w_min - 1e-9
    if threshold is not None:
        if threshold <= 0:
            raise ToolchainError(f"{where}: layer {name!r} has threshold {threshold:g}; Loihi's is positive")
        grid = grid and _on_grid(np.array([threshold]), 1 / W_SCALE)
    if grid:
        scale = 1.0
    else:  # the whole mantissa range: 254 up, 256 down (an 8-bit mantissa is -128..127, times 2)
        scale = min(w_max / flat.max() if flat.max() > 0 else np.inf, w_min / flat.min() if flat.min() < 0 else np.inf)
        if threshold is not None:
            scale = min(scale, VTH_MAX / (threshold * W_SCALE))
    exp = 0
    for e in range(MAX_WEIGHT_EXP, 0, -1) if split_gain and not grid else ():
        if threshold is not None and round(threshold * scale * 2 ** e * W_SCALE) > VTH_MAX:
            continue
        q = [_split(typ, w, scale * 2 ** e, e) for typ, w in weights]
        if split_gain * _input_bound(weights, q) <= U_MAX:
            exp, scale = e, scale * 2 ** e
            break
    if not exp:
        q = [[(2 * round_to_grid(_fan_in_rows(typ, w) * scale * (W_SCALE / 2))).reshape(w.shape).astype(np.int32)]
             for typ, w in weights]
    qflat = np.concatenate([np.sum(x, axis=0).reshape(-1) for x in q]).astype(np.float64) / (W_SCALE * scale)
    err = np.abs(qflat - flat)
    v_th = READOUT_NEURON["vThMant"] if threshold is None else int(round(threshold * scale * W_SCALE))
    if threshold is not None and not 1 <= v_th <= VTH_MAX:
        raise ToolchainError(f"{where}: layer {name!r} threshold {threshold:g} quantizes to vThMant {v_th}, "
                             f"outside Loihi's 1..{VTH_MAX}")
    report = LayerReport(name=name, node=node, type="", scale=scale, max_rel=float(err.max() / top),
                         mean_rel=float(err.mean() / max(np.abs(flat).mean(), 1e-300)), threshold=threshold,
                         v_th_mant=v_th, exponent=exp)
    return q, v_th, report


def _neuron(node: Any, dt: float, where: str) -> tuple[int, int, float, float]:
    """(iDecay, vDecay, input gain g, threshold theta) of a NIR neuron node."""
    for attr in ("v_reset", "v_leak"):
        if hasattr(node, attr) and getattr(node, attr) is not None and _uniform(node, attr, where) != 0:
            raise ToolchainError(f"{where}: {attr} {_uniform(node, attr, where):g} is not 0; Loihi's neuron "
                                 "leaks toward and resets to 0")
    theta = _uniform(node, "v_threshold", where)
    if isinstance(node, nir.CubaLIF):
        a_u, a_v = dt / _uniform(node, "tau_syn", where), dt / _uniform(node, "tau_mem", where)
        g = a_u * _uniform(node, "w_in", where) * a_v * _uniform(node, "r", where)
    elif isinstance(node, nir.LIF):
        a_u, a_v = 1.0, dt / _uniform(node, "tau", where)
        g = a_v * _uniform(node, "r", where)
    else:  # IF
        a_u, a_v, g = 1.0, 0.0, _uniform(node, "r", where)
    if not (0 < a_u <= 1 + 1e-6 and 0 <= a_v <= 1 + 1e-6):  # float32 time constants: 1 within rounding
        raise ToolchainError(f"{where}: decays {a_u:g}, {a_v:g} per step at dt={dt:g} lie outside (0, 1]: "
                             "time constants shorter than dt (pass the graph's --dt)")
    i_decay, v_decay = int(round(a_u * DECAY_SCALE)), int(round(a_v * DECAY_SCALE))
    if i_decay < 1:
        raise ToolchainError(f"{where}: tau_syn {dt / a_u:g} at dt={dt:g} rounds to iDecay 0 (no current decay), "
                             "which Lava's LIF cannot run")
    if g <= 0:
        raise ToolchainError(f"{where}: input gain {g:g} must be positive")
    return i_decay, v_decay, g, theta


# ---------------------------------------------------------------- import
def import_graph(graph: nir.NIRGraph, *, where: str = "NIR graph", time_steps: int | None = None,
                 class_names: list[str] | tuple[str, ...] = (), input_shape: tuple[int, ...] | None = None,
                 dt: float | None = None, encoding: str = "poisson", precision: str = "8bit") -> ImportResult:
    """Quantize a NIR graph into a validated NetFile (module docstring); nothing
    written. `precision`: "8bit" (one synapse a path) or "split" (two, module
    docstring)."""
    if precision not in PRECISIONS:
        raise ToolchainError(f"{where}: precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    meta = graph.metadata or {}
    dt = float(dt if dt is not None else meta.get("dt", DEFAULT_DT))
    if time_steps is None:
        if "time_steps" not in meta:
            raise ToolchainError(f"{where}: the graph's metadata carries no time steps; pass --time-steps")
        time_steps = int(meta["time_steps"])
    inp, out, neurons, paths = _structure(graph, where)
    shape_in = _input_shape(graph, inp, input_shape, where)
    nir_shape: dict[str, tuple[int, ...]] = {inp: shape_in}
    index = {inp: 0}
    lags = {inp: 0}
    layers: list[Layer] = []
    reports: list[LayerReport] = []
    lag_of: dict[str, int] = {}
    notes: list[str] = []

    def synapses_into(target: str) -> tuple[list[tuple[int, str, np.ndarray, dict]], tuple[int, ...], int]:
        rows, shape = [], None
        for p in paths[target]:
            typ, w, geo, o = _float_synapse(graph, p, nir_shape[p.source], where)
            if shape is not None and o != shape:
                raise ToolchainError(f"{where}: inputs of {target!r} have shapes {shape} and {o}")
            shape = o
            rows.append((index[p.source], typ, w, geo))
        assert shape is not None
        lag = max(lags[p.source] + 1 for p in paths[target])
        return rows, shape, lag

    def add_layer(name: str, node: str, rows, shape, lag, neuron: Neuron | None, threshold: float | None) -> None:
        delays = [lag - (lags[inp] if src == 0 else lag_of[layers[src - 1].name]) - 1 for src, *_ in rows]
        gain = 0.0
        if precision == "split":
            # a weight exponent: Lava's Conv takes any integer weight; its Dense and Sparse clip them to 8 bits
            lava = {kind(typ).lava_delayed_process if d else kind(typ).lava_process
                    for (_, typ, _, _), d in zip(rows, delays, strict=True)}
            if lava != {"Conv"}:
                notes.append(f"layer {name!r} not split: its synapses run as Lava's {', '.join(sorted(lava))}, "
                             "whose weights have 8 bits")
            else:  # |state| per unit of one step's input: u sums a geometric series; the readout's v sums u
                gain = (1 << INPUT_SHIFT) * (DECAY_SCALE / neuron.iDecay if neuron else time_steps + lag)
        q, v_th, rep = _quantize_layer(name, node, [(typ, w) for _, typ, w, _ in rows], threshold, where,
                                       split_gain=gain)
        if gain and not rep.exponent and rep.max_rel:  # (none needed where the 8-bit grid is exact)
            notes.append(f"layer {name!r} not split: no weight exponent keeps its worst-case state within 24 bits")
        syns, sources = [], []
        for (src, typ, _, geo), parts, d in zip(rows, q, delays, strict=True):
            syns += [Synapse(typ, wq, delay=d, **geo) for wq in parts]
            sources += [src] * len(parts)
        nrn = neuron or Neuron(READOUT_NEURON["iDecay"], READOUT_NEURON["vDecay"], READOUT_NEURON["vThMant"])
        if neuron is not None:
            nrn.vThMant = v_th
        layer_type = syns[0].type if len(syns) == 1 else "add"
        rep.type = rows[0][1] if len(rows) == 1 else "add"  # the paths' map; the report says where it is split
        layers.append(Layer(name, layer_type, _chw(shape, f"node {node!r}", where), sources, syns, nrn))
        reports.append(rep)
        lag_of[name] = lag

    for name in neurons:
        rows, shape, lag = synapses_into(name)
        i_decay, v_decay, g, theta = _neuron(graph.nodes[name], dt, f"{where}: node {name!r}")
        add_layer(name, name, rows, shape, lag, Neuron(i_decay, v_decay, 0), theta / g)
        nir_shape[name], index[name], lags[name] = shape, len(layers), lag
    spiking = any(not p.nodes for p in paths[out])
    if spiking:
        if len(paths[out]) != 1:
            raise ToolchainError(f"{where}: the Output reads a neuron's spikes and other paths; only one")
        src = paths[out][0].source
        n = int(np.prod(nir_shape[src]))
        if len(nir_shape[src]) == 1:
            rows = [(index[src], "dense", np.eye(n), {})]
        else:
            c = nir_shape[src][0]
            rows = [(index[src], "conv", np.eye(c).reshape(c, c, 1, 1), {})]
        add_layer(READOUT_NAME, out, rows, nir_shape[src], lags[src] + 1, None, None)
    else:
        rows, shape, lag = synapses_into(out)
        add_layer(READOUT_NAME if READOUT_NAME not in index else f"{READOUT_NAME}_", out, rows, shape, lag,
                  None, None)
    if class_names and len(class_names) != layers[-1].shape[0]:
        raise ToolchainError(f"{where}: {len(class_names)} class names for {layers[-1].shape[0]} readout channels")
    split = any(r.exponent for r in reports)
    net = NetFile(input_shape=_chw(shape_in, "the input", where), time_steps=int(time_steps), layers=layers,
                  encoding=encoding, class_names=list(class_names),
                  version=netfile.EXPONENT_VERSION if split else netfile.VERSION)
    try:
        netfile.validate(net, where)
    except ToolchainError as e:
        raise ToolchainError(" ".join(str(e).split())) from None
    if any(s.delay for layer in layers for s in layer.synapses):
        notes.append("paths of different depth meet: shorter ones got .net delays")
    return ImportResult(net=net, graph=graph, dt=dt, layers=reports, lags=lag_of,
                        readout_scale=reports[-1].scale, spiking_output=spiking, nir_input_shape=shape_in,
                        notes=notes)


def import_nir(path: str | os.PathLike, out: str | os.PathLike | None = None, **options) -> ImportResult:
    """Read the NIR file at `path`, quantize it (`import_graph`'s options) and,
    when `out` is given, write the validated `.net` there. Errors are one line
    naming the file."""
    path = Path(path)
    graph = read_graph(path)
    result = import_graph(graph, where=str(path), **options)
    if out is not None:
        netfile.write(Path(out), result.net)
    return result


# ---------------------------------------------------------------- the float reference
def simulate(graph: nir.NIRGraph, frames: torch.Tensor, *, dt: float, steps: int | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the float NIR graph (float64, forward Euler at `dt`, spike when v >
    v_threshold, then v = v_reset; values pass within a step) on frames
    (N, *input as the graph shapes it, T) for `steps` steps (default T; zeros after T).
    Returns the Output summed over the steps, (N, ...), and each neuron
    node's spikes {name: (N, ..., steps) bool}."""
    where = "NIR graph"
    inp, out, neurons, _ = _structure(graph, where)
    preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for a, b in graph.edges:
        preds[b].append(a)
    order = list(graphlib.TopologicalSorter(preds).static_order())
    n, t_in = frames.shape[0], frames.shape[-1]
    steps = t_in if steps is None else steps
    shape_in = tuple(frames.shape[1:-1])
    params = {}
    for name in neurons:
        node = graph.nodes[name]
        p = {k: torch.as_tensor(_arr(getattr(node, k))) for k in ("r", "v_threshold", "v_reset", "tau", "tau_syn",
                                                                   "tau_mem", "w_in", "v_leak")
             if getattr(node, k, None) is not None}
        params[name] = p
    state: dict[str, dict[str, torch.Tensor]] = {}
    spikes: dict[str, list[torch.Tensor]] = {k: [] for k in neurons}
    total: torch.Tensor | None = None
    x = frames.to(torch.float64)
    for t in range(steps):
        values: dict[str, torch.Tensor] = {}
        for name in order:
            node = graph.nodes[name]
            if name == inp:
                xt = x[..., t] if t < t_in else torch.zeros_like(x[..., 0])
                values[name] = xt.reshape(n, *shape_in)
                continue
            s = sum(values[p] for p in preds[name])
            assert isinstance(s, torch.Tensor)
            if isinstance(node, SYNAPSE_NODES):
                values[name] = _apply(node, s, f"{where}: node {name!r}")
            elif isinstance(node, NEURON_NODES):
                p = params[name]
                st = state.setdefault(name, {"i": torch.zeros_like(s), "v": torch.zeros_like(s)})
                leak = p.get("v_leak", torch.zeros(()))
                if isinstance(node, nir.CubaLIF):
                    st["i"] = st["i"] + dt / p["tau_syn"] * (-st["i"] + p["w_in"] * s)
                    st["v"] = st["v"] + dt / p["tau_mem"] * (leak - st["v"] + p["r"] * st["i"])
                elif isinstance(node, nir.LIF):
                    st["v"] = st["v"] + dt / p["tau"] * (leak - st["v"] + p["r"] * s)
                else:
                    st["v"] = st["v"] + p["r"] * s
                z = st["v"] > p["v_threshold"]
                st["v"] = torch.where(z, p["v_reset"].expand_as(st["v"]), st["v"])
                values[name] = z.to(torch.float64)
                spikes[name].append(z)
            else:  # the Output
                values[name] = s
                total = s.clone() if total is None else total + s
    assert total is not None
    return total, {k: torch.stack(v, -1) for k, v in spikes.items()}


def agreement(result: ImportResult, frames: torch.Tensor, *, emulated=None) -> dict:
    """The float graph (`simulate`) against the emulator on frames (N, C, H, W, T) of
    0/1 spikes: per-layer spike agreement (NIR step t against Lava step t + L_i,
    t < T), the readout's argmax agreement per position and its largest
    difference relative to the largest |readout|."""
    from toolchain.core.loihi import readout_value

    from . import emulator
    net, graph = result.net, result.graph
    t = frames.shape[-1]
    ref = emulated if emulated is not None else emulator.run(net, frames, device="cpu")
    x = frames.reshape(frames.shape[0], *result.nir_input_shape, t)
    total, spikes = simulate(graph, x, dt=result.dt, steps=t)
    layers = {}
    for name, s in spikes.items():
        lag = result.lags[name]
        emu = ref.spikes[name][..., lag:lag + t].reshape(s.shape)
        layers[name] = float((emu == s).double().mean())
    expected = total / t * result.readout_scale
    mine = readout_value(ref.voltage.double(), t).reshape(expected.shape)
    k = expected.shape[1]
    cls_f = expected.reshape(expected.shape[0], k, -1).argmax(1)
    cls_e = mine.reshape(mine.shape[0], k, -1).argmax(1)
    top = float(expected.abs().max())
    return {"layers": layers, "classes": float((cls_f == cls_e).double().mean()),
            "readout_rel": float((mine - expected).abs().max()) / top if top else float("nan"),
            "spikes": {name: int(s.sum()) for name, s in spikes.items()}}


def format_report(result: ImportResult, agree: dict | None = None) -> str:
    lines = [f"{'layer':<14}{'node':<12}{'type':<7}{'w exp':>6}{'scale':>9}{'w max rel':>11}{'w mean rel':>11}"
             f"{'threshold':>11}{'vThMant':>9}" + ("  spike agreement" if agree else "")]
    for r in result.layers:
        th = "-" if r.threshold is None else f"{r.threshold:.4g}"
        exp = f"{r.exponent}+0" if r.exponent else "0"
        row = (f"{r.name:<14}{r.node:<12}{r.type:<7}{exp:>6}{r.scale:>9.4g}{r.max_rel:>11.3%}{r.mean_rel:>11.3%}"
               f"{th:>11}{r.v_th_mant:>9}")
        if agree and r.name in agree["layers"]:
            row += f"  {agree['layers'][r.name]:.3%} ({agree['spikes'][r.name]} float spikes)"
        lines.append(row)
    if agree:
        lines.append(f"readout: argmax agreement {agree['classes']:.3%}, max |difference| "
                     f"{agree['readout_rel']:.3%} of max |readout| (readout = {result.readout_scale:.4g} x the "
                     "float graph's mean output)")
    if any(r.exponent for r in result.layers):
        lines.append("w exp e+0: each path two synapses, 8-bit mantissas at weight exponents e and 0 (split weights)")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)
