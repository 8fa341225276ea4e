"""A fused CUBA-LIF neuron and 2-D synapses for training on the CPU.

On the CPU slayer steps `cuba.Neuron` in a Python loop over time: two
`_LIDynamics` passes (current, then voltage) of a few small int64 tensor
ops per step, then the spike function, and the same again backwards. Here
one numba kernel runs all T steps of blocks of neurons, vectorised over the
neurons of a block, in parallel over blocks, with slayer's exact fixed-point
arithmetic, so spikes, currents and voltages are bit-identical to slayer's
CPU path; it writes each spike where the next layer's one-step axon delay
puts it. The backward (slayer's surrogate gradient followed by the two
reversed leaky integrations of `_LIDynamics`) is one reversed pass.

slayer's synapses are Conv3d with a (k, k, 1) kernel over (N, C, H, W, T);
`synapse_forward` computes the same weight (weight norm, then the
quantizing `_pre_hook_fx`) and runs it as one 2-D convolution over N*T
channels-last frames (pooling as a depthwise one). Every tensor between
layers stays in that frame-major layout, forwards and backwards, so no
layer copies its input.

    cuba_forward(neuron, z, d)   what `neuron(z)` returns (the spikes), d steps later
    cuba_dynamics(neuron, z)     (current, voltage, spikes), for tests
    synapse_forward(synapse, x)  what `synapse(x)` returns
    set_neuron_impl("auto" | "fused" | "slayer"), neuron_impl(), fused_calls()

"auto" uses the fused path for CPU tensors and slayer's (CUDA kernels) for
GPU tensors; any neuron or synapse configuration outside what is
implemented here (learnable or per-channel decays, persistent state,
graded spikes, norm, dropout, hooks, other dtypes) goes to slayer.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F
from lava.lib.dl import slayer
from lava.lib.dl.slayer.neuron import cuba as _cuba
from lava.lib.dl.slayer.utils import quantize as _quantize
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

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
# Arrays are (N, S, M): frame-major, the M = C*H*W neurons of one step of one
# sample contiguous with the channels innermost, which is how the 2-D synapses
# below write their output (`frame_major`). Every float is float32 and every
# float operation is the one slayer's torch code does, in the same order: no
# fastmath, so LLVM neither reorders nor contracts multiply-adds; the inner
# loops run over contiguous neurons, which LLVM vectorises.

@njit(cache=True, inline="always")
def _shift12_to_zero(x):
    # slayer's right_shift_to_zero(x, 12), x / 4096 rounded towards zero;
    # branch-free: negative x gets 4095 added before the arithmetic shift
    return (x + ((x >> 63) & 4095)) >> 12


# Each job steps a block of BLOCK neurons of one sample through all steps:
# its state (2 x 16 kB) stays in L1 while the steps stream past.
BLOCK = 1024


@njit(cache=True, inline="always")
def _job_block(job, blocks, n_m):
    """Job `job` of a kernel's samples x blocks: (sample, first neuron, end)."""
    b = job // blocks
    i0 = (job - b * blocks) * BLOCK
    return b, i0, min(n_m, i0 + BLOCK)


@njit(cache=True, inline="always")
def _forward_row(z, cur, vol, spikes, voltage, current, cur_keep, vol_keep, scale, inv_scale, thr_reset, reset,
                 thr_spike):
    """One step of a block of neurons: rows of z, spikes, voltage, current;
    the int64 states cur and vol updated in place. Two loops without a
    branch, each over few enough arrays that LLVM vectorises it (with more,
    it gives up checking every pair for overlap and runs scalar)."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for j in range(z.shape[0]):
        c = np.int64(z[j] * scale)
        if cur_keep:  # (a current decay of 1, the presets', keeps nothing: no product to make)
            c += _shift12_to_zero(cur[j] * cur_keep)
        cur[j] = c
        current[j] = np.float32(c) * inv_scale  # == c / scale: a power of two
    for j in range(z.shape[0]):
        v = _shift12_to_zero(vol[j] * vol_keep) + np.int64(current[j] * scale)
        vol_f = np.float32(v) * inv_scale
        voltage[j] = vol_f
        spikes[j] = one if vol_f >= thr_spike else zero
        # torch compares the int64 state with the float threshold in float32
        vol[j] = 0 if reset and np.float32(v) >= thr_reset else v


@njit(parallel=True, cache=True)
def _forward_kernel(z, cur0, vol0, cur_keep, vol_keep, scale, inv_scale, thr_reset, reset, thr_spike, delay,
                    spikes, voltage, current, keep_current):
    n_b, n_t, n_m = z.shape
    blocks = (n_m + BLOCK - 1) // BLOCK
    for job in prange(n_b * blocks):
        b, i0, i1 = _job_block(job, blocks, n_m)
        # state * w_scale, truncated to int64, as _li_dynamics_fwd starts
        cur = (cur0[b, i0:i1] * scale).astype(np.int64)
        vol = (vol0[b, i0:i1] * scale).astype(np.int64)
        lost = np.empty(i1 - i0, np.float32)  # spikes the delay pushes past the last step
        unkept = np.empty(i1 - i0, np.float32)  # currents, unless kept
        for t in range(min(delay, n_t)):  # the axon delay: nothing leaves before step `delay`
            spikes[b, t, i0:i1] = 0
        for t in range(n_t):
            out = spikes[b, t + delay, i0:i1] if t + delay < n_t else lost
            _forward_row(z[b, t, i0:i1], cur, vol, out, voltage[b, t, i0:i1],
                         current[b, t, i0:i1] if keep_current else unkept, cur_keep, vol_keep, scale, inv_scale,
                         thr_reset, reset, thr_spike)


@intrinsic
def _bits_to_float32(typingctx, bits):
    """The float32 whose bits are the int32 `bits` (LLVM's bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(cache=True, inline="always")
def _exp_nonpositive(x):
    """exp(x) in float32 for x <= 0, within 1e-7 relative (exp(-87) below -87),
    in operations LLVM vectorises (math.exp is a scalar call per element):
    x = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite: n * the high part of ln2
    is exact), exp(r) by its series to r^7, 2^n from its exponent bits."""
    x = max(x, np.float32(-87.0))
    n = np.float32(np.int32(x * np.float32(1.4426950408889634) - np.float32(0.5)))
    r = x - n * np.float32(0.693145751953125)
    r = r - n * np.float32(1.4286068203094172e-06)
    p = np.float32(1 / 5040)
    p = p * r + np.float32(1 / 720)
    p = p * r + np.float32(1 / 120)
    p = p * r + np.float32(1 / 24)
    p = p * r + np.float32(1 / 6)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * _bits_to_float32((np.int32(n) + np.int32(127)) << np.int32(23))


@njit(cache=True, inline="always")
def _backward_row(grad_spikes, voltage, g_cur, g_in, grad_z, thr, tau, coef, vol_keep, cur_keep):
    # two loops over few arrays each, which LLVM vectorises without runtime
    # checks of every pair of arrays for overlap
    for j in range(voltage.shape[0]):
        # Spike.backward: scale_rho / 2 / tau_rho * exp(-|v - th| / tau_rho) * grad
        grad_z[j] = coef * _exp_nonpositive(-abs(voltage[j] - thr) / tau) * grad_spikes[j]
    for j in range(voltage.shape[0]):
        # _LIDynamics.backward of the voltage, then of the current
        g_cur[j] = vol_keep * g_cur[j] + grad_z[j]
        g_in[j] = cur_keep * g_in[j] + g_cur[j]
        grad_z[j] = g_in[j]


@njit(parallel=True, cache=True)
def _backward_kernel(grad_spikes, voltage, thr, tau, coef, vol_keep, cur_keep, delay, grad_z):
    n_b, n_t, n_m = voltage.shape
    blocks = (n_m + BLOCK - 1) // BLOCK
    for job in prange(n_b * blocks):
        b, i0, i1 = _job_block(job, blocks, n_m)
        g_cur = np.zeros(i1 - i0, np.float32)
        g_in = np.zeros(i1 - i0, np.float32)
        nothing = np.zeros(i1 - i0, np.float32)  # the gradient of a spike that left past the last step
        for t in range(n_t - 1, -1, -1):
            # the spike of step t left at t + delay
            _backward_row(grad_spikes[b, t + delay, i0:i1] if t + delay < n_t else nothing, voltage[b, t, i0:i1],
                          g_cur, g_in, grad_z[b, t, i0:i1], thr, tau, coef, vol_keep, cur_keep)


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


def _swap_ct(dim: int) -> tuple[int, ...]:
    """The permutation between (N, C, ..., T) and frame-major (N, T, ..., C),
    both ways (it swaps two axes)."""
    return (0, dim - 1, *range(2, dim - 1), 1)


def _frames_view(t: torch.Tensor) -> np.ndarray:
    """(N, S, M) numpy view of a (N, C, ..., T) float32 tensor in the kernels'
    frame-major, channels-innermost order; a copy only when t is not laid out so."""
    fm = t.permute(_swap_ct(t.dim()))
    return fm.contiguous().view(t.shape[0], t.shape[-1], -1).numpy()


def _frames_empty(shape: torch.Size) -> torch.Tensor:
    """An uninitialised (N, C, ..., T) float32 tensor laid out frame-major, channels innermost."""
    swap = _swap_ct(len(shape))
    return torch.empty([shape[i] for i in swap], dtype=torch.float32).permute(swap)


def _state_rows(state: torch.Tensor, n: int) -> np.ndarray:
    """A neuron state (N, C, ...) as (N, M) in the kernels' neuron order."""
    order = (0, *range(2, state.dim()), 1)
    return state.detach().to(torch.float32).permute(order).reshape(n, -1).contiguous().numpy()


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


def _run_forward(neuron, z: torch.Tensor, keep_current: bool, delay: int):
    _match_threads()
    _prepare_states(neuron, z)
    p = _Params(neuron)
    z = z.detach()
    n = z.shape[0]
    spikes, voltage = _frames_empty(z.shape), _frames_empty(z.shape)
    current = _frames_empty(z.shape) if keep_current else None
    _forward_kernel(_frames_view(z), _state_rows(neuron.current_state, n), _state_rows(neuron.voltage_state, n),
                    p.cur_keep, p.vol_keep, p.scale, p.inv_scale, p.thr_reset, p.reset, p.thr_spike, delay,
                    _frames_view(spikes), _frames_view(voltage),
                    _frames_view(current) if keep_current else np.empty((1, 1, 1), np.float32), keep_current)
    _state["calls"] += 1
    return current, voltage, spikes, p


class _FusedCuba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, neuron, delay):
        _, voltage, spikes, p = _run_forward(neuron, z, keep_current=False, delay=delay)
        ctx.save_for_backward(voltage)
        ctx.params, ctx.delay = p, delay
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        (voltage,) = ctx.saved_tensors
        p = ctx.params
        _match_threads()
        # frame-major: the synapse's backward reads it as it wrote z
        grad_z = _frames_empty(voltage.shape)
        _backward_kernel(_frames_view(grad_spikes), _frames_view(voltage), p.thr_spike, p.tau, p.coef,
                         p.bwd_vol_keep, p.bwd_cur_keep, ctx.delay, _frames_view(grad_z))
        return grad_z, None, None


class _Delay(torch.autograd.Function):
    """Frames (N, T, ...) shifted `steps` later: zeros first, the last `steps` dropped."""

    @staticmethod
    def forward(ctx, frames, steps):
        ctx.steps = steps
        out = torch.empty_like(frames, memory_format=torch.contiguous_format)
        out[:, :steps] = 0
        out[:, steps:] = frames[:, : frames.shape[1] - steps]
        return out

    @staticmethod
    def backward(ctx, grad):
        steps = ctx.steps
        grad_frames = torch.empty_like(grad, memory_format=torch.contiguous_format)
        grad_frames[:, grad.shape[1] - steps:] = 0  # what the delay dropped had no effect
        grad_frames[:, : grad.shape[1] - steps] = grad[:, steps:]
        return grad_frames, None


def delay(x: torch.Tensor, steps: int) -> torch.Tensor:
    """x (N, C, ..., T) shifted `steps` later in time, zeros first: slayer's
    `axon.delay` (same values and gradient) in one copy, made in frame-major
    order (the synapses' and the neurons' layout), so that the synapse reading
    it copies nothing."""
    if not 0 < steps <= x.shape[-1]:
        return x if steps == 0 else torch.zeros_like(x)
    swap = _swap_ct(x.dim())
    return _Delay.apply(x.permute(swap), steps).permute(swap)


def cuba_forward(neuron, z: torch.Tensor, delay_steps: int = 0) -> torch.Tensor:
    """The spikes `neuron(z)` returns, `delay_steps` later (slayer's
    `axon.delay`), from the fused kernel when it applies: it writes each spike
    where the delay puts it, so the delay costs no copy."""
    if not _use_fused(neuron, z):
        spikes = neuron(z)
        return delay(spikes, delay_steps) if delay_steps else spikes
    if not 0 <= delay_steps <= z.shape[-1]:
        raise ValueError(f"a delay of {delay_steps} steps on {z.shape[-1]} steps")
    if torch.is_grad_enabled() and z.requires_grad:
        return _FusedCuba.apply(z, neuron, delay_steps)
    return _run_forward(neuron, z, keep_current=False, delay=delay_steps)[2]  # no voltage kept for a backward


def cuba_dynamics(neuron, z: torch.Tensor):
    """(current, voltage, spikes) of the fused forward, no autograd: the
    tensors slayer's `neuron.dynamics(z)` and `neuron.spike(voltage)` give."""
    if not (z.device.type == "cpu" and z.dtype == torch.float32 and supports(neuron)):
        raise ValueError("the fused CUBA kernel does not support this neuron or input")
    current, voltage, spikes, _ = _run_forward(neuron, z, keep_current=True, delay=0)
    return current, voltage, spikes


# -- synapses -----------------------------------------------------------------
# A (k, k, 1) Conv3d over (N, C, H, W, T) is a k x k Conv2d over the N*T
# frames. Every tensor between layers is laid out frame-major with the
# channels innermost, (N, T, H, W, C) in memory: the N*T channels-last frames
# are then a view of it, and so is the (N, C', H', W', T) result the fused
# neuron reads and writes in that order. Only the network's input is copied.

# Which synapse kinds run as 2-D operations over frames; slayer's own forward
# runs the others.
FRAME_SYNAPSES = {slayer.synapse.Conv, slayer.synapse.ConvTranspose, slayer.synapse.Pool}


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W, T) -> (N*T, C, H, W) channels-last: a view when x is frame-major."""
    n, c, h, w, t = x.shape
    return x.permute(0, 4, 2, 3, 1).reshape(n * t, h, w, c).permute(0, 3, 1, 2)


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
    frame-major (N, T, H, W, C) with H and W multiples of k, the layout the
    neurons and the frame synapses share: a depthwise stride-k convolution of
    the N*T channels-last frames. Its input gradient is one product per tap
    (each input feeds one window), which is faster than torch's depthwise
    transposed convolution on the CPU."""

    @staticmethod
    def forward(ctx, x, weight):
        n, t, h, w, c = x.shape
        kh, kw = weight.shape
        kernel = weight.expand(c, 1, kh, kw).contiguous()
        y = F.conv2d(x.view(n * t, h, w, c).permute(0, 3, 1, 2), kernel, stride=(kh, kw), groups=c)
        ctx.save_for_backward(x if weight.requires_grad else None, kernel)
        ctx.weight_shape = (kh, kw)
        return y.permute(0, 2, 3, 1).view(n, t, h // kh, w // kw, c)

    @staticmethod
    def backward(ctx, grad):
        x, kernel = ctx.saved_tensors
        n, t, hk, wk, c = grad.shape
        kh, kw = ctx.weight_shape
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # each input feeds one window: one product per tap, into its strided view
            grad_x = grad.new_empty((n, t, hk, kh, wk, kw, c))
            for a in range(kh):
                for b in range(kw):
                    torch.mul(grad, kernel[0, 0, a, b], out=grad_x[:, :, :, a, :, b, :])
            grad_x = grad_x.view(n, t, hk * kh, wk * kw, c)
        if ctx.needs_input_grad[1]:
            xs = x.view(n, t, hk, kh, wk, kw, c)
            grad_w = torch.stack([(grad * xs[:, :, :, a, :, b, :]).sum() for a in range(kh) for b in range(kw)])
            grad_w = grad_w.view(kh, kw)
        return grad_x, grad_w


def _pool(synapse, x):
    # slayer pads odd sizes up, then sums each k x k window with the scalar
    # weights of its (1, 1, k, k, 1) kernel; windows never straddle channels
    h, w = x.shape[2:4]
    kh, kw = synapse.weight.shape[2:4]
    frames = x.permute(0, 4, 2, 3, 1)  # frame-major: a view of what the neurons wrote
    if h % kh or w % kw:
        frames = F.pad(frames, (0, 0, 0, w % kw, 0, h % kh))
    y = _SumPool.apply(frames.contiguous(), _weight(synapse)[0, 0, :, :, 0])
    return y.permute(0, 4, 2, 3, 1)


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
