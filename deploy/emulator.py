"""Bit-exact emulator of Lava's fixed-point execution of a `.net` file.

It reproduces, integer for integer, what `Loihi2SimCfg(select_tag="fixed_pt")`
computes (`lava.proc.lif.models.PyLifResetModelBitAcc` for each layer's `LIFReset`, the Conv, Dense and Sparse
fixed-point models), but vectorised: a network is feed-forward, so each
layer's synaptic input for all T+D steps and all frames is one batched torch
convolution (on the CPU, per chunk of frames that fits the cache, chunks side by
side on the CPU's threads); only the
neuron state runs step by step (on the CPU in a compiled numba kernel that
keeps each neuron's state in registers over all steps, elsewhere as a torch
loop over steps).

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

import math
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import torch

from toolchain.core.loihi import DECAY_SCALE, INPUT_SHIFT, U_MAX, cuba_run, wrap_int32

from .netfile import NetFile
from .synapses import apply as synapse_op


@dataclass
class EmulatorOutput:
    """`spikes[name]`: (N, C, H, W, T + D - 1) bool, Lava steps 0..T+D-2 (absent when not kept);
    `counts[name]`: spikes per frame over those steps, (N,); `voltage`: the readout
    integrator's final voltage, (N, K, H, W) int64."""

    spikes: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]
    voltage: torch.Tensor


# On the CPU a batch runs in chunks of frames whose largest layer over all steps
# stays within this many bytes (float32): one convolution over a much larger
# batch is memory-bound and was measured slower than frame by frame (tiny preset,
# one thread: 64x64, 4.5 MB a frame, 205 steps/s for 16 frames in one batch
# against 264 one by one; 16x16, 0.3 MB a frame, 3422 in one batch against 2225).
CPU_CHUNK_BYTES = 8 << 20


def _frame_parallel_ok() -> bool:
    """Whether numba may run its kernel from several threads at once: not on its
    workqueue layer (it aborts on concurrent use), fine on omp and tbb."""
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:  # chosen at the first parallel launch: launch one
        _lif_cpu(np.zeros((1, 1), np.float32), 2, 0, 0, 1, clamp24=False, count_steps=0)
        return numba.threading_layer() != "workqueue"


def _run_chunks(net: NetFile, frames: torch.Tensor, chunk: int, workers: int, keep_spikes: bool) -> EmulatorOutput:
    """Chunks of frames side by side, one thread each (torch and numba at one
    thread meanwhile): per frame the same work as a batch of one, without the
    per-layer hand-offs between threads of the pools, which cost a batch of
    one more than the threads gain it (tiny preset at 64x64 on 2 cores: 300
    steps/s frame by frame, 360-430 with two frames side by side)."""
    def one(i: int) -> EmulatorOutput:
        if workers > 1:
            numba.set_num_threads(1)  # numba's count is per calling thread
        return run(net, frames[i:i + chunk], device="cpu", keep_spikes=keep_spikes)

    starts = range(0, len(frames), chunk)
    if workers == 1:
        parts = [one(i) for i in starts]
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # global: restored below
        try:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(one, starts))
        finally:
            torch.set_num_threads(threads)
    return EmulatorOutput(spikes={k: torch.cat([p.spikes[k] for p in parts]) for k in parts[0].spikes},
                          counts={k: torch.cat([p.counts[k] for p in parts]) for k in parts[0].counts},
                          voltage=torch.cat([p.voltage for p in parts]))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@numba.njit(parallel=True, cache=True)
@typing.no_type_check  # numba's int64 scalars: numpy's stubs keep them apart from int
def _lif_kernel(a, first_zero, clamp24, keep_u, keep_v, vth, count_steps,
                spikes, counts, v_out):  # pragma: no cover (compiled)
    """`toolchain.core.loihi.cuba_step`'s arithmetic one neuron at a time: the state stays in
    registers over all steps instead of a pass over memory per operation.

    a: (S, M) input, integers (or floats holding integers, rounded here);
    first_zero: a holds steps 1.., step 0's input is 0; clamp24: clamp each
    input to signed 24 bits first (Lava Conv). The int32 wrap-arounds are
    always applied: they change nothing unless a value overflows.
    Writes spikes (S, M) as 0/1, per-neuron counts over the first count_steps
    steps, and the final voltage."""
    steps = spikes.shape[0]
    m = spikes.shape[1]
    for i in numba.prange(m):
        u = np.int64(0)
        v = np.int64(0)
        n = 0
        for t in range(steps):
            if first_zero:
                x = np.int64(0) if t == 0 else np.int64(round(a[t - 1, i]))
            else:
                x = np.int64(round(a[t, i]))
            if clamp24:
                x = min(max(x, -U_MAX), U_MAX - 1)
            x = (x + (1 << 31)) % (1 << 32) - (1 << 31)
            x = x << INPUT_SHIFT
            x = (x + (1 << 31)) % (1 << 32) - (1 << 31)
            du = u * keep_u
            u = (-((-du) >> 12) if du < 0 else du >> 12) + x
            u = (u + (1 << 31)) % (1 << 32) - (1 << 31)
            if u > U_MAX:
                u -= 2 * U_MAX
            elif u <= -U_MAX:
                u += 2 * U_MAX
            dv = v * keep_v
            v = (-((-dv) >> 12) if dv < 0 else dv >> 12) + u
            v = min(max(v, -U_MAX + 1), U_MAX - 1)
            if v > vth:
                spikes[t, i] = 1
                v = 0
                if t < count_steps:
                    n += 1
            else:
                spikes[t, i] = 0
        counts[i] = n
        v_out[i] = v


def _lif_cpu(a: np.ndarray, steps: int, i_decay: int, v_decay: int, v_th_mant: int, *, clamp24: bool,
             count_steps: int, spike_dtype=np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the kernel on a (S or S-1, M) input: (spikes (S, M), counts (M,), v (M,))."""
    first_zero = a.shape[0] == steps - 1
    spikes = np.empty((steps, a.shape[1]), dtype=spike_dtype)
    counts = np.empty(a.shape[1], dtype=np.int64)
    v = np.empty(a.shape[1], dtype=np.int64)
    _lif_kernel(a, first_zero, clamp24, DECAY_SCALE - i_decay, DECAY_SCALE - v_decay, v_th_mant << INPUT_SHIFT,
                count_steps,
                spikes, counts, v)
    return spikes, counts, v


def lif_steps(a: torch.Tensor, i_decay: int, v_decay: int, v_th_mant: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run Lava's fixed-point LIF over (S, ...) int64 input -> (spikes bool (S, ...), final v)."""
    if a.device.type == "cpu":
        flat = a.reshape(a.shape[0], -1).contiguous().numpy()
        spikes, _, v = _lif_cpu(flat, a.shape[0], i_decay, v_decay, v_th_mant, clamp24=False,
                                count_steps=0, spike_dtype=np.bool_)
        return torch.from_numpy(spikes).reshape(a.shape), torch.from_numpy(v).reshape(a.shape[1:])
    # int32 wrap-around can only happen for inputs of 2^24 and more; skip the
    # wrap emulation when none is that large
    return cuba_run(a, i_decay, v_decay, v_th_mant, wrap=bool((a.abs() >= (1 << 24)).any()))


def run(net: NetFile, frames: torch.Tensor, *, device: torch.device | str | None = None,
        keep_spikes: bool = True) -> EmulatorOutput:
    """Run frames (N, C, H, W, T) of 0/1 spikes exactly as Lava would."""
    device = torch.device(device) if device is not None else default_device()
    n, t_steps = frames.shape[0], frames.shape[-1]
    if tuple(frames.shape[1:4]) != tuple(net.input_shape):
        raise ValueError(f"frames of shape {tuple(frames.shape[1:4])}, the net takes {net.input_shape}")
    steps, kept = net.frame_steps(t_steps), net.spike_steps(t_steps)
    if device.type == "cpu" and n > 1:
        chunk = max(1, CPU_CHUNK_BYTES // (4 * steps * max(int(np.prod(l.shape)) for l in net.layers)))
        workers = min(torch.get_num_threads(), n) if _frame_parallel_ok() else 1
        chunk = min(chunk, math.ceil(n / workers))
        if n > chunk:
            return _run_chunks(net, frames, chunk, workers, keep_spikes)
    # time-major (S, N, C, H, W): one step is contiguous, all steps batch into one conv
    x = frames.to(device=device, dtype=torch.bool).permute(4, 0, 1, 2, 3)
    outputs = {0: torch.cat([x, x.new_zeros((steps - t_steps, *x.shape[1:]))])}
    last_use = {}
    for i, layer in enumerate(net.layers, start=1):
        for src in layer.sources:
            last_use[src] = i
    spikes: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    voltage: torch.Tensor | None = None
    with _exact_cuda():
        for i, layer in enumerate(net.layers, start=1):
            c, h, w = layer.shape
            nrn = layer.neuron
            zs = []
            for src, syn in zip(layer.sources, layer.synapses, strict=True):
                inp = outputs[src][:-1]  # what step t-1 sent arrives at step t
                if syn.delay:  # ... or at step t + delay
                    inp = torch.cat([inp.new_zeros((syn.delay, *inp.shape[1:])), inp[:len(inp) - syn.delay]])
                zs.append((syn, synapse_op(syn, inp.reshape(-1, *inp.shape[2:]), layer.shape, exact=False)))
            if device.type == "cpu" and len(zs) == 1:
                # the kernel rounds, clamps and integrates the synapse's output as it is
                syn, z = zs[0]
                sp, cnt, v_end = _lif_cpu(z.reshape(steps - 1, -1).numpy(), steps, nrn.iDecay, nrn.vDecay,
                                          nrn.vThMant, clamp24=syn.clamps24, count_steps=kept)
                s = torch.from_numpy(sp).reshape(steps, n, c, h, w)
                v = torch.from_numpy(v_end).reshape(n, c, h, w)
                count = torch.from_numpy(cnt).reshape(n, -1).sum(1)
            else:
                a = torch.zeros((steps, n, c, h, w), dtype=torch.int64, device=device)
                for syn, z in zs:
                    z = torch.round(z).to(torch.int64)
                    if syn.clamps24:
                        z = z.clamp(-U_MAX, U_MAX - 1)
                    a[1:] += z.reshape(steps - 1, n, c, h, w)
                if bool((a.abs() >= (1 << 31)).any()):
                    a = wrap_int32(a)
                s, v = lif_steps(a, nrn.iDecay, nrn.vDecay, nrn.vThMant)
                count = s[:kept].sum(dim=(0, 2, 3, 4))
            del zs
            if i == len(net.layers):
                voltage = v
            else:
                outputs[i] = s
                counts[layer.name] = count
                if keep_spikes:
                    spikes[layer.name] = s[:kept].permute(1, 2, 3, 4, 0).bool()
            for src in [k for k, last in last_use.items() if last == i and k in outputs]:
                del outputs[src]
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
