"""Loihi's fixed point, in one place: its constants, weight quantization and the CUBA-LIF step.

Units (slayer's CUBA conventions, which Lava's `PyLifModelBitAcc` and Loihi 2 share):
- a weight of 1.0 is `W_SCALE` = 64 synapse units; synapses are 8-bit, even,
  in [WEIGHT_MIN, WEIGHT_MAX];
- a neuron receives its summed synaptic input shifted left by `INPUT_SHIFT`
  (6), so one weight unit is `STATE_SCALE` = 4096 state units, and the
  threshold `vThMant` is compared after the same shift;
- decays are 12-bit: a state keeps `DECAY_SCALE - decay` parts in 4096 per
  step, truncated towards zero;
- currents wrap at 24 bits and voltages clip there (`U_MAX`).

Time: every connection delivers at step t what its source sent at t-1, so a
net whose longest input-to-readout path crosses D connections (its pipeline
depth) answers D steps late. A frame of T input steps runs `frame_steps` =
T + D steps: input during the first T, zeros after; the readout integrates
all of them, so every layer, the deepest included, passes on T informative
steps. Spikes sent in the last step reach nothing inside the frame, so a
frame's spikes are those of its first T + D - 1 steps (`spike_steps`), the
length of slayer's time axis in training.

`cuba_step` is the reference every backend is tested against: the emulator's
compiled kernel, Lava's own model and the ONNX step graph compute exactly it.
It runs on integer tensors, or float64 tensors holding integers (ONNX has
no integer shifts), with the same result.
"""
from __future__ import annotations

import torch

W_SCALE = 64
WEIGHT_MIN, WEIGHT_MAX = -256, 254
INPUT_SHIFT = 6
STATE_SCALE = W_SCALE << INPUT_SHIFT  # 4096: a weight of 1.0 in state units
DECAY_SCALE = 4096
U_MAX = 1 << 23  # Lava's max_uv_val: currents wrap and voltages clip at 24 bits
VTH_MAX = (1 << 17) - 1  # the largest threshold mantissa
# The readout is a neuron that never fires: u is the step's input alone
# (iDecay 4096), v sums u without leak (vDecay 0), threshold at its maximum.
READOUT_NEURON = dict(iDecay=DECAY_SCALE, vDecay=0, vThMant=VTH_MAX)


def quantize_weight(w: torch.Tensor, descale: bool = False) -> torch.Tensor:
    """slayer's `quantize_8bit` at weight scale 64: steps of 2/64 (round half to
    even, as slayer), clamped to [-256, 254]/64; in synapse units with `descale`."""
    q = torch.round(w * (W_SCALE / 2)) * (2 / W_SCALE)
    q = q.clamp(WEIGHT_MIN / W_SCALE, WEIGHT_MAX / W_SCALE)
    return q * W_SCALE if descale else q


def decay(x: torch.Tensor, keep: int) -> torch.Tensor:
    """Lava's sign(x) * (|x * keep| >> 12): the decayed state, truncated towards zero."""
    return torch.div(x * keep, DECAY_SCALE, rounding_mode="trunc")


def wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """Two's-complement wrap-around of a 32-bit register."""
    return torch.remainder(x + (1 << 31), 1 << 32) - (1 << 31)


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


def cuba_step(a: torch.Tensor, u: torch.Tensor, v: torch.Tensor, *, i_decay: int, v_decay: int,
              v_th_mant: int, wrap: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of Loihi's CUBA-LIF (Lava `PyLifModelBitAcc`, hard reset).

    a: the step's summed synaptic input in synapse units; u, v: the state in
    state units. Returns (u, v after reset, spikes as bool). `wrap=False`
    skips the 32-bit wrap-arounds, which change nothing while |a| < 2^24.
    """
    w = wrap_int32 if wrap else _unchanged
    u = w(decay(u, DECAY_SCALE - i_decay) + w(w(a) * (1 << INPUT_SHIFT)))
    u = torch.where(u > U_MAX, u - 2 * U_MAX, u)  # Lava wraps the current once, asymmetrically
    u = torch.where(u <= -U_MAX, u + 2 * U_MAX, u)
    v = torch.clamp(decay(v, DECAY_SCALE - v_decay) + u, -U_MAX + 1, U_MAX - 1)
    s = v > (v_th_mant << INPUT_SHIFT)
    v = torch.where(s, torch.zeros_like(v), v)
    return u, v, s


def cuba_run(a: torch.Tensor, i_decay: int, v_decay: int, v_th_mant: int, *, wrap: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """`cuba_step` over (S, ...) input from a zero state -> (spikes bool (S, ...), final v)."""
    u = torch.zeros_like(a[0])
    v = torch.zeros_like(a[0])
    spikes = torch.empty(a.shape, dtype=torch.bool, device=a.device)
    for t in range(a.shape[0]):
        u, v, spikes[t] = cuba_step(a[t], u, v, i_decay=i_decay, v_decay=v_decay, v_th_mant=v_th_mant,
                                    wrap=wrap)
    return spikes, v


def pipeline_depth(sources: list[list[int]], delays: list[list[int]] | None = None) -> int:
    """Steps on the longest path from the input (0) to the last layer: one per
    connection plus its synaptic delay; `sources[i - 1]` lists the layers that
    layer i reads, `delays[i - 1]` (default 0) the delay of each."""
    depth = [0]
    for i, srcs in enumerate(sources):
        dl = delays[i] if delays is not None else [0] * len(srcs)
        depth.append(max(depth[s] + 1 + d for s, d in zip(srcs, dl, strict=True)))
    return depth[-1]


def frame_steps(time_steps: int, depth: int) -> int:
    """Steps one frame runs: its T input steps and D more while the deepest path drains."""
    return time_steps + depth


def spike_steps(time_steps: int, depth: int) -> int:
    """Steps whose spikes reach the readout inside the frame (slayer's time axis)."""
    return time_steps + depth - 1


def readout_value(voltage, time_steps: int):
    """The readout integrator's voltage as the float the torch model's readout
    equals: the mean synaptic input over T steps, in weight units."""
    return voltage / (STATE_SCALE * time_steps)
