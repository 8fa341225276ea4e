"""A spiking network as a small graph of neuron groups.

Every model in `models/` is a `SpikingGraph`: an ordered list of `Node`s.
A node is one group of CUBA-LIF neurons (slayer's Loihi neuron) fed by one
or more slayer synapses, each reading the output of an earlier node (or the
network input). Several synapses into one node are summed before the neuron:
that is how additive skips are expressed, and it maps one to one onto Lava,
where several connection processes feed one LIF's `a_in`.

The last node is the readout: its neurons never spike; the network output
is its synaptic input accumulated over the whole frame and divided by T
(the paper's non-spiking membrane readout).

Tensors are slayer-ordered (N, C, H, W, T). Every spiking node's output is
delayed by one step, as slayer's blocks do (`delay_shift`), so that the
torch model has exactly the one-step-per-layer pipeline delay of Loihi and
Lava: the same spikes appear at the same step in all three executions (an
edge with a synaptic delay d shifts its source's spikes d steps more). The
input of T steps is followed by D - 1 zero steps, D the graph's pipeline
depth (`toolchain.core.loihi`), so that the deepest layer passes all T
informative steps on to the readout, as Lava's frame of T + D steps does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lava.lib.dl import slayer

from toolchain.core.loihi import pipeline_depth, spike_steps

from .fused_cuba import cuba_forward, delay, synapse_forward

INPUT = "input"


@dataclass(frozen=True)
class NeuronParams:
    """CUBA-LIF parameters in slayer's units (threshold in weight units,
    decays as fractions of 1; Loihi stores them x64 and x4096)."""

    threshold: float = 1.0
    current_decay: float = 1.0
    voltage_decay: float = 0.01
    tau_grad: float = 1.0
    scale_grad: float = 1.0

    def make(self) -> slayer.neuron.cuba.Neuron:
        return slayer.neuron.cuba.Neuron(
            threshold=self.threshold,
            current_decay=self.current_decay,
            voltage_decay=self.voltage_decay,
            tau_grad=self.tau_grad,
            scale_grad=self.scale_grad,
            shared_param=True,
            persistent_state=False,
            requires_grad=False,
        )


class Node(torch.nn.Module):
    """One neuron group and the synapses that feed it.

    `sources[k]` names the node whose output `synapses[k]` reads, `delays[k]`
    (default 0) the steps that edge adds to the one-step delay every
    connection has (Loihi's synaptic delay); `neuron` is None for the readout node.
    """

    def __init__(self, name: str, sources: list[str], synapses: list[torch.nn.Module],
                 neuron: slayer.neuron.cuba.Neuron | None, delays: list[int] | None = None):
        super().__init__()
        if len(sources) != len(synapses) or not sources:
            raise ValueError(f"node {name}: need one synapse per source")
        self.name = name
        self.sources = list(sources)
        self.synapses = torch.nn.ModuleList(synapses)
        self.neuron = neuron
        self.delays = [int(d) for d in delays] if delays is not None else [0] * len(sources)
        if len(self.delays) != len(self.sources) or min(self.delays) < 0:
            raise ValueError(f"node {name}: need one delay >= 0 per source")

    @property
    def is_readout(self) -> bool:
        return self.neuron is None

    def current(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Summed synaptic input, (N, C, H, W, T)."""
        total = None
        for synapse, x in zip(self.synapses, inputs, strict=True):
            z = synapse_forward(synapse, x)
            total = z if total is None else total + z
        return total

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        z = self.current(inputs)
        if self.neuron is None:
            return z
        return cuba_forward(self.neuron, z, delay_steps=1)


class SpikingGraph(torch.nn.Module):
    """Runs nodes in order; returns (readout (N, K, H', W'), spikes per node).

    `input_shape` is (C, H, W) of the encoded input; `quantized` tells
    whether synapse weights pass through Loihi's 8-bit quantization in the
    forward pass (slayer's `pre_hook_fx`).
    """

    def __init__(self, nodes: list[Node], input_shape: tuple[int, int, int], neuron: NeuronParams):
        super().__init__()
        names = [INPUT]
        for node in nodes:
            for s in node.sources:
                if s not in names:
                    raise ValueError(f"node {node.name} reads {s!r}, which is not an earlier node")
            if node.name in names:
                raise ValueError(f"duplicate node name {node.name!r}")
            names.append(node.name)
        if not nodes[-1].is_readout or any(n.is_readout for n in nodes[:-1]):
            raise ValueError("exactly the last node must be the readout")
        self.nodes = torch.nn.ModuleList(nodes)
        self.input_shape = tuple(input_shape)
        self.neuron_params = neuron
        index = {name: i for i, name in enumerate(names)}
        self.pipeline_depth = pipeline_depth([[index[s] for s in n.sources] for n in nodes],
                                             [n.delays for n in nodes])

    def frames_within(self, time_steps: int, budget_bytes: float) -> int:
        """How many frames (1-16) one no-grad forward of `time_steps` fits in
        `budget_bytes`: every node's spikes over the padded steps, float32,
        doubled for the currents and temporaries of the node that runs (the
        scale search's 16 frames of DeepLab-tiny at 200x346, T=48: 10 GiB of
        spikes, killed at 22 GiB)."""
        c, h, w = self.input_shape
        with torch.no_grad():
            _, spikes = self(torch.zeros(1, c, h, w, 1))
        neurons = c * h * w + sum(v[0, ..., 0].numel() for v in spikes.values())
        per_frame = 2 * 4 * neurons * spike_steps(time_steps, self.pipeline_depth)
        return int(max(1, min(16, budget_bytes // per_frame)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x (N, C, H, W, T) -> (readout (N, K, H', W'), spikes {node: (N, C, H, W, T + D - 1)})."""
        time_steps = x.shape[-1]
        outputs = {INPUT: F.pad(x, (0, spike_steps(time_steps, self.pipeline_depth) - time_steps))}
        for node in self.nodes:
            outputs[node.name] = node([delay(outputs[s], d) if d else outputs[s]
                                       for s, d in zip(node.sources, node.delays, strict=True)])
        readout = outputs[self.nodes[-1].name].sum(dim=-1) / time_steps
        spikes = {n.name: outputs[n.name] for n in self.nodes[:-1]}
        return readout, spikes
