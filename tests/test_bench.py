"""The pieces `toolchain bench` measures: one Lava graph running many frames,
the compiled LIF kernel of the emulator, and the bench table itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from lava.lib.dl import slayer

from deploy import emulator, lava_graph
from deploy.export import build_netfile
from models.graph import INPUT, NeuronParams, Node, SpikingGraph
from tests.content import assert_has_content
from toolchain import loihi

T = 4


@pytest.fixture(scope="module")
def small_net():
    """conv -> pool -> conv readout, full-range weights, a neuron with both decays."""
    gen = torch.Generator().manual_seed(3)
    neuron = NeuronParams(threshold=1.25, current_decay=0.25, voltage_decay=0.03)
    c1 = slayer.synapse.Conv(2, 4, 3, padding=1)
    out = slayer.synapse.Conv(4, 3, 1)
    for syn in (c1, out):
        syn.weight.data = (torch.randint(-128, 128, syn.weight.shape, generator=gen) * 2 / 64).float()
    nodes = [Node("c1", [INPUT], [c1], neuron.make()),
             Node("p1", ["c1"], [slayer.synapse.Pool(2, stride=2, weight_scale=0.75)], neuron.make()),
             Node("out", ["p1"], [out], None)]
    return build_netfile(SpikingGraph(nodes, (2, 8, 8), neuron), time_steps=T)


@pytest.fixture(scope="module")
def frames():
    gen = torch.Generator().manual_seed(5)
    rates = torch.tensor([0.5, 0.2, 0.35]).reshape(3, 1, 1, 1, 1)
    return (torch.rand((3, 2, 8, 8, T), generator=gen) < rates).float()


@pytest.mark.lava
@pytest.mark.slow
def test_one_built_lava_graph_runs_three_frames_like_three_fresh_builds(small_net, frames):
    # capacity 2: the third frame reuses the first frame's file slot
    with lava_graph.LavaNetwork(small_net, T, capacity=2) as lava:
        spikes, counts, voltage = lava.run(frames.numpy())
    assert_has_content(spikes, voltage, layers=["c1", "p1"], where="one graph vs fresh builds")
    for k, frame in enumerate(frames):
        fresh_spikes, fresh_v = lava_graph.run_frame(small_net, frame.numpy())
        np.testing.assert_array_equal(voltage[k], fresh_v, err_msg=f"frame {k}: readout")
        for name, s in fresh_spikes.items():
            np.testing.assert_array_equal(spikes[name][k], s, err_msg=f"frame {k}: layer {name}")
            assert counts[name][k] == s.sum()
    # and the frames really differ, so carrying state over would have shown
    assert not np.array_equal(voltage[0], voltage[1])
    out = emulator.run(small_net, frames, device="cpu")
    np.testing.assert_array_equal(voltage, out.voltage.numpy())


@pytest.mark.parametrize("i_decay,v_decay", [(1024, 123), (4096, 41), (0, 0)])
@pytest.mark.parametrize("scale", [300, 1 << 20, 1 << 30])
def test_compiled_lif_kernel_equals_reference_cuba_step(i_decay, v_decay, scale):
    """The emulator's compiled kernel computes `toolchain.loihi.cuba_step`: small inputs,
    inputs that saturate 24 bits and inputs that wrap int32."""
    gen = torch.Generator().manual_seed(scale % 97 + i_decay)
    a = torch.randint(-scale, scale, (7, 3, 5, 6), generator=gen, dtype=torch.int64)
    s_ref, v_ref = loihi.cuba_run(a, i_decay, v_decay, 80, wrap=True)
    s, v = emulator.lif_steps(a, i_decay, v_decay, 80)
    assert torch.equal(s, s_ref)
    assert torch.equal(v, v_ref)
    assert s.any()


@pytest.mark.lava
@pytest.mark.slow
def test_quick_bench_reports_every_backend_and_measure():
    from toolchain.bench import format_table, run_bench

    report = run_bench(quick=True, progress=lambda m: None)
    (case,) = report["cases"]
    assert [(r["backend"], r["batch"]) for r in case["rows"]] == [
        ("lava-stock", 1), ("lava", 1), ("emulator", 1), ("emulator", 4)]
    assert case["neurons"] > 0 and case["synapses"] > 0 and not case["trained"]
    stock, lava, emu1, emub = case["rows"]
    assert stock["ratio_stock"] == 1.0 and lava["ratio_lava"] == 1.0
    for r in case["rows"]:
        assert r["steps_per_s"] > 0 and r["peak_pss_mb"] > 10
    assert emu1["ratio_stock"] == pytest.approx(emu1["steps_per_s"] / stock["steps_per_s"])
    assert emub["ratio_lava"] == pytest.approx(emub["steps_per_s"] / lava["steps_per_s"])
    assert stock["frames"] == lava["frames"] == 2  # both finished, so their readouts were compared
    assert sum(c[0] for c in case["first_frame_spikes"].values()) > 0  # and spike counts, of a net that spikes
    t = report["training"]
    assert t["toolchain_samples_per_s"] > 0 and t["plain_torch_samples_per_s"] > 0
    assert t["ratio"] == pytest.approx(t["toolchain_samples_per_s"] / t["plain_torch_samples_per_s"])
    assert report["evaluation"]["frames"] == 4 and 0 <= report["evaluation"]["miou"] <= 1
    table = format_table(report)
    assert "lava-stock" in table and "emulator" in table and "plain PyTorch" in table and "(untrained)" in table


def test_bench_stops_when_two_backends_count_different_spikes(tmp_path, monkeypatch):
    """Speeds of different computations are not compared: one spike more in one
    layer of one frame stops the bench, naming the backends and the layer."""
    from toolchain import bench
    from toolchain.errors import ToolchainError

    def fake_measure(kind, tmp, timeout=None, **spec):
        counts = {"c1": [5, 7], "c2": [3, 4]}
        if kind == "emulator" and spec["batch"] == 2:
            counts = {"c1": [5, 7], "c2": [3, 5]}
        return dict(steps_per_s=10.0, frames=2, batch=spec.get("batch", 1), voltage=[[1], [2]], counts=counts,
                    build_s=0.1, first_frame_s=0.1, peak_pss_mb=1.0, includes_compile=False)

    monkeypatch.setattr(bench, "_measure", fake_measure)
    monkeypatch.setattr("deploy.netfile.write", lambda path, net: None)
    net = type("Net", (), dict(input_shape=(2, 4, 4), num_neurons=1, num_synapses=1))()
    frames = np.zeros((2, 2, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(ToolchainError, match="emulator and lava spike counts differ in layer c2"):
        bench._case("fake", net, frames, tmp_path, lava_frames=2, emu_frames=2, batch=2, trained=False,
                    progress=lambda m: None)
