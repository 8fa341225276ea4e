"""Input encoders: a frame in [0, 1] becomes T time steps of network input.

Loihi input spikes are binary and unsigned, so every encoder takes values in
[0, 1] (the DDD17 reader keeps ON and OFF histograms as separate channels
instead of the paper's signed [-0.5, 0.5] values).
"""
from __future__ import annotations

import torch

from ..core.errors import ToolchainError

ENCODINGS = ("poisson", "rate", "direct")


def encode(frame: torch.Tensor, encoding: str, time_steps: int,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """(..., C, H, W) in [0, 1] -> (..., C, H, W, T) float32.

    poisson: a Bernoulli(frame) spike per step, the paper's rate code.
    rate: deterministic, round(frame * T) spikes spread evenly over the steps.
    direct: the frame itself at every step (for a non-spiking first layer).
    """
    if time_steps < 1:
        raise ToolchainError(f"data.time_steps must be >= 1, got {time_steps}")
    frame = frame.float()
    if encoding == "poisson":
        noise = torch.rand(frame.shape + (time_steps,), generator=generator, device=frame.device)
        return (noise < frame.clamp(0, 1).unsqueeze(-1)).float()
    if encoding == "rate":
        # Spike when frame * t + 1/2 crosses an integer: exactly round(frame * T)
        # spikes, evenly spaced. Float64 keeps the crossings exact for the
        # usual T.
        f = frame.clamp(0, 1).double().unsqueeze(-1)
        t = torch.arange(time_steps + 1, dtype=torch.float64, device=frame.device)
        acc = torch.floor(f * t + 0.5)
        return (acc[..., 1:] > acc[..., :-1]).float()
    if encoding == "direct":
        return frame.unsqueeze(-1).expand(*frame.shape, time_steps).contiguous()
    raise ToolchainError(f"data.encoding: unknown encoding {encoding!r} (choose from {', '.join(ENCODINGS)})")
