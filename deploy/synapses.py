"""The synapse types a `.net` layer can hold, one registry entry each.

A synapse is an integer linear map from a source layer's spikes (C, H, W) to
a layer's input (C', H', W'). Each type says, in one place:
- `fields`: what the `.net` stores beside `weight` (slayer's names);
- `check`: the shape rule (does this weight map that source onto that layer?);
- `op`: the map itself on (B, C, H, W) torch tensors (the emulator, the ONNX
  step graph and the export check all call it);
- `fan_in`: a bound on one output per step, for the float precision of `op`
  and the readout's overflow warning;
- `lava` and `lava_process`: the Lava connection process that computes it and
  its class name (`lava_delayed`: the one for a synapse with a delay,
  `DelaySparse`/`DelayDense`);
- `nir`: its NIR nodes (None where NIR has no such map);
- `fanout` and `targets`: how many (output neuron, weight) pairs one source
  neuron reaches, for synaptic-operation counts and synaptic memory;
- `clamp24`: whether Lava clamps the connection's output to signed 24 bits.

Adding a synapse type is adding one `SynapseKind` here and one test.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from toolchain.core.errors import ToolchainError
from toolchain.core.loihi import W_SCALE


@dataclass
class Synapse:
    """One connection: an integer linear map from a source layer's spikes.

    Spatial pairs are (y, x); weights are Loihi's 8-bit synapse integers."""

    type: str
    weight: np.ndarray
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    delay: int = 0  # steps added to the connection's one (Loihi: 0..62, as netx reads it)

    @property
    def kernel(self) -> tuple[int, int]:
        kx, ky = (int(k) for k in self.weight.shape[-2:])
        return kx, ky

    @property
    def kind(self) -> SynapseKind:
        return kind(self.type)

    @property
    def clamps24(self) -> bool:
        """Whether Lava clamps this connection's output to signed 24 bits: its Conv
        does; a delayed synapse runs as DelaySparse, which does not."""
        return self.kind.clamp24 and not self.delay

    def lava(self, src: tuple, out: tuple):
        """The Lava connection process: (process, does it read and write flat vectors?)."""
        return (self.kind.lava_delayed if self.delay else self.kind.lava)(self, src, out)

    @property
    def lava_process(self) -> str:
        """The class name of the stock Lava process `lava` builds."""
        return self.kind.lava_delayed_process if self.delay else self.kind.lava_process


# ---------------------------------------------------------------- shapes
def conv_out(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def convT_out(n: int, k: int, s: int, p: int, d: int) -> int:
    """Smallest transposed-conv output; up to s-1 more rows are allowed."""
    return (n - 1) * s - 2 * p + d * (k - 1) + 1


def _spatial(syn, src, out):
    return list(zip(src[1:], out[1:], syn.kernel, syn.stride, syn.padding, syn.dilation, strict=True))


def _check_geometry(syn: Synapse, src, out, bad) -> None:
    if syn.weight.ndim != (2 if syn.type == "pool" else 4):
        bad(f"{syn.type} weight has {syn.weight.ndim} dimensions")
    for name in ("stride", "dilation"):
        if min(getattr(syn, name)) < 1:
            bad(f"{name} {getattr(syn, name)} must be >= 1")
    if min(syn.padding) < 0:
        bad(f"padding {syn.padding} must be >= 0")
    g = syn.groups
    if g < 1 or src[0] % g or out[0] % g:
        bad(f"groups {g} does not divide the channels")


def _check_conv(syn, src, out, bad):
    _check_geometry(syn, src, out, bad)
    if syn.weight.shape[:2] != (out[0], src[0] // syn.groups):
        bad(f"conv weight shape {syn.weight.shape} does not fit")
    if any(o != conv_out(i, k, s, p, d) for i, o, k, s, p, d in _spatial(syn, src, out)):
        bad("conv output size does not follow from kernel, stride, padding and dilation")


def _check_pool(syn, src, out, bad):
    _check_geometry(syn, src, out, bad)
    if src[0] != out[0]:
        bad("pooling keeps the channel count")
    if any(not conv_out(i, k, s, p, d) <= o <= conv_out(i + k - 1, k, s, p, d)
           for i, o, k, s, p, d in _spatial(syn, src, out)):
        bad("pool output size does not follow from kernel, stride and padding")


def _check_convT(syn, src, out, bad):
    _check_geometry(syn, src, out, bad)
    if syn.weight.shape[:2] != (src[0], out[0] // syn.groups):
        bad(f"convT weight shape {syn.weight.shape} does not fit")
    if any(not convT_out(i, k, s, p, d) <= o < convT_out(i, k, s, p, d) + s
           for i, o, k, s, p, d in _spatial(syn, src, out)):
        bad("convT output size does not follow from kernel, stride and padding")


def _check_dense(syn, src, out, bad):
    ci, hi, wi = src
    if syn.weight.ndim != 2 or syn.weight.shape != (out[0], ci * hi * wi) or tuple(out[1:]) != (1, 1):
        bad(f"dense weight shape {syn.weight.shape} does not fit")


# ---------------------------------------------------------------- the maps
def _op_conv(syn, x, out, w):
    return F.conv2d(x, w, stride=syn.stride, padding=syn.padding, dilation=syn.dilation, groups=syn.groups)


def pool_edge_pad(syn, shape_in, out):
    """Zeros to add below and right so that windows past the input edge read zeros."""
    return [max(0, (o - 1) * s + d * (k - 1) + 1 - (n + 2 * p))
            for o, s, d, k, n, p in zip(out[1:], syn.stride, syn.dilation, syn.kernel, shape_in, syn.padding, strict=True)]


def _op_pool(syn, x, out, w):
    b, c, h, wi = x.shape
    extra_h, extra_w = pool_edge_pad(syn, (h, wi), out)
    x = F.pad(x.reshape(b * c, 1, h, wi), (0, extra_w, 0, extra_h))
    y = F.conv2d(x, w[None, None], stride=syn.stride, padding=syn.padding, dilation=syn.dilation)
    return y[..., :out[1], :out[2]].reshape(b, c, out[1], out[2])


def _convT_output_padding(syn, shape_in, out):
    return tuple(o - convT_out(n, k, s, p, d) for n, o, k, s, p, d in
                 zip(shape_in, out[1:], syn.kernel, syn.stride, syn.padding, syn.dilation, strict=True))


def _op_convT(syn, x, out, w):
    return F.conv_transpose2d(x, w, stride=syn.stride, padding=syn.padding, groups=syn.groups,
                              output_padding=_convT_output_padding(syn, x.shape[2:], out), dilation=syn.dilation)


def _op_dense(syn, x, out, w):
    return (x.reshape(x.shape[0], -1) @ w.T).reshape(x.shape[0], out[0], 1, 1)


# ---------------------------------------------------------------- fan-in
def _fan_in_per_output(w: np.ndarray) -> int:
    """Each output reads one row of the weight (out, ...)."""
    return int(w.reshape(w.shape[0], -1).sum(axis=1).max()) if w.size else 0


def _fan_in_all(w: np.ndarray) -> int:
    """Bounded by every weight at once (outputs may share taps)."""
    return int(w.sum())


# ---------------------------------------------------------------- fan-out
def _fanout_by_gradient(op):
    """(Hs, Ws): for each source pixel, how many (output position, kernel tap)
    pairs read it, for one source/output channel pair: the gradient of the sum
    of the map's output over an all-ones input and all-ones kernel."""

    def fanout(syn, src, out):
        x = torch.ones((1, 1, *src[1:]), dtype=torch.float64, requires_grad=True)
        one = Synapse(syn.type, np.ones((1, 1, *syn.kernel)) if syn.type != "pool" else np.ones(syn.kernel),
                      syn.stride, syn.padding, syn.dilation)
        y = op(one, x, (1, *out[1:]), torch.ones(one.weight.shape, dtype=torch.float64))
        if tuple(y.shape[-2:]) != tuple(out[1:]):
            raise ValueError(f"{syn.type} synapse gives {tuple(y.shape[-2:])}, layer is {tuple(out[1:])}")
        (grad,) = torch.autograd.grad(y.sum(), x)
        return grad[0, 0].numpy()
    return fanout


# ---------------------------------------------------------------- Lava
def _flat_index(c, y, x, shape):
    """Index of neuron (c, y, x) of a (C, H, W) layer once Lava flattens (W, H, C)."""
    ch, h, _ = shape
    return (x * h + y) * ch + c


def _sparse(rows, cols, vals, src, out):
    from scipy.sparse import csr_matrix
    return csr_matrix((vals.astype(np.int32), (rows, cols)), shape=(int(np.prod(out)), int(np.prod(src))))


def _window_matrix(syn: Synapse, co, ci, yo, xo, ky, kx, vals, src: tuple, out: tuple):
    """Output neuron (co, yo, xo) reads input (ci, yi, xi) through tap (ky, kx)
    of a strided, padded, dilated window: the taps that land inside the input
    with a nonzero weight, as a sparse matrix."""
    yi = yo * syn.stride[0] - syn.padding[0] + ky * syn.dilation[0]
    xi = xo * syn.stride[1] - syn.padding[1] + kx * syn.dilation[1]
    ok = (yi >= 0) & (yi < src[1]) & (xi >= 0) & (xi < src[2]) & (vals != 0)
    return _sparse(_flat_index(co[ok], yo[ok], xo[ok], out), _flat_index(ci[ok], yi[ok], xi[ok], src),
                   vals[ok], src, out)


def pool_matrix(syn: Synapse, src: tuple, out: tuple):
    """Per-channel sum pooling as a sparse (n_out, n_in) matrix in Lava's flat order."""
    c = src[0]
    _, ho, wo = out
    kh, kw = syn.kernel
    cc, yo, xo, ky, kx = np.meshgrid(np.arange(c), np.arange(ho), np.arange(wo),
                                     np.arange(kh), np.arange(kw), indexing="ij")
    return _window_matrix(syn, cc, cc, yo, xo, ky, kx, np.asarray(syn.weight)[ky, kx], src, out)


def conv_matrix(syn: Synapse, src: tuple, out: tuple):
    """Convolution as a sparse (n_out, n_in) matrix in Lava's flat order."""
    ci_n = src[0]
    co_n, ho, wo = out
    w = np.asarray(syn.weight)  # (out, in/groups, kh, kw)
    cig, cog = ci_n // syn.groups, co_n // syn.groups
    co, cil, yo, xo, ky, kx = np.meshgrid(np.arange(co_n), np.arange(cig), np.arange(ho), np.arange(wo),
                                          np.arange(w.shape[2]), np.arange(w.shape[3]), indexing="ij")
    ci = (co // cog) * cig + cil
    return _window_matrix(syn, co, ci, yo, xo, ky, kx, w[co, cil, ky, kx], src, out)


def convT_matrix(syn: Synapse, src: tuple, out: tuple):
    """Transposed convolution as a sparse (n_out, n_in) matrix in Lava's flat order."""
    ci_n, hi, wi = src
    co_n, ho, wo = out
    w = np.asarray(syn.weight)  # (in, out/groups, kh, kw)
    cig, cog = ci_n // syn.groups, co_n // syn.groups
    ci, col, yi, xi, ky, kx = np.meshgrid(np.arange(ci_n), np.arange(cog), np.arange(hi),
                                          np.arange(wi), np.arange(w.shape[2]),
                                          np.arange(w.shape[3]), indexing="ij")
    co = (ci // cig) * cog + col
    yo = yi * syn.stride[0] - syn.padding[0] + ky * syn.dilation[0]
    xo = xi * syn.stride[1] - syn.padding[1] + kx * syn.dilation[1]
    vals = w[ci, col, ky, kx]
    ok = (yo >= 0) & (yo < ho) & (xo >= 0) & (xo < wo) & (vals != 0)
    return _sparse(_flat_index(co[ok], yo[ok], xo[ok], out), _flat_index(ci[ok], yi[ok], xi[ok], src),
                   vals[ok], src, out)


def lava_shape(shape: tuple) -> tuple:
    """slayer (C, H, W) -> Lava (x, y, channel)."""
    c, h, w = shape
    return (w, h, c)


def lava_conv_weight(syn: Synapse) -> np.ndarray:
    """A conv synapse's weight as Lava's Conv takes it: netx's layout, spatially
    flipped, (out, x, y, in) int32 (Lava's conv flips it back)."""
    w = np.asarray(syn.weight)[:, :, ::-1, ::-1].transpose(0, 3, 2, 1).astype(np.int32)
    return np.ascontiguousarray(w)


def _lava_conv(syn, src, out):
    from lava.proc.conv.process import Conv
    proc = Conv(weight=lava_conv_weight(syn), input_shape=lava_shape(src), stride=syn.stride[::-1],
                padding=syn.padding[::-1], dilation=syn.dilation[::-1], groups=syn.groups)
    if tuple(proc.a_out.shape) != lava_shape(out):
        raise RuntimeError(f"Lava Conv gives {proc.a_out.shape}, the net says {out}")
    return proc, False


def _dense_weight(syn, src) -> np.ndarray:
    c, h, w = src
    # columns from (C, H, W) order into Lava's flattened (W, H, C) order
    weight = np.asarray(syn.weight).reshape(-1, c, h, w).transpose(0, 3, 2, 1).reshape(len(syn.weight), -1)
    return weight.astype(np.int32)


def _lava_dense(syn, src, out):
    from lava.proc.dense.process import Dense
    return Dense(weights=_dense_weight(syn, src)), True


def _lava_sparse(matrix):
    def build(syn, src, out):
        from lava.proc.sparse.process import Sparse
        return Sparse(weights=matrix(syn, src, out)), True
    return build


def _lava_delay_sparse(matrix):
    """The synapse as Lava's `DelaySparse`: the same flat matrix, every entry delayed."""
    def build(syn, src, out):
        from lava.proc.sparse.process import DelaySparse
        weights = matrix(syn, src, out)
        delays = weights.astype(int)  # Lava checks for the platform's int dtype
        delays.data[:] = int(syn.delay)
        return DelaySparse(weights=weights, delays=delays, max_delay=int(syn.delay)), True
    return build


def _lava_delay_dense(syn, src, out):
    from lava.proc.dense.process import DelayDense
    weights = _dense_weight(syn, src)
    return DelayDense(weights=weights, delays=np.full(weights.shape, int(syn.delay), dtype=int),
                      max_delay=int(syn.delay)), True


# ---------------------------------------------------------------- NIR
# Each builder gives {node name: NIR node} in chain order, weights as floats
# (the 8-bit integer / 64); `nir` is imported here only, when a graph is built.
def _nir_pair(v) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def _nir_float(w: np.ndarray) -> np.ndarray:
    return (np.asarray(w, dtype=np.float32) / W_SCALE).astype(np.float32)


def _ungrouped(w: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv weight (out, in/groups, kh, kw) as the block-diagonal
    (out, in, kh, kw) of the same map: nir 1.0.8's Conv2d types its input
    with weight.shape[1] channels, so grouped convs fail its type check."""
    if groups == 1:
        return w
    co, cig = w.shape[:2]
    full = np.zeros((co, cig * groups, *w.shape[2:]), w.dtype)
    for o in range(co):
        g = o // (co // groups)
        full[o, g * cig:(g + 1) * cig] = w[o]
    return full


def _nir_conv(syn: Synapse, src: tuple, out: tuple, name: str) -> dict:
    import nir
    w = _ungrouped(_nir_float(syn.weight), syn.groups)
    return {name: nir.Conv2d(input_shape=tuple(src[1:]), weight=w, stride=_nir_pair(syn.stride),
                             padding=_nir_pair(syn.padding), dilation=_nir_pair(syn.dilation), groups=1,
                             bias=np.zeros(w.shape[0], np.float32))}


def _nir_dense(syn: Synapse, src: tuple, out: tuple, name: str) -> dict:
    import nir
    nodes = {}
    if len(src) > 1:
        nodes[f"{name}.flatten"] = nir.Flatten(input_type={"input": np.array(src)}, start_dim=0)
    nodes[name] = nir.Linear(weight=_nir_float(syn.weight))
    return nodes


def _nir_pool(syn: Synapse, src: tuple, out: tuple, name: str, *, as_conv: bool = False) -> dict:
    """SumPool2d, then a Scale by the kernel's weight unless it is 1; unequal
    kernel weights, dilation or `as_conv` (the portable graph's form: NIR
    consumers import no Scale, snntorch no SumPool2d): the per-channel Conv2d
    it is, the kernel's weights folded in."""
    import nir
    k = np.asarray(syn.weight)
    spatial = zip(src[1:], syn.kernel, syn.stride, syn.padding, syn.dilation, strict=True)
    if tuple(out[1:]) != tuple(conv_out(n, kk, s, p, d) for n, kk, s, p, d in spatial):
        raise ToolchainError(f"{name}: pool windows reach past the input edge (output {tuple(out[1:])} "
                             f"from input {tuple(src[1:])}); NIR pooling has no such edge rule")
    if as_conv or np.any(k != k.flat[0]) or tuple(syn.dilation) != (1, 1):
        depthwise = Synapse("conv", np.broadcast_to(k, (src[0], 1, *k.shape)).copy(), syn.stride,
                            syn.padding, syn.dilation, groups=src[0])
        return _nir_conv(depthwise, src, out, name)
    nodes = {name: nir.SumPool2d(kernel_size=_nir_pair(syn.kernel), stride=_nir_pair(syn.stride),
                                 padding=_nir_pair(syn.padding))}
    gain = float(k.flat[0]) / W_SCALE
    if gain != 1.0:
        nodes[f"{name}.scale"] = nir.Scale(scale=np.full(out, gain, np.float32))
    return nodes


# ---------------------------------------------------------------- the registry
@dataclass(frozen=True)
class SynapseKind:
    name: str
    label: str  # what reports call it
    fields: tuple[str, ...]
    check: Callable  # (syn, src (C,H,W), out (C,H,W), bad(msg)) -> None
    op: Callable  # (syn, x (B,C,H,W), out (C,H,W), weight tensor) -> (B, C', H', W')
    fan_in: Callable  # (|weight| int64) -> bound on |one output| per step when every input spikes
    fanout: Callable  # (syn, src, out) -> (Hs, Ws) output positions x taps per source pixel
    targets: Callable  # (syn, out) -> output channels one source channel reaches per tap
    positions: Callable  # (src, out) -> places one stored kernel weight is used (shared kernels)
    lava: Callable  # (syn, src, out) -> (Lava process, reads/writes flat vectors?)
    lava_process: str  # the class `lava` builds
    lava_delayed: Callable  # as `lava`, for a synapse with a delay
    lava_delayed_process: str
    nir: Callable | None  # (syn, src, out, node name) -> {name: NIR node}, chain order; None: no NIR form
    nir_vector: bool = False  # NIR's node is Linear: the layer it feeds is (C,) there, only it reads (C,)
    clamp24: bool = False  # Lava's Conv clamps its output to signed 24 bits


_GEOMETRY = ("kernelSize", "stride", "padding", "dilation")
_KINDS = {k.name: k for k in (
    SynapseKind("conv", "conv", ("inChannels", "outChannels", "groups") + _GEOMETRY, _check_conv, _op_conv,
                fan_in=_fan_in_per_output, fanout=_fanout_by_gradient(_op_conv),
                targets=lambda syn, out: out[0] // syn.groups, positions=lambda src, out: out[1] * out[2],
                lava=_lava_conv, lava_process="Conv",
                lava_delayed=_lava_delay_sparse(conv_matrix), lava_delayed_process="DelaySparse",
                nir=_nir_conv, clamp24=True),
    SynapseKind("convT", "transposed conv", ("inChannels", "outChannels", "groups") + _GEOMETRY, _check_convT,
                _op_convT, fan_in=_fan_in_all, fanout=_fanout_by_gradient(_op_convT),
                targets=lambda syn, out: out[0] // syn.groups, positions=lambda src, out: src[1] * src[2],
                lava=_lava_sparse(convT_matrix), lava_process="Sparse",
                lava_delayed=_lava_delay_sparse(convT_matrix), lava_delayed_process="DelaySparse",
                nir=None),  # nir has no transposed convolution
    SynapseKind("pool", "pooling", _GEOMETRY, _check_pool, _op_pool,
                fan_in=_fan_in_all, fanout=_fanout_by_gradient(_op_pool),
                targets=lambda syn, out: 1, positions=lambda src, out: out[0] * out[1] * out[2],
                lava=_lava_sparse(pool_matrix), lava_process="Sparse",
                lava_delayed=_lava_delay_sparse(pool_matrix), lava_delayed_process="DelaySparse",
                nir=_nir_pool),
    SynapseKind("dense", "dense", ("inFeatures", "outFeatures"), _check_dense, _op_dense,
                fan_in=_fan_in_per_output, fanout=lambda syn, src, out: np.ones(src[1:]),
                targets=lambda syn, out: int(syn.weight.shape[0]), positions=lambda src, out: 1,
                lava=_lava_dense, lava_process="Dense", lava_delayed=_lava_delay_dense,
                lava_delayed_process="DelayDense", nir=_nir_dense, nir_vector=True),
)}
TYPES = tuple(_KINDS)


def kind(name: str) -> SynapseKind:
    if name not in _KINDS:
        raise ToolchainError(f"unknown synapse type {name!r} (known: {', '.join(TYPES)})")
    return _KINDS[name]


def check_shape(syn: Synapse, src: tuple, out: tuple, where: str) -> None:
    """The synapse maps a `src` (C, H, W) array onto `out`; raise if it cannot."""
    def bad(msg):
        raise ToolchainError(f"{where}: {msg} (input {tuple(src)}, output {tuple(out)})")
    kind(syn.type).check(syn, tuple(src), tuple(out), bad)


def fan_in_bound(syn: Synapse) -> int:
    """An upper bound on |one output| per step when every input spikes."""
    return kind(syn.type).fan_in(np.abs(np.asarray(syn.weight, dtype=np.int64)))


def apply(syn: Synapse, x: torch.Tensor, out_shape: tuple[int, int, int],
          weight: torch.Tensor | None = None, *, exact: bool = True) -> torch.Tensor:
    """The integer map of one synapse on (B, C, H, W) spikes -> (B, C', H', W').

    Float arithmetic on integers: float32 holds every partial sum exactly while
    the worst case stays below 2^24 (with a margin), float64 beyond. The result
    is rounded back to int64, or with exact=False left as the float tensor
    holding those integers (the caller rounds)."""
    dtype = torch.float32 if fan_in_bound(syn) < (1 << 22) else torch.float64
    w = torch.as_tensor(syn.weight, device=x.device) if weight is None else weight
    y = kind(syn.type).op(syn, x.to(dtype), tuple(out_shape), w.to(dtype))
    return torch.round(y).to(torch.int64) if exact else y


def connections(syn: Synapse, src: tuple, out: tuple) -> int:
    """Synapses of one connection as the hardware stores them (no kernel sharing)."""
    k = kind(syn.type)
    return int(round(src[0] * k.fanout(syn, src, out).sum() * k.targets(syn, out)))


def synops(syn: Synapse, counts: np.ndarray, out: tuple) -> float:
    """Synaptic operations caused by `counts` (Cs, Hs, Ws) spikes of the source."""
    k = kind(syn.type)
    return float((counts.sum(axis=0) * k.fanout(syn, counts.shape, out)).sum()) * k.targets(syn, out)


def field_values(syn: Synapse) -> dict[str, object]:
    """The `.net` fields of a synapse beside its weight (slayer's names)."""
    w = syn.weight
    values = dict(kernelSize=np.array(syn.kernel), stride=np.array(syn.stride), padding=np.array(syn.padding),
                  dilation=np.array(syn.dilation), groups=syn.groups, inFeatures=w.shape[-1],
                  outFeatures=w.shape[0])
    if syn.type == "conv":
        values.update(inChannels=w.shape[1] * syn.groups, outChannels=w.shape[0])
    elif syn.type == "convT":
        values.update(inChannels=w.shape[0], outChannels=w.shape[1] * syn.groups)
    return {k: values[k] for k in kind(syn.type).fields}
