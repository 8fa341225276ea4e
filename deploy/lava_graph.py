"""Build and run a `.net` as a Lava process graph (the reference execution).

Every layer is a `lava.proc.lif.process.LIF` fed by one connection process per
synapse, the same processes netx builds for the layers it knows:
- conv -> `lava.proc.conv.process.Conv` (weights laid out as netx lays them);
- dense -> `lava.proc.dense.process.Dense`;
- pool, convT -> `lava.proc.sparse.process.Sparse`: a fixed linear map from the
  flattened source to the flattened layer, exact and shape-agnostic.
Several connections into one LIF are summed at its `a_in` (additive skips).
Input spikes come from a `RingBuffer` source, hidden spikes go to `RingBuffer`
sinks, and the readout integrator's voltage is read after T+1 steps.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix

from .netfile import Layer, NetFile, Synapse


# ------------------------------------------------------------ data order
def to_lava(x: np.ndarray) -> np.ndarray:
    """slayer (C, H, W[, T]) -> Lava (x, y, channel[, T]) = (W, H, C[, T]).

    The one place the two orders meet; `from_lava` is its inverse.
    """
    return np.ascontiguousarray(x.transpose((2, 1, 0) + tuple(range(3, x.ndim))))


def from_lava(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose((2, 1, 0) + tuple(range(3, x.ndim))))


def _flat_index(c, y, x, shape):
    """Index of neuron (c, y, x) of a (C, H, W) layer once Lava flattens (W, H, C)."""
    ch, h, _ = shape
    return (x * h + y) * ch + c


# ------------------------------------------------------------ linear maps
def pool_matrix(syn: Synapse, src: tuple, out: tuple) -> csr_matrix:
    """Per-channel sum pooling as a sparse (n_out, n_in) matrix in Lava's flat order."""
    c, hi, wi = src
    _, ho, wo = out
    kh, kw = syn.kernel
    cc, yo, xo, ky, kx = np.meshgrid(np.arange(c), np.arange(ho), np.arange(wo),
                                     np.arange(kh), np.arange(kw), indexing="ij")
    yi = yo * syn.stride[0] - syn.padding[0] + ky * syn.dilation[0]
    xi = xo * syn.stride[1] - syn.padding[1] + kx * syn.dilation[1]
    ok = (yi >= 0) & (yi < hi) & (xi >= 0) & (xi < wi)
    vals = np.asarray(syn.weight)[ky, kx]
    ok &= vals != 0
    rows = _flat_index(cc[ok], yo[ok], xo[ok], out)
    cols = _flat_index(cc[ok], yi[ok], xi[ok], src)
    return csr_matrix((vals[ok].astype(np.int32), (rows, cols)),
                      shape=(int(np.prod(out)), int(np.prod(src))))


def convT_matrix(syn: Synapse, src: tuple, out: tuple) -> csr_matrix:
    """Transposed convolution as a sparse (n_out, n_in) matrix in Lava's flat order."""
    ci_n, hi, wi = src
    co_n, ho, wo = out
    w = np.asarray(syn.weight)  # (in, out/groups, kh, kw)
    g = syn.groups
    cig, cog = ci_n // g, co_n // g
    ci, col, yi, xi, ky, kx = np.meshgrid(np.arange(ci_n), np.arange(cog), np.arange(hi),
                                          np.arange(wi), np.arange(w.shape[2]),
                                          np.arange(w.shape[3]), indexing="ij")
    co = (ci // cig) * cog + col
    yo = yi * syn.stride[0] - syn.padding[0] + ky * syn.dilation[0]
    xo = xi * syn.stride[1] - syn.padding[1] + kx * syn.dilation[1]
    vals = w[ci, col, ky, kx]
    ok = (yo >= 0) & (yo < ho) & (xo >= 0) & (xo < wo) & (vals != 0)
    rows = _flat_index(co[ok], yo[ok], xo[ok], out)
    cols = _flat_index(ci[ok], yi[ok], xi[ok], src)
    return csr_matrix((vals[ok].astype(np.int32), (rows, cols)),
                      shape=(int(np.prod(out)), int(np.prod(src))))


def _connection(syn: Synapse, src: tuple, out: tuple):
    """(process, reshape its input from the source?, reshape its output?)"""
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import Dense
    from lava.proc.sparse.process import Sparse

    if syn.type == "conv":
        # netx's layout: spatially flipped, (out, x, y, in); Lava's conv flips back
        w = np.asarray(syn.weight)[:, :, ::-1, ::-1].transpose(0, 3, 2, 1).astype(np.int32)
        proc = Conv(weight=np.ascontiguousarray(w), input_shape=tuple(to_lava_shape(src)),
                    stride=syn.stride[::-1], padding=syn.padding[::-1],
                    dilation=syn.dilation[::-1], groups=syn.groups)
        if tuple(proc.a_out.shape) != to_lava_shape(out):
            raise RuntimeError(f"Lava Conv gives {proc.a_out.shape}, the net says {out}")
        return proc, False
    if syn.type == "dense":
        c, h, w_ = src
        # columns from (C, H, W) order into Lava's flattened (W, H, C) order
        w = np.asarray(syn.weight).reshape(-1, c, h, w_).transpose(0, 3, 2, 1).reshape(len(syn.weight), -1)
        return Dense(weights=w.astype(np.int32)), True
    matrix = pool_matrix(syn, src, out) if syn.type == "pool" else convT_matrix(syn, src, out)
    return Sparse(weights=matrix), True


def to_lava_shape(shape: tuple) -> tuple:
    c, h, w = shape
    return (w, h, c)


def _lif(layer: Layer):
    from lava.proc.lif.process import LIF
    n = layer.neuron
    return LIF(shape=to_lava_shape(layer.shape), du=n.iDecay - 1, dv=n.vDecay, vth=n.vThMant,
               bias_mant=0, bias_exp=0, name=layer.name)


def import_lava_runtime() -> None:
    """Import Lava's runtime safely: its module calls `set_start_method('fork')`
    on import and fails if anything in this process chose a start method first."""
    import multiprocessing as mp
    import sys

    name = "lava.magma.runtime.message_infrastructure.multiprocessing"
    if name not in sys.modules and mp.get_start_method(allow_none=True) is not None:
        mp.set_start_method(None, force=True)
    __import__(name)


def run_frame(net: NetFile, frame: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run one frame (C, H, W, T) of 0/1 spikes in Lava's fixed-point simulator.

    Returns hidden spikes {name: (C, H, W, T) bool, Lava steps 0..T-1} and the
    readout integrator's final voltage (K, H', W') int64.
    """
    import_lava_runtime()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    t_steps = frame.shape[-1]
    steps = t_steps + 1
    data = np.zeros(to_lava_shape(net.input_shape) + (steps,), dtype=np.int32)
    data[..., :t_steps] = to_lava(np.asarray(frame, dtype=np.int32))
    source = Source(data=data)
    outs = {0: source.s_out}
    sinks, lifs = {}, []
    for i, layer in enumerate(net.layers, start=1):
        lif = _lif(layer)
        lifs.append(lif)
        for src, syn in zip(layer.sources, layer.synapses):
            proc, flat = _connection(syn, net.shape_of(src), layer.shape)
            (outs[src].flatten() if flat else outs[src]).connect(proc.s_in)
            (proc.a_out.reshape(to_lava_shape(layer.shape)) if flat else proc.a_out).connect(lif.a_in)
        outs[i] = lif.s_out
        if i < len(net.layers):
            sinks[layer.name] = Sink(shape=lif.s_out.shape, buffer=steps)
            lif.s_out.connect(sinks[layer.name].a_in)
    readout = lifs[-1]
    try:
        readout.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        spikes = {name: from_lava(sink.data.get()[..., :t_steps]).astype(bool)
                  for name, sink in sinks.items()}
        voltage = from_lava(readout.v.get().astype(np.int64))
    finally:
        readout.stop()
    return spikes, voltage
