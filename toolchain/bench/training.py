"""Training throughput: the toolchain's path against slayer's own and a plain-PyTorch LIF.

`python -m toolchain.bench.training` times forward + backward + optimiser step
(quantization-aware) on random Poisson input for each preset, three ways in
one run on the same batch: the toolchain's default path (on the CPU the
fused CUBA-LIF kernel and 2-D frame synapses of `models.fused_cuba`,
bit-identical to slayer), slayer's reference path (`set_neuron_impl("slayer")`:
its Python loop over time steps, 3-D convolutions), and a plain-PyTorch LIF
network written the way the paper's code is (a Python loop over time steps,
`nn.Conv2d` per step, leak 0.99, soft reset, the linear surrogate
0.3 * max(0, 1 - |u/theta - 1|)) with the same layers, weights and number of
steps (T + D - 1, the frame's steps whose spikes reach the readout). It
prints samples/s and the ratios.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import models
from models.ann import AnnGraph
from models.fused_cuba import neuron_impl, set_neuron_impl
from models.graph import INPUT
from toolchain.core.allocator import keep_freed_memory
from toolchain.core.loihi import spike_steps

from ..train.loop import loss_fn


class _LinearSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, threshold):
        ctx.save_for_backward(u)
        ctx.threshold = threshold
        return (u > threshold).float()

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        surrogate = 0.3 * torch.clamp(1.0 - torch.abs(u / ctx.threshold - 1.0), min=0.0)
        return grad * surrogate, None


class PlainLIF(torch.nn.Module):
    """The paper's style of SNN: layers stepped in a Python loop over T."""

    def __init__(self, graph, leak: float = 0.99, threshold: float = 1.0):
        super().__init__()
        self.net = AnnGraph(graph)
        self.depth = graph.pipeline_depth
        self.leak, self.threshold = leak, threshold

    def forward(self, x):  # x (N, C, H, W, T), run for the spiking graph's T + D - 1 steps
        time_steps = x.shape[-1]
        x = F.pad(x, (0, spike_steps(time_steps, self.depth) - time_steps))
        mem, acc = {}, None
        for t in range(x.shape[-1]):
            out = {INPUT: x[..., t]}
            for node in self.net.nodes:
                z = sum(syn(out[s]) for syn, s in zip(node.synapses, node.sources, strict=True))
                if not node.relu:  # the readout accumulates, never spikes
                    acc = z if acc is None else acc + z
                    continue
                m = self.leak * mem.get(node.name, 0.0) + z
                s = _LinearSpike.apply(m, self.threshold)
                mem[node.name] = m - s * self.threshold
                out[node.name] = s
        return acc / time_steps, {}


def throughput(model, x, y, steps: int) -> float:
    keep_freed_memory()  # as `toolchain train` does on the CPU
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def one():
        scores, _ = models.predict(model, x, y.shape[-2:])  # as training steps
        loss = loss_fn(scores, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    one()  # warm-up: shape inference, allocator
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * len(x) / (time.perf_counter() - t0)


def run(presets, hw, time_steps, batch, steps, num_classes=6, in_channels=2):
    """Rows of (name, toolchain, slayer, plain) samples/s."""
    torch.manual_seed(0)
    rows = []
    for name in presets:
        graph = models.build(name, in_channels, num_classes, hw, quantized=True)
        plain = PlainLIF(graph)
        x = (torch.rand(batch, in_channels, *hw, time_steps) < 0.2).float()
        y = torch.randint(0, num_classes, (batch, *hw))
        before = neuron_impl()
        try:
            set_neuron_impl("slayer")
            ref = throughput(graph, x, y, steps)
        finally:
            set_neuron_impl(before)
        ours = throughput(graph, x, y, steps)
        base = throughput(plain, x, y, steps)
        rows.append((name, ours, ref, base))
        print(f"{name:<22} {hw[0]}x{hw[1]} T={time_steps} batch {batch}:  toolchain ({neuron_impl()}) "
              f"{ours:7.2f}   slayer {ref:7.2f}   plain-PyTorch LIF {base:7.2f} samples/s   "
              f"toolchain/slayer {ours / ref:5.2f}   toolchain/plain {ours / base:5.2f}", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--time-steps", type=int, default=20, help="T of the paper-size models (the paper's 20)")
    p.add_argument("--tiny-time-steps", type=int, default=10, help="T of the tiny presets (the demo's 10)")
    p.add_argument("--tiny-only", action="store_true", help="skip the paper-size presets (minutes per step "
                   "on slayer's CPU path)")
    a = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    run(["spiking-deeplab-tiny", "spiking-fcn-tiny"], (64, 64), a.tiny_time_steps, 8, a.steps)
    if not a.tiny_only:
        run(["spiking-deeplab", "spiking-fcn"], (64, 64), a.time_steps, 2, max(1, a.steps // 2))


if __name__ == "__main__":
    main()
