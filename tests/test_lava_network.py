"""`deploy.lava.Network`: a `.net` as one Lava process of stock processes.

Run with Lava as released (`deploy.lava.run_stock`: Lava's RingBuffer source,
its Extractors on every hidden layer, its own models), frames streamed back
to back, it gives the emulator's spikes in every layer and its readout for
every frame, i.e. frame k equals frame k run alone (the emulator runs each
frame from a zero state). Every compared layer spikes on every compared
frame: a comparison of zeros proves nothing.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deploy import emulator
from deploy.export import build_netfile
from deploy.lava_compat import import_lava_runtime
from models.graph import NeuronParams

STOCK = {"LIFReset", "LIF", "Conv", "Dense", "Sparse", "DelaySparse", "DelayDense"}
ADAPTERS = {"FileSource", "FileSink", "FileReadout"}  # the fast runner's host I/O, lava_procs


def tiny_net(name: str, time_steps: int):
    import models

    torch.manual_seed(0)
    model = models.build(name, 2, 6, (16, 16), NeuronParams())
    return build_netfile(model, time_steps=time_steps)


def spikes(n, t_steps, seed=1, rate=0.3):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((n, 2, 16, 16, t_steps), generator=gen) < rate).float()


def assert_equal_to_emulator(net, x, lava_spikes, lava_v):
    ref = emulator.run(net, x, device="cpu")
    for name, s in ref.spikes.items():
        per_frame = s.numpy().reshape(len(x), -1).sum(1)
        assert (per_frame > 0).all(), f"layer {name} is silent in a frame: {per_frame}"
        np.testing.assert_array_equal(lava_spikes[name], s.numpy(), err_msg=f"layer {name}")
    v = ref.voltage.numpy()
    assert all(len(np.unique(f)) > 1 for f in v), "the readout is constant"
    np.testing.assert_array_equal(lava_v, v)
    return {name: [int(c) for c in s.numpy().reshape(len(x), -1).sum(1)] for name, s in ref.spikes.items()}


@pytest.mark.lava
@pytest.mark.slow
@pytest.mark.parametrize("name", ["spiking-deeplab-tiny", "spiking-fcn-tiny"])
def test_network_between_ring_buffers_streams_frames_like_the_emulator(name):
    """>= 3 frames back to back through stock Lava I/O and a plain fixed_pt run config."""
    net = tiny_net(name, 3)
    import_lava_runtime()
    from deploy.lava import arrivals, run_stock

    x = spikes(3, 3)
    lava_spikes, lava_v = run_stock(net, x.numpy())
    assert arrivals(net)[1]  # aligned
    counts = assert_equal_to_emulator(net, x, lava_spikes, lava_v)
    print(name, "spikes per frame", counts)


def _processes(root) -> set:
    """Every process reachable from `root` through port connections."""
    seen, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        for port in list(p.in_ports) + list(p.out_ports) + list(p.ref_ports) + list(p.var_ports):
            for q in list(getattr(port, "in_connections", [])) + list(getattr(port, "out_connections", [])):
                todo.append(q.process)
    return seen


@pytest.mark.lava
@pytest.mark.parametrize("name", ["spiking-deeplab-tiny", "spiking-fcn-tiny"])
def test_only_stock_lava_processes_inside_and_host_adapters_outside(name):
    import_lava_runtime()
    from deploy.lava import Network
    from deploy.lava_host import LavaNetwork

    net = tiny_net(name, 4)
    lnet = Network(net)
    inside = {type(p) for p in lnet.processes}
    assert {t.__name__ for t in inside} <= STOCK
    assert all(t.__module__.startswith("lava.proc.") for t in inside)
    with LavaNetwork(net, 4) as runner:
        kinds = {type(p).__name__ for p in _processes(runner.network)} - {"Network"}
        assert kinds <= STOCK | ADAPTERS, kinds - STOCK - ADAPTERS
        assert ADAPTERS <= kinds


def test_reset_offsets_follow_each_layers_depth():
    """A chain: layer i starts a frame i steps in (Lava's offset i + 1, time counted from 1)."""
    from deploy.lava import arrivals

    net = tiny_net("spiking-deeplab-tiny", 4)
    r, aligned = arrivals(net)
    assert aligned and r == list(range(1, len(net.layers) + 1))
    assert r[-1] == net.pipeline_depth


def test_fcn_skips_carry_the_delay_that_aligns_them_and_the_file_keeps_it(tmp_path):
    """The shorter path of each skip is delayed by the depth difference, so every
    layer's inputs arrive equally late; the .net round-trips the field and the
    pipeline depth counts it."""
    from deploy.lava import arrivals
    from deploy.netfile import read, write

    net = tiny_net("spiking-fcn-tiny", 4)
    delays = {layer.name: [s.delay for s in layer.synapses] for layer in net.layers}
    assert delays["up1"] == [0, 3] and delays["up2"] == [0, 6] and delays["readout"] == [0, 9]
    assert arrivals(net) == (list(range(1, len(net.layers) + 1)), True)
    back = read(write(tmp_path / "fcn.net", net))
    assert [[s.delay for s in layer.synapses] for layer in back.layers] == list(delays.values())
    assert back.pipeline_depth == net.pipeline_depth == len(net.layers)


def test_a_delay_past_loihis_range_is_refused_naming_the_field(tmp_path):
    from deploy.netfile import write
    from toolchain.core.errors import ToolchainError

    net = tiny_net("spiking-fcn-tiny", 4)
    net.layers[-1].synapses[1].delay = 63
    with pytest.raises(ToolchainError, match=r"readout\) synapse 1: field 'delay' = 63 is outside \[0, 62\]"):
        write(tmp_path / "bad.net", net)


def test_mapping_report_names_stock_processes_and_the_cost_of_sparse_layers():
    from deploy.lava import format_mapping, mapping_report

    net = tiny_net("spiking-fcn-tiny", 4)
    rows = {r["layer"]: r for r in mapping_report(net)}
    assert rows["conv1"]["processes"] == ["LIFReset", "Conv"]
    assert rows["readout"]["processes"] == ["LIFReset", "Sparse", "DelaySparse"]
    assert rows["conv1"]["neurons"] == 16 * 16 * 16 and rows["conv1"]["stored_weights"] == 16 * 2 * 9
    assert any("transposed conv as Sparse" in n for n in rows["readout"]["notes"])
    assert sum(r["neurons"] for r in rows.values()) == net.num_neurons
    assert "Loihi 2 model" in format_mapping(list(rows.values()))
