"""Everything after training: `.net` export, Lava execution, the bit-exact emulator.

    net = deploy.load("model.net")
    result = net.run(frames)                 # (N, C, H, W, T) spikes, emulator
    result = net.run(frames, backend="lava")  # the same answers from Lava
    result.spikes["conv1"], result.readout, result.class_map
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from toolchain.core.loihi import readout_value

BACKENDS = ("emulator", "lava")


@dataclass
class Result:
    """One run over N frames.

    spikes: {layer name: (N, C, H, W, T + D - 1) bool} (empty when not kept; D
    the net's pipeline depth: the steps whose spikes reach the readout);
    counts: {layer name: (N,) spikes per frame}; voltage: the readout's final
    integer voltage (N, K, H', W'); readout: voltage / (4096*T)
    (`toolchain.core.loihi.readout_value`), the float the torch model's readout equals; class_map: (N, H, W) argmax after bilinear
    upsampling of the readout to the input size.
    """

    spikes: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    voltage: np.ndarray
    readout: np.ndarray
    class_map: np.ndarray


class Deployed:
    """A loaded `.net` file that runs frames on the emulator or in Lava."""

    def __init__(self, net, path: str | Path | None = None):
        self.net = net
        self.path = path

    @property
    def time_steps(self) -> int:
        return self.net.time_steps

    def run(self, frames, *, backend: str = "emulator", keep_spikes: bool = True,
            device: str | None = None) -> Result:
        """Run frames (N, C, H, W, T) of 0/1 spikes; Lava runs them back to back in one built graph."""
        from toolchain.core.errors import ToolchainError

        frames = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames)
        if frames.ndim != 5 or tuple(frames.shape[1:4]) != tuple(self.net.input_shape):
            raise ToolchainError(f"{self.path or 'net'}: frames of shape {tuple(frames.shape)}; "
                                 f"expected (N, {', '.join(map(str, self.net.input_shape))}, T)")
        if not bool(((frames == 0) | (frames == 1)).all()):
            raise ToolchainError(f"{self.path or 'net'}: input must be 0/1 spikes (Loihi inputs are binary); "
                                 f"encoding {self.net.encoding!r} gave other values")
        if backend == "emulator":
            from . import emulator
            out = emulator.run(self.net, frames, device=device, keep_spikes=keep_spikes)
            spikes = {k: v.cpu().numpy() for k, v in out.spikes.items()}
            counts = {k: v.cpu().numpy() for k, v in out.counts.items()}
            voltage = out.voltage.cpu().numpy()
        elif backend == "lava":
            from . import lava_host
            # built once, every frame run in the same Lava runtime
            with lava_host.LavaNetwork(self.net, frames.shape[-1], keep_spikes=keep_spikes) as lava:
                spikes, counts, voltage = lava.run(frames.numpy())
        else:
            raise ToolchainError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
        return self._result(spikes, counts, voltage, frames.shape[-1])

    def _result(self, spikes, counts, voltage, t_steps) -> Result:
        readout = readout_value(voltage.astype(np.float64), t_steps)
        return Result(spikes, counts, voltage, readout, class_map(readout, self.net.input_shape[1:]))


def class_map(readout: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Argmax of (N, K, H', W') scores upsampled to `size` as in training (`models.upsample`)."""
    # imported on first use: `import deploy` stays free of lava-dl, which the models package loads
    from models import upsample

    return upsample(torch.as_tensor(readout, dtype=torch.float64), size).argmax(dim=1).numpy().astype(np.uint8)


def load(path: str | Path) -> Deployed:
    """Read and validate a `.net` file (a ToolchainError names any problem)."""
    from .netfile import read
    return Deployed(read(path), path)
