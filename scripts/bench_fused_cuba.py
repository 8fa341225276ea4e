"""Training throughput of the slayer path against the fused CPU path.

    .venv/bin/python scripts/bench_fused_cuba.py [--steps 3] [--profile]

Times forward + backward + AdamW step (quantized model, Poisson input at
rate 0.2, cross-entropy on the bilinearly upsampled readout) with
`set_neuron_impl("slayer")` and `"fused"`, alternating in one process, and
prints samples/s and the ratio; `--profile` adds the top of a
torch.profiler table of the fused path.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import models
from models.fused_cuba import set_neuron_impl


def _step(model, opt, x, y):
    scores, _ = model(x)
    scores = F.interpolate(scores, size=y.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(scores, y, ignore_index=255)
    opt.zero_grad()
    loss.backward()
    opt.step()


def throughput(name, impl, hw, time_steps, batch, steps, rounds=1):
    """Best samples/s over `rounds` timings of `steps` training steps."""
    set_neuron_impl(impl)
    torch.manual_seed(0)
    model = models.build(name, 2, 6, hw, quantized=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = (torch.rand(batch, 2, *hw, time_steps) < 0.2).float()
    y = torch.randint(0, 6, (batch, *hw))
    _step(model, opt, x, y)  # warm-up: shapes, allocator, numba cache load
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            _step(model, opt, x, y)
        best = max(best, steps * batch / (time.perf_counter() - t0))
    return best, (model, opt, x, y)


def profile(args, rows=15):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    set_neuron_impl("fused")
    model, opt, x, y = args
    with prof(activities=[ProfilerActivity.CPU]) as p:
        _step(model, opt, x, y)
    return p.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--paper", action="store_true", help="also the paper-size presets (T=20, batch 2)")
    p.add_argument("--profile", action="store_true")
    a = p.parse_args(argv)
    print(f"torch threads {torch.get_num_threads()}")
    runs = [(n, (64, 64), 10, 8, a.steps) for n in ("spiking-deeplab-tiny", "spiking-fcn-tiny")]
    if a.paper:
        runs += [(n, (64, 64), 20, 2, max(1, a.steps // 2)) for n in ("spiking-deeplab", "spiking-fcn")]
    for name, hw, t, batch, steps in runs:
        slow, _ = throughput(name, "slayer", hw, t, batch, steps, a.rounds)
        fast, state = throughput(name, "fused", hw, t, batch, steps, a.rounds)
        print(f"{name:<22} {hw[0]}x{hw[1]} T={t} batch {batch}: slayer {slow:7.3g} samples/s  "
              f"({batch / slow:6.3g} s/step)  fused {fast:7.3g} samples/s ({batch / fast:6.3g} s/step)  "
              f"x{fast / slow:5.2f}", flush=True)
        if a.profile and name == "spiking-deeplab-tiny":
            print(profile(state), flush=True)
    set_neuron_impl("auto")


if __name__ == "__main__":
    main()
