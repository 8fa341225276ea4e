"""A fused CUBA-LIF neuron and 2-D synapses for training on the CPU.

On the CPU slayer steps `cuba.Neuron` in a Python loop over time: two
`_LIDynamics` passes (current, then voltage) of a few small int64 tensor
ops per step, then the spike function, and the same again backwards. Here
one numba kernel runs all T steps per neuron with the state in registers,
in parallel over neurons, with slayer's exact fixed-point arithmetic, so
spikes, currents and voltages are bit-identical to slayer's CPU path. The
backward (slayer's surrogate gradient followed by the two reversed leaky
integrations of `_LIDynamics`) is one reversed pass per neuron.

slayer's synapses are Conv3d with a (k, k, 1) kernel over (N, C, H, W, T);
`synapse_forward` computes the same weight (weight norm, then the
quantizing `_pre_hook_fx`) and runs it as one 2-D convolution over N*T
channels-last frames, returning a (N, C, H, W, T) view of that result which
the fused neuron reads in place (and writes its input gradient back in).
Pooling sums its k x k windows directly.

    cuba_forward(neuron, z)      what `neuron(z)` returns (the spikes)
    cuba_dynamics(neuron, z)     (current, voltage, spikes), for tests
    synapse_forward(synapse, x)  what `synapse(x)` returns
    set_neuron_impl("auto" | "fused" | "slayer"), neuron_impl(), fused_calls()

"auto" uses the fused path for CPU tensors and slayer's (CUDA kernels) for
GPU tensors; any neuron or synapse configuration outside what is
implemented here (learnable or per-channel decays, persistent state,
graded spikes, norm, dropout, hooks, other dtypes) goes to slayer.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import torch
import torch.nn.functional as F
from lava.lib.dl import slayer
from lava.lib.dl.slayer.neuron import cuba as _cuba
from lava.lib.dl.slayer.utils import quantize as _quantize
from numba import njit, prange

IMPLS = ("auto", "fused", "slayer")
_state = {"impl": "auto", "calls": 0}


def set_neuron_impl(impl: str) -> None:
    """Choose the neuron and synapse implementation for every model:
    "auto" (fused on CPU, slayer on GPU), "fused" (CPU only) or "slayer"."""
    if impl not in IMPLS:
        raise ValueError(f"neuron implementation {impl!r}: expected one of {', '.join(IMPLS)}")
    _state["impl"] = impl


def neuron_impl() -> str:
    return _state["impl"]


def fused_calls() -> int:
    """How many neuron forwards ran the fused kernel in this process."""
    return _state["calls"]


# -- kernels ------------------------------------------------------------------
# Arrays are (N, C, P, T) views of (N, C, H, W, T) tensors, any strides.
# Every float is float32 and every float operation is the one slayer's torch
# code does, in the same order: no fastmath, so LLVM neither reorders nor
# contracts multiply-adds.

@njit(cache=True, inline="always")
def _shift12_to_zero(x):
    # slayer's right_shift_to_zero(x, 12), x / 4096 rounded towards zero;
    # branch-free: negative x gets 4095 added before the arithmetic shift
    return (x + ((x >> 63) & 4095)) >> 12


# Each thread steps a block of LANES neurons together through time: one
# neuron's step is a chain of dependent integer and float conversions, and
# interleaving independent neurons keeps the core busy during that latency.
LANES = 8


@njit(parallel=True, cache=True)
def _forward_kernel(z, cur0, vol0, cur_keep, vol_keep, scale, inv_scale, thr_reset, reset, thr_spike,
                    spikes, voltage, current, keep_current):
    n_b, n_c, n_p, n_t = z.shape
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for bc in prange(n_b * n_c):
        b = bc // n_c
        c = bc - b * n_c
        cur = np.empty(LANES, np.int64)
        vol = np.empty(LANES, np.int64)
        for p0 in range(0, n_p, LANES):
            m = min(LANES, n_p - p0)
            for j in range(m):
                # state * w_scale, truncated to int64, as _li_dynamics_fwd starts
                cur[j] = np.int64(cur0[b, c, p0 + j] * scale)
                vol[j] = np.int64(vol0[b, c, p0 + j] * scale)
            for t in range(n_t):
                for j in range(m):
                    p = p0 + j
                    i = _shift12_to_zero(cur[j] * cur_keep) + np.int64(z[b, c, p, t] * scale)
                    cur[j] = i
                    cur_f = np.float32(i) * inv_scale  # == i / scale: a power of two
                    if keep_current:
                        current[b, c, p, t] = cur_f
                    v = _shift12_to_zero(vol[j] * vol_keep) + np.int64(cur_f * scale)
                    vol_f = np.float32(v) * inv_scale
                    voltage[b, c, p, t] = vol_f
                    spikes[b, c, p, t] = one if vol_f >= thr_spike else zero
                    # torch compares the int64 state with the float threshold in float32
                    vol[j] = 0 if reset and np.float32(v) >= thr_reset else v


@njit(parallel=True, cache=True)
def _backward_kernel(grad_spikes, voltage, thr, tau, coef, vol_keep, cur_keep, grad_z):
    n_b, n_c, n_p, n_t = voltage.shape
    for bc in prange(n_b * n_c):
        b = bc // n_c
        c = bc - b * n_c
        g_cur = np.empty(LANES, np.float32)
        g_in = np.empty(LANES, np.float32)
        for p0 in range(0, n_p, LANES):
            m = min(LANES, n_p - p0)
            for t in range(n_t - 1, -1, -1):
                for j in range(m):
                    p = p0 + j
                    # Spike.backward: scale_rho / 2 / tau_rho * exp(-|v - th| / tau_rho) * grad
                    e = math.exp(-abs(voltage[b, c, p, t] - thr) / tau)
                    g_vol = coef * e * grad_spikes[b, c, p, t]
                    # _LIDynamics.backward of the voltage, then of the current
                    if t == n_t - 1:
                        g_cur[j] = g_vol
                        g_in[j] = g_vol
                    else:
                        g_cur[j] = vol_keep * g_cur[j] + g_vol
                        g_in[j] = cur_keep * g_in[j] + g_cur[j]
                    grad_z[b, c, p, t] = g_in[j]


# -- the neuron ---------------------------------------------------------------

def supports(neuron) -> bool:
    """Whether the fused kernel reproduces this neuron's forward exactly."""
    return (type(neuron) is _cuba.Neuron
            and neuron.shared_param and not neuron.persistent_state and not neuron.requires_grad
            and not neuron.graded_spike and neuron.norm is None and neuron.drop is None
            and not neuron.debug and not getattr(neuron, "complex", False)
            and neuron.current_decay.numel() == 1 and neuron.voltage_decay.numel() == 1
            and not neuron.current_decay.requires_grad and not neuron.voltage_decay.requires_grad
            and not neuron._forward_hooks and not neuron._forward_pre_hooks
            # states are divided by s_scale; a power of two makes that a product
            and neuron.s_scale > 0 and neuron.s_scale & (neuron.s_scale - 1) == 0)


def _use_fused(neuron, z: torch.Tensor) -> bool:
    impl = _state["impl"]
    if impl == "slayer":
        return False
    if impl == "fused" and z.device.type != "cpu":
        raise RuntimeError(f"neuron implementation 'fused' runs on the CPU only; the input is on {z.device} "
                           "(use set_neuron_impl('auto') or 'slayer')")
    return z.device.type == "cpu" and z.dtype == torch.float32 and z.dim() >= 3 and supports(neuron)


def _prepare_states(neuron, z: torch.Tensor) -> None:
    """The bookkeeping of `cuba.Neuron.dynamics` before it integrates: the
    neuron's shape on first use and state tensors sized to the batch."""
    if neuron.shape is None:
        neuron.shape = z.shape[1:-1]
        neuron.num_neurons = np.prod(neuron.shape)
    elif z.shape[1:-1] != neuron.shape:
        raise AssertionError(f"Input tensor shape ({z.shape}) does not match with Neuron shape ({neuron.shape}).")
    dtype, device = neuron.current_state.dtype, neuron.current_state.device
    if neuron.current_state.shape[0] != z.shape[0]:
        neuron.current_state = torch.zeros(z.shape[:-1]).to(dtype).to(device)
        neuron.voltage_state = torch.zeros(z.shape[:-1]).to(dtype).to(device)
    if neuron.current_state.shape[1:] != neuron.shape:
        neuron.current_state = neuron.current_state * torch.ones(z.shape[:-1]).to(dtype).to(device)
        neuron.voltage_state = neuron.voltage_state * torch.ones(z.shape[:-1]).to(dtype).to(device)


def _as_ncpt(t: torch.Tensor) -> torch.Tensor:
    """(N, C, ..., T) -> (N, C, P, T), a view whenever the strides allow."""
    shape = (t.shape[0], t.shape[1], -1, t.shape[-1])
    try:
        return t.view(shape)
    except RuntimeError:
        return t.reshape(shape)


def _dense_layout(t: torch.Tensor):
    """(shape, strides) when t is a permutation of a contiguous tensor, else None."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda d: (d[1], d[0])):
        if size != 1 and stride != expected:
            return None
        expected *= size
    return tuple(t.shape), tuple(t.stride())


class _Params:
    """The constants of one neuron, computed with slayer's own tensor ops so
    that every float32 constant has slayer's exact value."""

    def __init__(self, neuron):
        scale = neuron.s_scale
        cur_q = _quantize(neuron.current_decay).detach()
        vol_q = _quantize(neuron.voltage_decay).detach()
        # _li_dynamics_fwd: decay_int = (1 << 12) - decay.to(int64)
        self.cur_keep = int((1 << 12) - cur_q.to(torch.int64).item())
        self.vol_keep = int((1 << 12) - vol_q.to(torch.int64).item())
        self.scale = np.float32(scale)
        self.inv_scale = np.float32(1.0 / scale)
        threshold = neuron.threshold + neuron.threshold_eps
        thr_reset = threshold * scale  # `threshold *= w_scale` in _li_dynamics_fwd
        self.reset = bool(thr_reset > 0)
        self.thr_reset = np.float32(thr_reset)
        self.thr_spike = np.float32(threshold)
        # Spike.backward's float32 tensors
        f32 = dict(dtype=torch.float32)
        tau = torch.tensor(neuron.tau_rho * _cuba.TAU_RHO_MULT, **f32)
        scale_rho = torch.tensor(neuron.scale_rho * _cuba.SCALE_RHO_MULT, **f32)
        self.tau = np.float32(tau.item())
        self.coef = np.float32((scale_rho / 2 / tau).item())
        # _li_dynamics_bwd: decay = 1 - decay / (1 << 12)
        self.bwd_cur_keep = np.float32((1 - cur_q / (1 << 12)).item())
        self.bwd_vol_keep = np.float32((1 - vol_q / (1 << 12)).item())


def _match_threads() -> None:
    # numba sizes its pool from the CPU count; follow torch's setting instead
    # (e.g. one thread per process under torchrun) so the two never oversubscribe
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _channel_minor(z: torch.Tensor) -> bool:
    """Whether neighbouring channels of one pixel sit closer in memory than
    neighbouring pixels (a channels-last frame layout)."""
    return z.dim() == 5 and z.shape[1] > 1 and z.stride(1) < z.stride(3)


def _kernel_views(channel_minor: bool, *tensors):
    """(N, C, P, T) numpy views, or (N, P, C, T) when the kernels should step
    through channels innermost; the kernels treat both alike."""
    views = [_as_ncpt(t).numpy() for t in tensors]
    return [a.swapaxes(1, 2) for a in views] if channel_minor else views


def _alloc(shape, layout):
    if layout is None:
        return torch.empty(shape, dtype=torch.float32)
    return torch.empty_strided(*layout, dtype=torch.float32)


def _run_forward(neuron, z: torch.Tensor, keep_current: bool):
    _match_threads()
    _prepare_states(neuron, z)
    p = _Params(neuron)
    z = z.detach()
    n, c = z.shape[:2]
    layout = _dense_layout(z)
    minor = _channel_minor(z)
    spikes = torch.empty(z.shape, dtype=z.dtype)  # contiguous, as slayer's
    voltage = _alloc(z.shape, layout)  # the kernels' own: z's memory order
    current = torch.empty(z.shape if keep_current else (1, 1, 1, 1), dtype=z.dtype)
    # initial states as (N, C, P, 1)
    cur0 = neuron.current_state.detach().reshape(n, c, -1, 1)
    vol0 = neuron.voltage_state.detach().reshape(n, c, -1, 1)
    zv, c0, v0, sv, vv = _kernel_views(minor, z, cur0, vol0, spikes, voltage)
    cv = _kernel_views(minor, current)[0] if keep_current else current.numpy()
    _forward_kernel(zv, c0[..., 0], v0[..., 0], p.cur_keep, p.vol_keep, p.scale, p.inv_scale, p.thr_reset,
                    p.reset, p.thr_spike, sv, vv, cv, keep_current)
    _state["calls"] += 1
    return (current if keep_current else None), voltage, spikes, p


class _FusedCuba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, neuron):
        _, voltage, spikes, p = _run_forward(neuron, z, keep_current=False)
        ctx.save_for_backward(voltage)
        ctx.params = p
        ctx.minor = _channel_minor(z)
        ctx.layout = _dense_layout(z)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        (voltage,) = ctx.saved_tensors
        p = ctx.params
        _match_threads()
        # in z's memory order: the synapse's backward reads it as it wrote z
        grad_z = _alloc(voltage.shape, ctx.layout)
        gs, vv, gz = _kernel_views(ctx.minor, grad_spikes, voltage, grad_z)
        _backward_kernel(gs, vv, p.thr_spike, p.tau, p.coef, p.bwd_vol_keep, p.bwd_cur_keep, gz)
        return grad_z, None


def cuba_forward(neuron, z: torch.Tensor) -> torch.Tensor:
    """The spikes `neuron(z)` returns, from the fused kernel when it applies."""
    if not _use_fused(neuron, z):
        return neuron(z)
    if torch.is_grad_enabled() and z.requires_grad:
        return _FusedCuba.apply(z, neuron)
    return _run_forward(neuron, z, keep_current=False)[2]  # no voltage kept for a backward


def cuba_dynamics(neuron, z: torch.Tensor):
    """(current, voltage, spikes) of the fused forward, no autograd: the
    tensors slayer's `neuron.dynamics(z)` and `neuron.spike(voltage)` give."""
    if not (z.device.type == "cpu" and z.dtype == torch.float32 and supports(neuron)):
        raise ValueError("the fused CUBA kernel does not support this neuron or input")
    current, voltage, spikes, _ = _run_forward(neuron, z, keep_current=True)
    return current, voltage, spikes


# -- synapses -----------------------------------------------------------------
# A (k, k, 1) Conv3d over (N, C, H, W, T) is a k x k Conv2d over the N*T
# frames. The frames are gathered once (N, C, H, W, T) -> (N*T, C, H, W)
# and the result is handed back as a (N, C', H', W', T) view of the
# frame-major output, which the fused neuron reads in place.

# Which synapse kinds run as 2-D operations over frames, and in which memory
# format; slayer's own forward runs the others. Chosen by measured training
# throughput (`python -m toolchain.bench.training`).
FRAME_SYNAPSES = {slayer.synapse.Conv, slayer.synapse.ConvTranspose, slayer.synapse.Pool}
CHANNELS_LAST = True


def _frames(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w, t = x.shape
    if CHANNELS_LAST:
        return x.permute(0, 4, 2, 3, 1).reshape(n * t, h, w, c).permute(0, 3, 1, 2)
    return x.permute(0, 4, 1, 2, 3).reshape(n * t, c, h, w)


def _unframes(y: torch.Tensor, n: int, t: int) -> torch.Tensor:
    return y.view(n, t, *y.shape[1:]).permute(0, 2, 3, 4, 1)


def _weight(synapse) -> torch.Tensor:
    """The weight slayer's forward uses: after the weight-norm pre-hook
    (recomputed here exactly as `synapse(x)` would) and `_pre_hook_fx`."""
    for hook in synapse._forward_pre_hooks.values():
        hook(synapse, ())
    weight = synapse.weight
    return weight if synapse._pre_hook_fx is None else synapse._pre_hook_fx(weight)


def _conv(synapse, x):
    n, t = x.shape[0], x.shape[-1]
    w = _weight(synapse)[..., 0]
    bias = synapse.bias
    y = F.conv2d(_frames(x), w, bias, synapse.stride[:2], synapse.padding[:2], synapse.dilation[:2],
                 synapse.groups)
    return _unframes(y, n, t)


def _conv_transpose(synapse, x):
    n, t = x.shape[0], x.shape[-1]
    w = _weight(synapse)[..., 0]
    y = F.conv_transpose2d(_frames(x), w, synapse.bias, synapse.stride[:2], synapse.padding[:2],
                           synapse.output_padding[:2], synapse.groups, synapse.dilation[:2])
    return _unframes(y, n, t)


class _SumPool(torch.autograd.Function):
    """Sum over non-overlapping k x k windows with per-tap weights, on
    (N, C, H, W, T) with H and W multiples of k. The input gradient is one
    broadcast product (autograd through strided slices would zero-fill a
    full-size tensor per tap)."""

    @staticmethod
    def forward(ctx, x, weight):
        n, c, h, w, t = x.shape
        kh, kw = weight.shape
        xs = x.view(n, c, h // kh, kh, w // kw, kw, t)
        y = None
        for a in range(kh):  # tap order of the Conv3d slayer runs
            for b in range(kw):
                term = xs[:, :, :, a, :, b, :] * weight[a, b]
                y = term if y is None else y + term
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        n, c, hk, wk, t = grad.shape
        kh, kw = weight.shape
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad[:, :, :, None, :, None, :] * weight.view(kh, 1, kw, 1)).reshape(n, c, hk * kh, wk * kw, t)
        if ctx.needs_input_grad[1]:
            xs = x.view(n, c, hk, kh, wk, kw, t)
            grad_w = torch.stack([(grad * xs[:, :, :, a, :, b, :]).sum() for a in range(kh) for b in range(kw)])
            grad_w = grad_w.view(kh, kw)
        return grad_x, grad_w


def _pool(synapse, x):
    # slayer pads odd sizes up, then sums each k x k window with the scalar
    # weights of its (1, 1, k, k, 1) kernel; windows never straddle channels
    h, w = x.shape[2:4]
    kh, kw = synapse.weight.shape[2:4]
    if h % kh or w % kw:
        x = F.pad(x, (0, 0, 0, w % kw, 0, h % kh))
    return _SumPool.apply(x.contiguous(), _weight(synapse)[0, 0, :, :, 0])


def _plain_3d(synapse) -> bool:
    """A (k, k, 1) kernel with no stride, padding or dilation along time."""
    return (synapse.weight.dim() == 5 and synapse.weight.shape[-1] == 1 and tuple(synapse.stride[2:]) == (1,)
            and tuple(synapse.padding[2:]) == (0,) and tuple(synapse.dilation[2:]) == (1,)
            and getattr(synapse, "padding_mode", "zeros") == "zeros")


def _synapse_kernel(synapse, x):
    if synapse._forward_hooks or torch.nn.modules.module._global_forward_hooks \
            or torch.nn.modules.module._global_forward_pre_hooks:
        return None
    from torch.nn.utils.weight_norm import WeightNorm
    if any(not isinstance(h, WeightNorm) for h in synapse._forward_pre_hooks.values()):
        return None
    if x.dim() != 5 or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    kind = type(synapse)
    if kind not in FRAME_SYNAPSES:
        return None
    if kind is slayer.synapse.Conv and _plain_3d(synapse):
        return _conv
    if kind is slayer.synapse.ConvTranspose and _plain_3d(synapse) and tuple(synapse.output_padding[2:]) == (0,):
        return _conv_transpose
    if (kind is slayer.synapse.Pool and synapse.bias is None and _plain_3d(synapse)
            and tuple(synapse.stride[:2]) == tuple(synapse.weight.shape[2:4])
            and tuple(synapse.padding[:2]) == (0, 0) and tuple(synapse.dilation[:2]) == (1, 1)
            # slayer pads by size % k, which reaches a multiple of k only for these
            and all((n + n % k) % k == 0 for n, k in zip(x.shape[2:4], synapse.weight.shape[2:4], strict=True))):
        return _pool
    return None


def synapse_forward(synapse, x: torch.Tensor) -> torch.Tensor:
    """What `synapse(x)` returns (to float rounding; bitwise for spikes
    into quantized weights), computed as 2-D operations over the N*T frames
    when the implementation switch and the synapse allow it."""
    impl = _state["impl"]
    if impl == "slayer":
        return synapse(x)
    if impl == "fused" and x.device.type != "cpu":
        raise RuntimeError(f"neuron implementation 'fused' runs on the CPU only; the input is on {x.device}")
    kernel = _synapse_kernel(synapse, x)
    return synapse(x) if kernel is None else kernel(synapse, x)
