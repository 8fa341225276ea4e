"""The non-spiking twin of a `SpikingGraph`, for ANN-to-SNN conversion.

Same nodes, same sources, one plain torch layer per slayer synapse (so
`ann.nodes[i].synapses[j].weight[..., None]` is the spiking synapse's
weight), ReLU where the spiking net has neurons, average pooling where it
sum-pools with weight 1/k^2. No bias, no normalisation, as in the SNN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from lava.lib.dl import slayer

from .graph import INPUT, SpikingGraph


class _AvgPool(torch.nn.Module):
    def __init__(self, kernel: int):
        super().__init__()
        self.kernel = kernel

    def forward(self, x):
        # slayer zero-pads odd sizes before pooling; do the same
        ph, pw = (-x.shape[-2]) % self.kernel, (-x.shape[-1]) % self.kernel
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return F.avg_pool2d(x, self.kernel)


def _twin(syn: torch.nn.Module) -> torch.nn.Module:
    k = tuple(syn.kernel_size[:2])
    s, p, d = tuple(syn.stride[:2]), tuple(syn.padding[:2]), tuple(syn.dilation[:2])
    if isinstance(syn, slayer.synapse.Pool):
        return _AvgPool(k[0])
    if isinstance(syn, slayer.synapse.ConvTranspose):
        return torch.nn.ConvTranspose2d(syn.in_channels, syn.out_channels, k, s, p, dilation=d, bias=False)
    if isinstance(syn, slayer.synapse.Conv):
        return torch.nn.Conv2d(syn.in_channels, syn.out_channels, k, s, p, dilation=d, bias=False)
    raise TypeError(f"no ANN twin for synapse {type(syn).__name__}")


class AnnNode(torch.nn.Module):
    def __init__(self, name, sources, synapses, relu: bool):
        super().__init__()
        self.name, self.sources, self.relu = name, list(sources), relu
        self.synapses = torch.nn.ModuleList(synapses)

    def forward(self, inputs):
        z = sum(syn(x) for syn, x in zip(self.synapses, inputs, strict=True))
        return F.relu(z) if self.relu else z


class AnnGraph(torch.nn.Module):
    """Returns (scores (N, K, H', W'), activations per hidden node) like the
    spiking graph. Input (N, C, H, W), or (N, C, H, W, T) spikes, which are
    averaged over T into rates."""

    def __init__(self, graph: SpikingGraph):
        super().__init__()
        self.nodes = torch.nn.ModuleList(
            AnnNode(n.name, n.sources, [_twin(s) for s in n.synapses], relu=not n.is_readout) for n in graph.nodes)
        self.input_shape = graph.input_shape
        self.neuron_params = graph.neuron_params
        self.name = getattr(graph, "name", None)

    def forward(self, x):
        if x.dim() == 5:
            x = x.mean(dim=-1)
        outputs = {INPUT: x}
        for node in self.nodes:
            outputs[node.name] = node([outputs[s] for s in node.sources])
        acts = {n.name: outputs[n.name] for n in self.nodes[:-1]}
        return outputs[self.nodes[-1].name], acts
