"""Bit-exact emulator of Lava's fixed-point execution of a `.net` file.

It reproduces, integer for integer, what `Loihi2SimCfg(select_tag="fixed_pt")`
computes (`lava.proc.lif.models.PyLifModelBitAcc`, the Conv, Dense and Sparse
fixed-point models), but vectorised: a network is feed-forward, so each
layer's synaptic input for all T+1 steps and all frames is one batched torch
convolution; only the neuron state runs step by step (on the CPU in a
compiled numba kernel that keeps each neuron's state in registers over all
steps, elsewhere as a torch loop over steps).

Lava facts it follows:
- every connection process sends at step t what it accumulated at step t-1;
- Conv clamps its output to signed 24 bits, Dense and Sparse do not;
- LIF: u = trunc(u*(4096-iDecay)/4096) + (a_in << 6), wrapped to 24 bits the
  way Lava wraps it (once, asymmetrically); v = trunc(v*(4096-vDecay)/4096) + u,
  clipped to +-(2^23-1); spike when v > vThMant << 6; v = 0 after a spike;
- the run lasts T+1 steps: input at steps 0..T-1, zeros at step T.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch
import torch.nn.functional as F

from .netfile import NetFile, Synapse

U_MAX = 1 << 23  # Lava's max_uv_val


@dataclass
class EmulatorOutput:
    """`spikes[name]`: (N, C, H, W, T) bool, Lava steps 0..T-1 (absent when not kept);
    `counts[name]`: spikes per frame over those steps, (N,); `voltage`: the readout
    integrator's final voltage, (N, K, H, W) int64."""

    spikes: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]
    voltage: torch.Tensor


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _float_dtype(syn: Synapse) -> torch.dtype:
    """float32 holds every partial sum exactly while the worst case stays below 2^24;
    keep a margin and fall back to float64 beyond."""
    w = syn.weight
    fan_in = abs(w).reshape(w.shape[0], -1).sum(axis=1).max() if w.ndim > 1 else abs(w).sum()
    if syn.type == "convT":
        fan_in = abs(w).sum()
    return torch.float32 if fan_in < (1 << 22) else torch.float64


def synapse_op(syn: Synapse, x: torch.Tensor, out_shape: tuple[int, int, int],
               weight: torch.Tensor | None = None, *, exact: bool = True) -> torch.Tensor:
    """The integer linear map of one synapse on (B, C, H, W) spikes -> (B, C', H', W').

    Float arithmetic on integers, exact by the dtype rule above; the result is
    rounded back to integers (int64), or with exact=False left as the float
    tensor holding them (the caller rounds).
    """
    dtype = _float_dtype(syn)
    w = torch.as_tensor(syn.weight, device=x.device) if weight is None else weight
    w = w.to(dtype)
    x = x.to(dtype)
    co, ho, wo = out_shape
    if syn.type == "conv":
        y = F.conv2d(x, w, stride=syn.stride, padding=syn.padding, dilation=syn.dilation,
                     groups=syn.groups)
    elif syn.type == "dense":
        y = (x.reshape(x.shape[0], -1) @ w.T).reshape(x.shape[0], co, 1, 1)
    elif syn.type == "pool":
        b, c, h, wi = x.shape
        # windows reaching past the bottom/right edge read zeros
        need_h = (ho - 1) * syn.stride[0] + syn.dilation[0] * (syn.kernel[0] - 1) + 1
        need_w = (wo - 1) * syn.stride[1] + syn.dilation[1] * (syn.kernel[1] - 1) + 1
        extra_h = max(0, need_h - (h + 2 * syn.padding[0]))
        extra_w = max(0, need_w - (wi + 2 * syn.padding[1]))
        x = F.pad(x.reshape(b * c, 1, h, wi), (0, extra_w, 0, extra_h))
        y = F.conv2d(x, w[None, None], stride=syn.stride, padding=syn.padding,
                     dilation=syn.dilation)[..., :ho, :wo].reshape(b, c, ho, wo)
    elif syn.type == "convT":
        base = [(n - 1) * s - 2 * p + d * (k - 1) + 1 for n, s, p, d, k in
                zip(x.shape[2:], syn.stride, syn.padding, syn.dilation, syn.kernel)]
        y = F.conv_transpose2d(x, w, stride=syn.stride, padding=syn.padding,
                               output_padding=(ho - base[0], wo - base[1]), groups=syn.groups,
                               dilation=syn.dilation)
    else:
        raise ValueError(f"unknown synapse type {syn.type}")
    return torch.round(y).to(torch.int64) if exact else y


def _wrap_int32(x: torch.Tensor) -> torch.Tensor:
    return (x + (1 << 31)) % (1 << 32) - (1 << 31)


def _decay(x: torch.Tensor, keep: int) -> torch.Tensor:
    """Lava's sign(x) * (|x * keep| >> 12), i.e. a shift rounding towards zero."""
    return torch.div(x * keep, 4096, rounding_mode="trunc")


@numba.njit(parallel=True, cache=True)
def _lif_kernel(a, first_zero, clamp24, keep_u, keep_v, vth, count_steps,
                spikes, counts, v_out):  # pragma: no cover (compiled)
    """`lif_steps_torch`'s arithmetic one neuron at a time: the state stays in
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
            x = x << 6
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
    _lif_kernel(a, first_zero, clamp24, 4096 - i_decay, 4096 - v_decay, v_th_mant << 6, count_steps,
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
    return lif_steps_torch(a, i_decay, v_decay, v_th_mant, wrap=bool((a.abs() >= (1 << 24)).any()))


def lif_steps_torch(a: torch.Tensor, i_decay: int, v_decay: int, v_th_mant: int, *, wrap: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """`lif_steps` as a torch loop over steps (any device; `wrap=False` when |a| < 2^24)."""
    u = torch.zeros_like(a[0])
    v = torch.zeros_like(a[0])
    spikes = torch.empty(a.shape, dtype=torch.bool, device=a.device)
    keep_u, keep_v, vth = 4096 - i_decay, 4096 - v_decay, v_th_mant << 6
    wrap = _wrap_int32 if wrap else (lambda z: z)
    for t in range(a.shape[0]):
        u = wrap(_decay(u, keep_u) + wrap(a[t] << 6))
        u = torch.where(u > U_MAX, u - 2 * U_MAX, u)
        u = torch.where(u <= -U_MAX, u + 2 * U_MAX, u)
        v = torch.clamp(_decay(v, keep_v) + u, -U_MAX + 1, U_MAX - 1)
        s = v > vth
        v = torch.where(s, torch.zeros_like(v), v)
        spikes[t] = s
    return spikes, v


def run(net: NetFile, frames: torch.Tensor, *, device: torch.device | str | None = None,
        keep_spikes: bool = True) -> EmulatorOutput:
    """Run frames (N, C, H, W, T) of 0/1 spikes exactly as Lava would."""
    device = torch.device(device) if device is not None else default_device()
    n, t_steps = frames.shape[0], frames.shape[-1]
    if tuple(frames.shape[1:4]) != tuple(net.input_shape):
        raise ValueError(f"frames of shape {tuple(frames.shape[1:4])}, the net takes {net.input_shape}")
    steps = t_steps + 1
    # time-major (S, N, C, H, W): one step is contiguous, all steps batch into one conv
    x = frames.to(device=device, dtype=torch.bool).permute(4, 0, 1, 2, 3)
    outputs = {0: torch.cat([x, torch.zeros_like(x[:1])])}
    last_use = {}
    for i, layer in enumerate(net.layers, start=1):
        for s in layer.sources:
            last_use[s] = i
    spikes, counts, voltage = {}, {}, None
    with _exact_cuda():
        for i, layer in enumerate(net.layers, start=1):
            c, h, w = layer.shape
            nrn = layer.neuron
            zs = []
            for src, syn in zip(layer.sources, layer.synapses):
                inp = outputs[src][:-1]  # what step t-1 sent arrives at step t
                zs.append((syn, synapse_op(syn, inp.reshape(-1, *inp.shape[2:]), layer.shape, exact=False)))
            if device.type == "cpu" and len(zs) == 1:
                # the kernel rounds, clamps and integrates the synapse's output as it is
                syn, z = zs[0]
                sp, cnt, v = _lif_cpu(z.reshape(steps - 1, -1).numpy(), steps, nrn.iDecay, nrn.vDecay,
                                      nrn.vThMant, clamp24=syn.type == "conv", count_steps=t_steps)
                s = torch.from_numpy(sp).reshape(steps, n, c, h, w)
                v = torch.from_numpy(v).reshape(n, c, h, w)
                count = torch.from_numpy(cnt).reshape(n, -1).sum(1)
            else:
                a = torch.zeros((steps, n, c, h, w), dtype=torch.int64, device=device)
                for syn, z in zs:
                    z = torch.round(z).to(torch.int64)
                    if syn.type == "conv":
                        z = z.clamp(-U_MAX, U_MAX - 1)  # Lava Conv: signed 24-bit clamp
                    a[1:] += z.reshape(steps - 1, n, c, h, w)
                if bool((a.abs() >= (1 << 31)).any()):
                    a = _wrap_int32(a)
                s, v = lif_steps(a, nrn.iDecay, nrn.vDecay, nrn.vThMant)
                count = s[:t_steps].sum(dim=(0, 2, 3, 4))
            del zs
            if i == len(net.layers):
                voltage = v
            else:
                outputs[i] = s
                counts[layer.name] = count
                if keep_spikes:
                    spikes[layer.name] = s[:t_steps].permute(1, 2, 3, 4, 0).bool()
            for src in [k for k, last in last_use.items() if last == i and k in outputs]:
                del outputs[src]
    return EmulatorOutput(spikes=spikes, counts=counts, voltage=voltage)


class _exact_cuda:
    """TF32 would round integer sums on GPUs; switch it off for the run."""

    def __enter__(self):
        self.saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved
