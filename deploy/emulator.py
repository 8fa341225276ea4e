"""Bit-exact emulator of Lava's fixed-point execution of a `.net` file.

It reproduces, integer for integer, what `Loihi2SimCfg(select_tag="fixed_pt")`
computes (`lava.proc.lif.models.PyLifResetModelBitAcc` for each layer's `LIFReset`, the Conv, Dense and Sparse
fixed-point models), but vectorised: a network is feed-forward, so a layer runs
once the layers it reads have run all T + D steps: its synaptic input for all
steps of a chunk of frames in one batched map, then its neurons step by step.

On the CPU (`run`) arrays are frame-major and channels-last, (N, S, H, W, C),
and the work follows what the inputs are:
- spikes are bytes 0/1 and weights Loihi's even 8-bit integers, so a convolution
  (and a sum pool, the depthwise convolution it is) is an integer GEMM: oneDNN's
  u8 x s8 -> s32 convolution on weight / 2, written out as float32 times 2,
  exact because the s32 sums are and every |output| <= `fan_in_bound` < 2^24 is
  a float32 integer; 3-4x the multiply-adds per second of float32 convolution,
  which dense convolution beats sparse gathers with at the 5-20 % densities of
  trained nets. Used where a self-test finds the machine's int8 kernels exact
  (`_int8_exact`); float convolution (`synapses.apply`) elsewhere, and for
  transposed convolutions and dense synapses;
- the neurons run in a compiled kernel vectorised over neurons (`_lif_block`),
  in integers;
- the frames run in chunks whose largest layer input fits the last-level cache
  (`chunks`), side by side on single-threaded workers, one per torch thread: no
  hand-offs between threads inside a layer, so a batch never does more per frame
  than one frame alone. Otherwise the chunks run one after the other on one
  worker, its neurons on numba's threads where a short measurement says that
  pays (`_threads_pay`: not where other work keeps the cores busy); its
  convolutions stay on one thread, so that torch's OpenMP threads and numba's
  (two runtimes) never spin beside each other's work. Frames larger than a
  thread's share of the cache (paper size) split every layer over all threads:
  there the work of a layer dwarfs that.
On CUDA, and as the oracle the tests hold the CPU path to, `run_reference`
runs each map as a torch float convolution and the LIF as
`toolchain.core.loihi.cuba_run`.

Lava facts it follows:
- every connection process sends at step t what it accumulated at step t-1
  (at t + delay for a synapse with a delay: Lava's DelaySparse/DelayDense);
- Conv clamps its output to signed 24 bits, Dense and Sparse (and their delayed
  forms, which run every delayed synapse) do not;
- LIF: `toolchain.core.loihi.cuba_step` (24-bit state, hard reset);
- a frame runs T + D steps (`NetFile.frame_steps`): input at steps 0..T-1,
  zeros after; its spikes are those of the first T + D - 1 steps, the last
  step's reach nothing inside the frame (`toolchain.core.loihi`).
"""
from __future__ import annotations

import functools
import math
import os
import threading
import time
import typing
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import torch

from toolchain.core.loihi import DECAY_SCALE, INPUT_SHIFT, U_MAX, cuba_run

from .netfile import NetFile
from .synapses import Synapse, conv_out, fan_in_bound, pool_edge_pad
from .synapses import apply as synapse_op


@dataclass
class EmulatorOutput:
    """`spikes[name]`: (N, C, H, W, T + D - 1) bool, Lava steps 0..T+D-2 (absent when not kept);
    `counts[name]`: spikes per frame over those steps, (N,); `voltage`: the readout
    integrator's final voltage, (N, K, H, W) int64."""

    spikes: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]
    voltage: torch.Tensor


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- the neuron
# int64 lanes: u * keep reaches 2^31 * 2^12, and Lava's int32 wrap-arounds are
# applied as they are in its model (they change nothing unless a value overflows).
@numba.njit(inline="always")
def _wrap32(x):  # pragma: no cover (compiled)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


@numba.njit(inline="always")
def _decay(x, keep):  # pragma: no cover (compiled)
    """sign(x) * (|x * keep| >> 12), without a branch."""
    d = x * keep
    return (d + ((d >> 63) & (DECAY_SCALE - 1))) >> 12


@numba.njit(nogil=True, cache=True)
@typing.no_type_check
def _cuba_step(x, u, v, s, lo, hi, keep_u, keep_v, vth):  # pragma: no cover (compiled)
    """`toolchain.core.loihi.cuba_step` on one step of a block of neurons, in
    place: x the input (integers, or floats holding integers), clipped to
    [lo, hi] (Lava Conv's 24 bits, or no clip); u, v int64; s the spikes.
    The usual neurons get a loop of their own, in which the compiler drops
    the multiplies of a constant decay: no current state (keep_u 0, the
    paper's LIF), and no leak either (keep_v 4096, converted nets)."""
    if keep_u == 0 and keep_v == DECAY_SCALE:
        _cuba_loop(x, u, v, s, lo, hi, 0, DECAY_SCALE, vth)
    elif keep_u == 0:
        _cuba_loop(x, u, v, s, lo, hi, 0, keep_v, vth)
    else:
        _cuba_loop(x, u, v, s, lo, hi, keep_u, keep_v, vth)


@numba.njit(inline="always")
@typing.no_type_check  # numba's int64 scalars: numpy's stubs keep them apart from int
def _cuba_loop(x, u, v, s, lo, hi, keep_u, keep_v, vth):  # pragma: no cover (compiled)
    for i in range(x.shape[0]):
        a = min(max(np.int64(x[i]), lo), hi)
        a = _wrap32(_wrap32(a) << INPUT_SHIFT)
        ui = _wrap32(_decay(u[i], keep_u) + a)
        ui = ui - 2 * U_MAX if ui > U_MAX else ui
        ui = ui + 2 * U_MAX if ui <= -U_MAX else ui
        u[i] = ui
        vi = min(max(_decay(v[i], keep_v) + ui, -U_MAX + 1), U_MAX - 1)
        fire = vi > vth
        s[i] = fire
        v[i] = 0 if fire else vi


_NO_CLIP = 1 << 62
LIF_BLOCK = 2048  # neurons per kernel job: state (2 x 16 kB) stays in L1


@numba.njit(nogil=True, cache=True)
@typing.no_type_check
def _lif_block(a, lead, n, b, lo, hi, keep_u, keep_v, vth, count_steps, spikes, v_out):  # pragma: no cover
    """Block b of `LIF_BLOCK` neurons of frame n over all steps: step t receives
    a[n, t - lead] (0 where that row is not in a); writes spikes[n] and (unless
    it has no columns) v_out[n], returns the spikes of the first count_steps steps."""
    i0 = b * LIF_BLOCK
    i1 = min(spikes.shape[2], i0 + LIF_BLOCK)
    u = np.zeros(i1 - i0, np.int64)
    v = np.zeros(i1 - i0, np.int64)
    silent = np.zeros(i1 - i0, a.dtype)
    count = 0
    for t in range(spikes.shape[1]):
        x = a[n, t - lead, i0:i1] if 0 <= t - lead < a.shape[1] else silent
        s = spikes[n, t, i0:i1]
        _cuba_step(x, u, v, s, lo, hi, keep_u, keep_v, vth)
        if t < count_steps:
            count += np.sum(s)
    if v_out.shape[1]:
        v_out[n, i0:i1] = v
    return count


# The LIF over frames x blocks of neurons: a (N, A, M) input, spikes (N, S, M)
# uint8 out, counts (N, blocks), v_out (N, M). Two compiled loops (numba caches
# one build per function): the blocks spread over numba's threads, or all in the
# calling thread, for chunks of frames run side by side on threads of their own.
@numba.njit(parallel=True, nogil=True, cache=True)
@typing.no_type_check
def _lif_threads(a, lead, lo, hi, keep_u, keep_v, vth, count_steps, spikes, counts, v_out):  # pragma: no cover
    blocks = counts.shape[1]
    for job in numba.prange(spikes.shape[0] * blocks):
        n = job // blocks
        b = job - n * blocks
        counts[n, b] = _lif_block(a, lead, n, b, lo, hi, keep_u, keep_v, vth, count_steps, spikes, v_out)


@numba.njit(nogil=True, cache=True)
@typing.no_type_check
def _lif_serial(a, lead, lo, hi, keep_u, keep_v, vth, count_steps, spikes, counts, v_out):  # pragma: no cover
    blocks = counts.shape[1]
    for job in range(spikes.shape[0] * blocks):
        n = job // blocks
        b = job - n * blocks
        counts[n, b] = _lif_block(a, lead, n, b, lo, hi, keep_u, keep_v, vth, count_steps, spikes, v_out)


def _lif(a: np.ndarray, steps: int, lead: int, i_decay: int, v_decay: int, v_th_mant: int, *, clamp24: bool,
         count_steps: int, spikes: np.ndarray | None = None, voltage: np.ndarray | None = None,
         threads: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Run the LIF over `a` (N, A, M), step t reading row t - lead: (spikes (N, S, M)
    uint8, written into `spikes` if given; counts (N,)); the final voltage
    written into `voltage` (N, M) int64 if given (the readout's: no other is kept)."""
    n, m = a.shape[0], a.shape[2]
    if spikes is None:
        spikes = np.empty((n, steps, m), dtype=np.uint8)
    counts = np.empty((n, -(-m // LIF_BLOCK)), dtype=np.int64)
    lo, hi = (-U_MAX, U_MAX - 1) if clamp24 else (-_NO_CLIP, _NO_CLIP)
    (_lif_threads if threads else _lif_serial)(a, lead, lo, hi, DECAY_SCALE - i_decay, DECAY_SCALE - v_decay,
                                               v_th_mant << INPUT_SHIFT, count_steps, spikes, counts,
                                               np.empty((n, 0), np.int64) if voltage is None else voltage)
    return spikes, counts.sum(axis=1)


def lif_steps(a: torch.Tensor, i_decay: int, v_decay: int, v_th_mant: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run Lava's fixed-point LIF over (S, ...) int64 input -> (spikes bool (S, ...), final v)."""
    if a.device.type == "cpu":
        flat = a.reshape(1, a.shape[0], -1).contiguous().numpy()
        v = np.empty((1, flat.shape[2]), dtype=np.int64)
        spikes, _ = _lif(flat, a.shape[0], 0, i_decay, v_decay, v_th_mant, clamp24=False, count_steps=0, voltage=v)
        return torch.from_numpy(spikes).view(torch.bool).reshape(a.shape), torch.from_numpy(v).reshape(a.shape[1:])
    return cuba_run(a, i_decay, v_decay, v_th_mant, wrap=True)


# ---------------------------------------------------------------- the synapses on the CPU
# Each map takes spikes (B, H, W, C) uint8 and gives (B, H', W', C') floats
# holding the exact integer sums (float32 while `fan_in_bound` < 2^24), written
# into the given workspace where it can.
SpikeMap = Callable[[np.ndarray, "_Workspace"], np.ndarray]


class _Workspace:
    """One float32 buffer that the large int8 convolutions of a chunk write into,
    layer after layer: a fresh array of hundreds of MB per layer (paper size)
    costs more in page faults than the convolution that fills it. Smaller outputs
    are fresh tensors, which the allocator serves again from its heap without a
    fault (glibc maps anything from 32 MiB up afresh each time)."""

    FROM_BYTES = 32 << 20

    def __init__(self, size: int = 0):
        self.size = size  # elements: the largest layer's, allocated at the first use
        self.buffer = torch.empty(0)

    def zeros(self, b: int, c: int, h: int, w: int) -> torch.Tensor:
        """(B, C, H, W) zeros, channels-last."""
        if self.buffer.numel() < b * c * h * w:
            self.buffer = torch.empty(max(self.size, b * c * h * w))
        return self.buffer[:b * c * h * w].view(b, h, w, c).zero_().permute(0, 3, 1, 2)


FLOAT32_EXACT = 1 << 24  # every integer below it is a float32


def _int8_shift(weight: np.ndarray) -> int | None:
    """The smallest k with every weight an int8 times 2^k: 1 for Loihi's even 8-bit
    weights, 1 + e for mantissas times 2^e (a weight exponent); None if none is."""
    w = np.asarray(weight, dtype=np.int64)
    for k in range(16):
        if np.any(w % (1 << k)):
            return None
        if w.size and -128 <= (w >> k).min() and (w >> k).max() <= 127:
            return k
    return None


def _int8_conv(syn: Synapse, extra: tuple[int, int] = (0, 0)) -> SpikeMap:
    """oneDNN's u8 x s8 convolution with s32 sums, written as float32: each weight
    is an int8 times 2^k (`_int8_shift`), and the output scale 2^k restores them.
    `extra`: zero rows and columns appended to the input (pool windows past its edge)."""
    w = np.asarray(syn.weight)
    shift = _int8_shift(w)
    assert shift is not None
    scale = torch.full((w.shape[0],), float(1 << shift))
    zero = torch.zeros(w.shape[0], dtype=torch.int64)
    geometry = [list(syn.stride), list(syn.padding), list(syn.dilation), syn.groups]
    packed = torch.ops.onednn.qconv_prepack(torch.from_numpy(w >> shift).to(torch.int8), scale, 1.0, 0, *geometry,
                                            None)

    def op(x: np.ndarray, workspace: _Workspace) -> np.ndarray:
        if any(extra):
            padded = np.zeros((x.shape[0], x.shape[1] + extra[0], x.shape[2] + extra[1], x.shape[3]), np.uint8)
            padded[:, :x.shape[1], :x.shape[2]] = x
            x = padded
        ho, wo = (conv_out(n, k, s, p, d) for n, k, s, p, d in
                  zip(x.shape[1:3], syn.kernel, syn.stride, syn.padding, syn.dilation, strict=True))
        x_t = torch.from_numpy(x).permute(0, 3, 1, 2)
        if 4 * x.shape[0] * w.shape[0] * ho * wo < _Workspace.FROM_BYTES:
            y = torch.ops.onednn.qconv2d_pointwise(x_t, 1.0, 0, packed, scale, zero, None, *geometry, 1.0, 0,
                                                   torch.float32, "none", [], "")
        else:  # the "sum" form adds the convolution in place to the workspace's zeros
            y = torch.ops.onednn.qconv2d_pointwise.binary(x_t, 1.0, 0, workspace.zeros(x.shape[0], w.shape[0], ho, wo),
                                                          1.0, 0, packed, scale, zero, None, *geometry, 1.0, 0,
                                                          torch.float32, "sum", 1.0, "none", [], "")
        return y.permute(0, 2, 3, 1).contiguous().numpy()  # channels-last already: no copy
    return op


def _int8_ok(syn: Synapse) -> bool:
    """Weights that are int8s times a power of two, and sums that float32 holds."""
    return _int8_shift(syn.weight) is not None and fan_in_bound(syn) < FLOAT32_EXACT


@functools.cache
def _int8_exact() -> bool:
    """Whether this machine's oneDNN int8 convolution sums exactly. It does with
    VNNI or AMX; without, oneDNN may halve the weights to dodge int16 saturation,
    which would round odd int8 weights. Checked once on every int8 value: a 1x1
    convolution whose one-hot inputs read single weights, and a 3x3 dilated one."""
    try:
        gen = torch.Generator().manual_seed(0)
        w1 = ((np.arange(256)[:, None] + np.arange(256)[None, :]) % 256 - 128) * 2
        one_hot = torch.eye(256, dtype=torch.uint8).reshape(16, 16, 256)[None]  # (1, 16, 16, 256)
        w3 = torch.randint(-128, 128, (32, 48, 3, 3), generator=gen).numpy() * 2
        spikes = (torch.rand((3, 11, 13, 48), generator=gen) < 0.5).to(torch.uint8)
        for w, x, kernel, dilation in ((w1, one_hot, 1, 1), (w3, spikes, 3, 2)):
            syn = Synapse("conv", w.reshape(w.shape[0], -1, kernel, kernel).astype(np.int32),
                          padding=(dilation * (kernel // 2),) * 2, dilation=(dilation,) * 2)
            got = _int8_conv(syn)(x.numpy(), _Workspace())
            ref = synapse_op(syn, x.permute(0, 3, 1, 2).double(), (w.shape[0], *x.shape[1:3])).permute(0, 2, 3, 1)
            if not torch.equal(torch.from_numpy(got).double(), ref.double()):
                return False
        return True
    except (RuntimeError, AttributeError):  # no oneDNN quantized ops in this torch build
        return False


def _float_map(syn: Synapse, out_shape: tuple[int, int, int]) -> SpikeMap:
    """Any synapse kind through its torch op (`synapses.apply`): float32 or float64."""
    def op(x: np.ndarray, workspace: _Workspace) -> np.ndarray:
        y = synapse_op(syn, torch.from_numpy(x).permute(0, 3, 1, 2), out_shape, exact=False)
        return y.permute(0, 2, 3, 1).contiguous().numpy()
    return op


def _as_conv(syn: Synapse, src: tuple[int, int, int], out_shape: tuple[int, int, int]
             ) -> tuple[Synapse, tuple[int, int]] | None:
    """The synapse as a convolution and the zeros to append to its input: conv
    itself, sum pooling as the depthwise conv it is (windows past the input
    edge read appended zeros, as `synapses.apply` has them); None for the other kinds."""
    if syn.type == "conv":
        return syn, (0, 0)
    if syn.type == "pool":
        w = np.broadcast_to(np.asarray(syn.weight), (src[0], 1, *syn.kernel))
        extra_h, extra_w = pool_edge_pad(syn, src[1:], out_shape)
        return Synapse("conv", np.ascontiguousarray(w), syn.stride, syn.padding, syn.dilation, groups=src[0]), \
            (extra_h, extra_w)
    return None


class _Map(typing.NamedTuple):
    op: SpikeMap
    bound: int  # `fan_in_bound`: |one output| at most


def _spike_map(syn: Synapse, src: tuple[int, int, int], out_shape: tuple[int, int, int]) -> _Map:
    conv = _as_conv(syn, src, out_shape)
    if conv is not None and _int8_ok(conv[0]) and _int8_exact():
        return _Map(_int8_conv(*conv), fan_in_bound(syn))
    return _Map(_float_map(syn, out_shape), fan_in_bound(syn))


_MAPS: dict[int, tuple[weakref.ref, tuple, _Map]] = {}


def _cached(syn: Synapse, src: tuple[int, int, int], out_shape: tuple[int, int, int]) -> _Map:
    """A synapse's map, built once (int8 weights packed) while the synapse lives
    and its weight array and geometry stay the same objects and values."""
    key = (syn.type, id(syn.weight), syn.stride, syn.padding, syn.dilation, syn.groups, tuple(src), tuple(out_shape))
    hit = _MAPS.get(id(syn))
    if hit is not None and hit[0]() is syn and hit[1] == key:
        return hit[2]
    entry = _spike_map(syn, src, out_shape)
    ident, maps = id(syn), _MAPS  # the dict itself, which outlives the module's globals at exit
    maps[ident] = (weakref.ref(syn, lambda _: maps.pop(ident, None)), key, entry)
    return entry


# ---------------------------------------------------------------- the run
class _Source(typing.NamedTuple):
    spikes: np.ndarray  # (N, S', H, W, C) uint8, frame-major
    steps: int  # steps 0..steps-1 of it may spike, the later ones are silent


def _synapse_input(syn: Synapse, smap: _Map, src: _Source, m: int, steps: int, workspace: _Workspace
                   ) -> np.ndarray:
    """(N, R, M): row r what the synapse delivers at step r + 1 + delay (Lava's
    one-step connection delay, plus the synapse's), for the rows that can be nonzero."""
    rows = max(0, min(src.steps, steps - 1 - syn.delay))  # the source steps that arrive within the frame
    n = src.spikes.shape[0]
    if rows == 0:
        return np.zeros((n, 0, m), dtype=np.float32)
    x = np.ascontiguousarray(src.spikes[:, :rows])  # a copy only for a batch with rows < S'
    return smap.op(x.reshape(n * rows, *x.shape[2:]), workspace).reshape(n, rows, m)


def _layer_input(layer, maps: list[_Map], sources: list[_Source], steps: int, workspace: _Workspace
                 ) -> tuple[np.ndarray, int, bool]:
    """A layer's synaptic input (N, A, M) for steps lead..lead+A-1 (the others get
    0), and whether the LIF must clamp it to 24 bits (Lava's Conv)."""
    m = math.prod(layer.shape)
    # |output| <= bound; a clamp to [-2^23, 2^23 - 1] changes nothing below 2^23
    clamps = [syn.clamps24 and smap.bound >= U_MAX for syn, smap in zip(layer.synapses, maps, strict=True)]
    if len(layer.synapses) == 1:
        return _synapse_input(layer.synapses[0], maps[0], sources[0], m, steps, workspace), \
            1 + layer.synapses[0].delay, clamps[0]
    exact32 = sum(smap.bound for smap in maps) < FLOAT32_EXACT and not any(clamps)
    a: np.ndarray = np.zeros((sources[0].spikes.shape[0], steps, m), dtype=np.float32 if exact32 else np.int64)
    for syn, smap, src, clamp in zip(layer.synapses, maps, sources, clamps, strict=True):
        y = _synapse_input(syn, smap, src, m, steps, workspace)  # added before the workspace is reused
        if not exact32:
            y = y.astype(np.int64)
            if clamp:
                y = np.clip(y, -U_MAX, U_MAX - 1)
        a[:, 1 + syn.delay:1 + syn.delay + y.shape[1]] += y  # the LIF wraps the sum to Lava's int32 register
    return a, 0, False


@dataclass
class _Batch:
    """Whole-batch outputs, frame-major; chunks of frames write their rows."""

    frames: np.ndarray  # (N, T, H, W, C) uint8
    steps: int
    maps: list[list[_Map]]
    spikes: dict[int, np.ndarray]  # file layer -> (N, S, H, W, C) uint8, when kept
    counts: dict[int, np.ndarray]  # file layer -> (N,)
    voltage: np.ndarray  # (N, H*W*C) int64


def _run_chunk(net: NetFile, b: _Batch, n0: int, n1: int, threads: bool, workspace: _Workspace) -> None:
    """Frames n0..n1-1 through every layer; `threads`: the neurons on numba's threads."""
    steps, last = b.steps, len(net.layers)
    last_use = {src: i for i, layer in enumerate(net.layers, start=1) for src in layer.sources}
    outputs = {0: _Source(b.frames[n0:n1], b.frames.shape[1])}
    for i, layer in enumerate(net.layers, start=1):
        c, h, w = layer.shape
        nrn = layer.neuron
        a, lead, clamp24 = _layer_input(layer, b.maps[i - 1], [outputs[k] for k in layer.sources], steps, workspace)
        into = b.spikes[i][n0:n1].reshape(n1 - n0, steps, -1) if i in b.spikes else None
        s, count = _lif(a, steps, lead, nrn.iDecay, nrn.vDecay, nrn.vThMant, clamp24=clamp24, count_steps=steps - 1,
                        spikes=into, voltage=b.voltage[n0:n1] if i == last else None, threads=threads)
        del a
        if i != last:
            outputs[i] = _Source(s.reshape(n1 - n0, steps, h, w, c), steps)
            b.counts[i][n0:n1] = count
        for k in [k for k, use in last_use.items() if use == i and k in outputs]:
            del outputs[k]


# On the CPU a batch runs in chunks of frames whose largest layer input over all
# steps (float32) stays within this many bytes; 0: the CPU's last-level cache,
# shared by the threads that run chunks side by side.
CPU_CHUNK_BYTES = 0


@functools.cache
def _cache_bytes() -> int:
    """The CPU's last-level cache in bytes, as Linux describes it (8 MiB elsewhere)."""
    sizes = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level, size = int((index / "level").read_text()), (index / "size").read_text().strip()
            sizes[level] = int(size.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(size[-1:], 0)
        except (OSError, ValueError):
            continue
    return sizes[max(sizes)] if sizes else 8 << 20


def _frame_bytes(net: NetFile, steps: int) -> int:
    """One frame's largest layer input over all steps, float32."""
    return 4 * steps * max(math.prod(layer.shape) for layer in net.layers)


def chunks(net: NetFile, n: int, steps: int, workers: int = 1) -> list[tuple[int, int]]:
    """Frame ranges of equal size for `workers` threads side by side: each
    chunk's largest layer input within its share of `CPU_CHUNK_BYTES` (default:
    the last-level cache), at least one frame, and as many chunks as a multiple
    of the workers where the frames allow, so that the workers finish together."""
    fit = max(1, (CPU_CHUNK_BYTES or _cache_bytes()) // workers // _frame_bytes(net, steps))
    k = min(n, math.ceil(math.ceil(n / fit) / workers) * workers)
    size = max(1, math.ceil(n / max(1, k)))
    return [(i, min(n, i + size)) for i in range(0, n, size)]


class _SingleThreaded:
    """A pool of threads in which torch (and so oneDNN) runs on one thread each:
    chunks of frames side by side, with no hand-offs between threads inside a
    layer. torch's thread count is per thread under OpenMP; each worker sets its
    own once, then the caller's settings are restored (`torch.set_num_threads`
    also sets process-wide ones, and costs milliseconds)."""

    def __init__(self, workers: int):
        self.workers, self.pid = workers, os.getpid()
        ready = threading.Barrier(workers + 1)

        def pin() -> None:
            torch.get_num_threads()  # torch's lazy per-thread set-up first, or it would undo the 1 below
            torch.set_num_threads(1)
            ready.wait()

        saved = torch.get_num_threads()
        self.pool = ThreadPoolExecutor(workers, initializer=pin, thread_name_prefix="emulator")
        try:
            # no thread is idle until the barrier opens, so each task starts a thread
            probes = [self.pool.submit(int) for _ in range(workers)]
            ready.wait(timeout=60)
            for probe in probes:
                probe.result(timeout=60)
        except Exception:  # a worker that did not start: no pool, the caller's threads instead
            self.ok = False
            return
        finally:
            torch.set_num_threads(saved)
        # where the count is process-wide (not OpenMP), the caller's restored count shows here
        self.ok = all(t == 1 for t in self.pool.map(lambda _: torch.get_num_threads(), range(workers)))


_POOL: list[_SingleThreaded] = []


def _single_threaded(workers: int) -> _SingleThreaded | None:
    """The pool for `workers` threads (rebuilt after a fork or a new thread count);
    None where torch's thread count is not per thread (not OpenMP)."""
    if not _POOL or _POOL[0].workers != workers or _POOL[0].pid != os.getpid():
        if _POOL and _POOL[0].pid == os.getpid():
            _POOL[0].pool.shutdown(wait=False)
        _POOL[:] = [_SingleThreaded(workers)]
    return _POOL[0] if _POOL[0].ok else None


_THREADS_PAY: list[float] = []  # [time.monotonic() of the last check, 1.0 if they pay]
THREADS_RECHECK_S = 60.0


def _threads_pay(pool: _SingleThreaded) -> bool:
    """Whether a chunk's neurons run faster on numba's threads than on one
    thread: a short measurement of the LIF kernel both ways,
    repeated each minute. Where other work keeps the cores busy, a thread that
    waits at every hand-off for a descheduled sibling makes the split many times
    slower, now and then: the mean of several tries counts those stalls."""
    now = time.monotonic()
    if _THREADS_PAY and now - _THREADS_PAY[0] < THREADS_RECHECK_S:
        return bool(_THREADS_PAY[1])
    a = np.zeros((1, 16, 1 << 16), dtype=np.float32)

    def timed(threads: bool) -> float:
        t0 = time.perf_counter()
        _lif(a, 17, 1, 1, 0, 1, clamp24=False, count_steps=0, threads=threads)
        return time.perf_counter() - t0
    for _ in range(4):  # numba's threads start (milliseconds, for the first few calls) before the timing
        timed(True)
    split = alone = 0.0
    for _ in range(12):
        split += timed(True)
        alone += pool.pool.submit(timed, False).result()
    _THREADS_PAY[:] = [now, float(split < 0.8 * alone)]
    return bool(_THREADS_PAY[1])


def run(net: NetFile, frames: torch.Tensor, *, device: torch.device | str | None = None,
        keep_spikes: bool = True) -> EmulatorOutput:
    """Run frames (N, C, H, W, T) of 0/1 spikes exactly as Lava would."""
    device = torch.device(device) if device is not None else default_device()
    if tuple(frames.shape[1:4]) != tuple(net.input_shape):
        raise ValueError(f"frames of shape {tuple(frames.shape[1:4])}, the net takes {net.input_shape}")
    if device.type != "cpu":
        return run_reference(net, frames, device=device, keep_spikes=keep_spikes)
    return _run_cpu(net, frames, keep_spikes)


def _run_cpu(net: NetFile, frames: torch.Tensor, keep_spikes: bool) -> EmulatorOutput:
    """Chunks of frames side by side on single-threaded workers, one per torch
    thread; else one chunk after the other on one worker, its neurons on
    numba's threads where that pays (`_threads_pay`)."""
    n = frames.shape[0]
    steps = net.frame_steps(frames.shape[-1])
    layers = {i: layer for i, layer in enumerate(net.layers, start=1)}
    last = len(net.layers)

    def frame_major(layer) -> tuple[int, ...]:
        return (n, steps, *layer.shape[1:], layer.shape[0])  # (N, S, H, W, C)
    # numpy's copies, not torch's: a torch copy here would wake torch's OpenMP
    # threads, which then spin for milliseconds beside the workers (`_run_cpu`)
    b = _Batch(frames=np.ascontiguousarray(frames.detach().cpu().numpy().transpose(0, 4, 2, 3, 1), dtype=np.uint8),
               steps=steps,
               maps=[[_cached(syn, net.shape_of(src), layer.shape) for src, syn in zip(layer.sources, layer.synapses,
                                                                                         strict=True)]
                     for layer in net.layers],
               spikes={i: np.empty(frame_major(layer), np.uint8) for i, layer in layers.items() if i < last}
               if keep_spikes else {},
               counts={i: np.empty(n, np.int64) for i in layers if i < last},
               voltage=np.empty((n, math.prod(net.layers[-1].shape)), np.int64))
    threads = torch.get_num_threads()
    pool = _single_threaded(threads) if threads > 1 else None
    # side by side where a frame fits its worker's share of the cache: frames
    # larger than that gain nothing there and would multiply the memory in use
    fits_share = _frame_bytes(net, steps) <= (CPU_CHUNK_BYTES or _cache_bytes()) // threads
    side_by_side = pool is not None and n > 1 and fits_share
    parts = chunks(net, n, steps, threads if side_by_side else 1)
    per_thread = threading.local()  # a workspace for the chunks that run on a thread, one after the other
    size = max(n1 - n0 for n0, n1 in parts) * (steps - 1) * max(math.prod(layer.shape) for layer in net.layers)

    def run_parts(todo: list[tuple[int, int]], threads: bool) -> None:
        if not hasattr(per_thread, "workspace"):
            per_thread.workspace = _Workspace(size)
        for part in todo:
            _run_chunk(net, b, *part, threads=threads, workspace=per_thread.workspace)
    if pool is not None and side_by_side:
        list(pool.pool.map(lambda part: run_parts([part], threads=False), parts))
    elif pool is not None and fits_share:  # one after the other on one worker (torch on one thread),
        # the neurons on numba's threads where that pays
        pool.pool.submit(run_parts, parts, _threads_pay(pool)).result()
    else:  # frames this large give each layer's convolution work enough to split over torch's threads
        run_parts(parts, threads=threads > 1)
    c, h, w = net.layers[-1].shape
    return EmulatorOutput(
        spikes={layers[i].name: torch.from_numpy(s[:, :steps - 1]).view(torch.bool).permute(0, 4, 2, 3, 1)
                for i, s in b.spikes.items()},
        counts={layers[i].name: torch.from_numpy(cnt) for i, cnt in b.counts.items()},
        voltage=torch.from_numpy(np.ascontiguousarray(b.voltage.reshape(n, h, w, c).transpose(0, 3, 1, 2))))


def run_reference(net: NetFile, frames: torch.Tensor, *, device: torch.device | str = "cpu",
                  keep_spikes: bool = True) -> EmulatorOutput:
    """The same run as plain torch: each synapse a float convolution (`synapses.apply`)
    over all steps, the LIF `toolchain.core.loihi.cuba_run`. `run` on CUDA, and
    the oracle the tests hold the CPU path to."""
    device = torch.device(device)
    n, t_steps = frames.shape[0], frames.shape[-1]
    steps, kept = net.frame_steps(t_steps), net.spike_steps(t_steps)
    # time-major (S, N, C, H, W): one step is contiguous, all steps batch into one conv
    x = frames.to(device=device, dtype=torch.bool).permute(4, 0, 1, 2, 3)
    outputs = {0: torch.cat([x, x.new_zeros((steps - t_steps, *x.shape[1:]))])}
    spikes: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    voltage: torch.Tensor | None = None
    with _exact_cuda():
        for i, layer in enumerate(net.layers, start=1):
            nrn = layer.neuron
            a = torch.zeros((steps, n, *layer.shape), dtype=torch.int64, device=device)
            for src, syn in zip(layer.sources, layer.synapses, strict=True):
                inp = outputs[src][:max(0, steps - 1 - syn.delay)]  # what step t-1-delay sent arrives at step t
                z = synapse_op(syn, inp.reshape(-1, *inp.shape[2:]), layer.shape)
                if syn.clamps24:
                    z = z.clamp(-U_MAX, U_MAX - 1)
                a[1 + syn.delay:] += z.reshape(len(inp), n, *layer.shape)
            # with the int32 wraps always: a current can outgrow int32 from inputs below 2^24
            s, v = cuba_run(a, nrn.iDecay, nrn.vDecay, nrn.vThMant, wrap=True)
            if i == len(net.layers):
                voltage = v
            else:
                outputs[i] = s
                counts[layer.name] = s[:kept].sum(dim=(0, 2, 3, 4))
                if keep_spikes:
                    spikes[layer.name] = s[:kept].permute(1, 2, 3, 4, 0)
    assert voltage is not None  # the last layer, the readout, sets it
    return EmulatorOutput(spikes=spikes, counts=counts, voltage=voltage)


class _exact_cuda:
    """TF32 would round integer sums on GPUs; switch it off for the run."""

    def __enter__(self):
        self.saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved
