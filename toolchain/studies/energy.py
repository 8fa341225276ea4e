"""Spikes, synaptic operations, MACs, energy per frame and the Loihi 2 resource estimate.

Everything is counted on the exported `.net` graph, from a real run of it
(the emulator, or Lava when asked):

- fan-out: a source neuron's number of (output neuron, weight) pairs, taken
  from the synapse geometry exactly, borders included: a pixel near the edge of
  a padded 3x3 conv reaches fewer output positions than one in the middle.
  Every weight of the kernel counts, zero or not (the hardware walks them all).
- synaptic operations (SynOps, the paper's accumulates): sum over source
  neurons of spikes x fan-out, over all T + D steps of a frame (D the
  pipeline depth: no free steps); the input spikes count too.
- MACs of the non-spiking twin: the same connections, each used once per frame
  (every ANN activation is "one spike"), so ANN MACs = connections.
- energy per frame: 45 nm model (SynOps x E_AC vs MACs x E_MAC) and a Loihi
  figure (SynOps x pJ per synaptic op + neuron updates x pJ per update, one
  update per neuron per step).
- Loihi 2 cores per layer: enough for its neurons and for its synaptic memory
  (connections x the layer's exported weight bits, kernels not shared).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from deploy.netfile import NetFile
from deploy.synapses import Synapse, connections, synops


@dataclass
class EnergyModel:
    e_ac_pj: float = 0.9  # 45 nm accumulate (the paper)
    e_mac_pj: float = 4.6  # 45 nm multiply-accumulate (the paper)
    loihi_synop_pj: float = 23.6  # Loihi 1 synaptic spike op (Davies et al. 2018)
    loihi_neuron_pj: float = 52.0  # Loihi 1 active neuron update (Davies et al. 2018, unverified)


@dataclass
class CoreModel:
    neurons_per_core: int = 8192  # Loihi 2 neuro core (Intel's brief)
    synaptic_memory_kib: int = 128  # per core, planning figure
    cores_per_chip: int = 128


def weight_bits(syn: Synapse) -> int:
    """Signed bits of the exported weights: Loihi's 8-bit synapse integers are
    even (a 7-bit mantissa and a sign), so w/2 is what needs storing."""
    m = int(np.abs(syn.weight.astype(np.int64) // 2).max()) if syn.weight.size else 0
    return max(1, m.bit_length()) + 1


def count_run(net: NetFile, frames: torch.Tensor, backend: str = "emulator") -> dict:
    """Run `frames` (N, C, H, W, T) through the net and count, per layer and per
    frame: spikes out, synaptic operations in, neuron updates."""
    from deploy import Deployed

    result = Deployed(net).run(frames, backend=backend, keep_spikes=True)
    n, t_steps = frames.shape[0], frames.shape[-1]
    maps = {0: np.asarray(frames, dtype=np.float64).sum(axis=(0, 4))}
    for i, layer in enumerate(net.layers[:-1], start=1):
        maps[i] = result.spikes[layer.name].sum(axis=(0, 4), dtype=np.float64)
    layers = []
    for i, layer in enumerate(net.layers, start=1):
        ops = sum(synops(syn, maps[src], layer.shape) for src, syn in zip(layer.sources, layer.synapses, strict=True))
        neurons = int(np.prod(layer.shape))
        layers.append(dict(name=layer.name, type=layer.type, neurons=neurons,
                           spikes=float(maps[i].sum()) / n if i in maps else 0.0,
                           synops=ops / n, neuron_updates=neurons * net.frame_steps(t_steps),
                           macs=sum(connections(s, net.shape_of(src), layer.shape)
                                    for src, s in zip(layer.sources, layer.synapses, strict=True))))
    return dict(frames=int(n), time_steps=int(t_steps), frame_steps=net.frame_steps(t_steps), backend=backend,
                input_spikes=float(maps[0].sum()) / n, layers=layers, readout=result.readout,
                class_map=result.class_map)


def energy(counts: dict, model: EnergyModel | None = None) -> dict:
    """Energy per frame from `count_run`'s counts."""
    model = model or EnergyModel()
    syn = sum(l["synops"] for l in counts["layers"])
    macs = sum(l["macs"] for l in counts["layers"])
    updates = sum(l["neuron_updates"] for l in counts["layers"])
    snn_pj = syn * model.e_ac_pj
    ann_pj = macs * model.e_mac_pj
    loihi_pj = syn * model.loihi_synop_pj + updates * model.loihi_neuron_pj
    return dict(synops_per_frame=syn, macs_per_frame=macs, neuron_updates_per_frame=updates,
                spikes_per_frame=sum(l["spikes"] for l in counts["layers"]),
                snn_45nm_uj=snn_pj * 1e-6, ann_45nm_uj=ann_pj * 1e-6,
                ann_snn_ratio=ann_pj / snn_pj if snn_pj > 0 else float("inf"),
                loihi_uj=loihi_pj * 1e-6, model=asdict(model))


def resources(net: NetFile, cores: CoreModel | None = None) -> dict:
    """Loihi 2 resource estimate per layer and in total."""
    cores = cores or CoreModel()
    rows = []
    for layer in net.layers:
        neurons = int(np.prod(layer.shape))
        conns, mem_bits, kernel_bits, bits = 0, 0, 0, 0
        for src, syn in zip(layer.sources, layer.synapses, strict=True):
            b = weight_bits(syn)
            c = connections(syn, net.shape_of(src), layer.shape)
            conns += c
            mem_bits += c * b
            kernel_bits += int(syn.weight.size) * b
            bits = max(bits, b)
        need = max(math.ceil(neurons / cores.neurons_per_core),
                   math.ceil(mem_bits / (cores.synaptic_memory_kib * 1024 * 8)), 1)
        rows.append(dict(name=layer.name, type=layer.type, neurons=neurons, synapses=conns, weight_bits=bits,
                         synaptic_memory_kib=mem_bits / 8192, shared_kernel_kib=kernel_bits / 8192, cores=need))
    total_cores = sum(r["cores"] for r in rows)
    return dict(layers=rows, neurons=sum(r["neurons"] for r in rows), synapses=sum(r["synapses"] for r in rows),
                synaptic_memory_kib=sum(r["synaptic_memory_kib"] for r in rows), cores=total_cores,
                chips=math.ceil(total_cores / cores.cores_per_chip), model=asdict(cores))
