"""Synaptic operations per frame of a spiking graph's own spikes, counted as
`toolchain energy` counts them on the exported `.net` (`synapses.synops`): each
source neuron's spikes over all T + D - 1 kept steps times its exact fan-out
through every synapse that reads it, the input's spikes included.

Counted on torch tensors it is differentiable through the surrogate gradient,
so training can hold a network under a SynOps budget; counted on a deployed
run's spikes it is the energy study's figure (tests/test_spike_budget.py).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from models.graph import INPUT, SpikingGraph

from .synapses import kind


class SynOpsCounter(torch.nn.Module):
    """`counter(x, spikes)` -> (SynOps per frame, mean over the batch; SynOps per
    frame by the layer the operations arrive at). `x` is the input (N, C, H, W, T),
    `spikes` the graph's {node: (N, C, H, W, S)} as `SpikingGraph.forward` returns."""

    def __init__(self, model: SpikingGraph, time_steps: int):
        super().__init__()
        from .export import build_netfile

        was_training = model.training
        with warnings.catch_warnings():  # for the synapse geometry only: no readout range to warn of
            warnings.simplefilter("ignore")
            net = build_netfile(model, time_steps=time_steps)
        model.train(was_training)
        names = [INPUT] + [layer.name for layer in net.layers]
        # per synapse (source -> layer): the (H, W) map of the operations one
        # spike of the source causes through it, as `synapses.synops` counts them
        self.edges: list[tuple[str, str]] = []
        for layer in net.layers:
            for src, syn in zip(layer.sources, layer.synapses, strict=True):
                k = kind(syn.type)
                shape = net.shape_of(src)
                per_spike = k.fanout(syn, shape, layer.shape) * k.targets(syn, layer.shape)
                buffer = f"fanout{len(self.edges)}"
                self.register_buffer(buffer, torch.as_tensor(np.ascontiguousarray(per_spike), dtype=torch.float32),
                                     persistent=False)
                self.edges.append((names[src], layer.name))

    def forward(self, x: torch.Tensor, spikes: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # spikes summed over time and channels: a source's fan-out map is the
        # same for every channel (it is a spatial map times output channels)
        totals = {INPUT: x.float().sum(dim=(1, 4))}
        per_layer: dict[str, torch.Tensor] = {}
        for k, (src, dst) in enumerate(self.edges):
            if src not in totals:
                totals[src] = spikes[src].float().sum(dim=(1, 4))
            ops = (totals[src] * getattr(self, f"fanout{k}")).sum(dim=(1, 2)).mean()
            per_layer[dst] = per_layer[dst] + ops if dst in per_layer else ops
        return torch.stack(list(per_layer.values())).sum(), per_layer


def budget_penalty(synops: torch.Tensor, budget: float) -> torch.Tensor:
    """How far SynOps per frame lie above the budget, as a fraction of it: zero
    under the budget, so it only ever pushes spikes down to it."""
    return torch.relu(synops / budget - 1.0)
