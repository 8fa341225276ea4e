"""NIR export: the written graph reads back with `nir.read` with the expected
nodes, edges and parameters, and, simulated with forward Euler at dt = 1,
reproduces slayer's spikes."""
from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lava.lib.dl import slayer

import models
from deploy.nir_export import export_nir
from models.graph import NeuronParams, Node, SpikingGraph
from toolchain.errors import ToolchainError

Q = slayer.utils.quantize_hook_fx


def small_graph(neuron: NeuronParams, pool_weight: float = 0.5) -> SpikingGraph:
    torch.manual_seed(0)
    nodes = [
        Node("c1", ["input"], [slayer.synapse.Conv(2, 4, 3, padding=1, weight_scale=3, pre_hook_fx=Q)],
             neuron.make()),
        Node("p1", ["c1"], [slayer.synapse.Pool(2, weight_scale=pool_weight, pre_hook_fx=Q)], neuron.make()),
        Node("c2", ["p1", "p1"], [slayer.synapse.Conv(4, 4, 3, padding=2, dilation=2, weight_scale=3,
                                                      pre_hook_fx=Q),
                                  slayer.synapse.Conv(4, 4, 1, weight_scale=2, pre_hook_fx=Q)], neuron.make()),
        Node("out", ["c2", "c1"], [slayer.synapse.Conv(4, 3, 1, pre_hook_fx=Q),
                                   slayer.synapse.Conv(4, 3, 2, stride=2, pre_hook_fx=Q)], None),
    ]
    return SpikingGraph(nodes, (2, 8, 12), neuron).eval()


def simulate(graph: nir.NIRGraph, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Forward-Euler (dt = 1) interpreter of the NIR node kinds the exporter
    writes. Returns the output node's value after the last step and the
    output of every Delay node (N, C, H, W, T)."""
    nodes, preds = graph.nodes, {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        preds[dst].append(src)
    order, done = [], set()

    def visit(name):
        if name in done:
            return
        done.add(name)
        if not isinstance(nodes[name], nir.Delay):  # a delay's output comes from the last step
            for p in preds[name]:
                visit(p)
        order.append(name)

    for name in nodes:
        visit(name)
    state: dict[str, dict[str, torch.Tensor]] = {}
    delayed = {name: [] for name, n in nodes.items() if isinstance(n, nir.Delay)}
    n_batch = x.shape[0]
    for t in range(x.shape[-1]):
        out = {}
        for name in order:
            node = nodes[name]
            if isinstance(node, nir.Input):
                out[name] = torch.as_tensor(x[..., t])
                continue
            if isinstance(node, nir.Delay):
                out[name] = state.get(name, {}).get("x", torch.zeros(n_batch, *node.delay.shape))
                continue
            z = sum(out[p] for p in preds[name])
            if isinstance(node, nir.Conv2d):
                out[name] = F.conv2d(z, torch.as_tensor(node.weight), torch.as_tensor(node.bias),
                                     tuple(node.stride), tuple(node.padding), tuple(node.dilation), node.groups)
            elif isinstance(node, nir.SumPool2d):
                out[name] = F.avg_pool2d(z, tuple(node.kernel_size), tuple(node.stride), tuple(node.padding),
                                         divisor_override=1)
            elif isinstance(node, nir.AvgPool2d):
                out[name] = F.avg_pool2d(z, tuple(node.kernel_size), tuple(node.stride), tuple(node.padding))
            elif isinstance(node, nir.Scale):
                out[name] = z * torch.as_tensor(node.scale)
            elif isinstance(node, nir.CubaLIF):
                p = {k: torch.as_tensor(getattr(node, k)) for k in
                     ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in")}
                s = state.setdefault(name, {"i": torch.zeros(n_batch, *p["r"].shape),
                                            "v": torch.zeros(n_batch, *p["r"].shape)})
                s["i"] = s["i"] + (p["w_in"] * z - s["i"]) / p["tau_syn"]
                s["v"] = s["v"] + (p["v_leak"] - s["v"] + p["r"] * s["i"]) / p["tau_mem"]
                spike = s["v"] > p["v_threshold"]
                s["v"] = torch.where(spike, p["v_reset"], s["v"])
                out[name] = spike.float()
            elif isinstance(node, nir.I):
                s = state.setdefault(name, {"v": 0.0})
                s["v"] = s["v"] + torch.as_tensor(node.r) * z
                out[name] = s["v"]
            elif isinstance(node, nir.Output):
                out[name] = z
            else:
                raise AssertionError(f"interpreter lacks {type(node).__name__}")
        for name in delayed:
            delayed[name].append(out[name].numpy())
            state[name] = {"x": out[preds[name][0]]}
    return out["output"].numpy(), {k[: -len(".delay")]: np.stack(v, -1) for k, v in delayed.items()}


def test_round_trip_has_expected_nodes_and_edges(tmp_path):
    graph = small_graph(NeuronParams(threshold=0.5, current_decay=0.25, voltage_decay=0.03))
    back = nir.read(export_nir(graph, tmp_path / "net.nir", time_steps=10))
    kinds = {name: type(node).__name__ for name, node in back.nodes.items()}
    assert kinds == {
        "input": "Input", "output": "Output",
        "c1.syn0": "Conv2d", "c1": "CubaLIF", "c1.delay": "Delay",
        "p1.syn0": "SumPool2d", "p1.syn0.scale": "Scale", "p1": "CubaLIF", "p1.delay": "Delay",
        "c2.syn0": "Conv2d", "c2.syn1": "Conv2d", "c2": "CubaLIF", "c2.delay": "Delay",
        "out.syn0": "Conv2d", "out.syn1": "Conv2d", "out": "I",
    }
    assert sorted(map(tuple, back.edges)) == sorted([
        ("input", "c1.syn0"), ("c1.syn0", "c1"), ("c1", "c1.delay"),
        ("c1.delay", "p1.syn0"), ("p1.syn0", "p1.syn0.scale"), ("p1.syn0.scale", "p1"), ("p1", "p1.delay"),
        ("p1.delay", "c2.syn0"), ("p1.delay", "c2.syn1"), ("c2.syn0", "c2"), ("c2.syn1", "c2"),
        ("c2", "c2.delay"), ("c2.delay", "out.syn0"), ("c1.delay", "out.syn1"),
        ("out.syn0", "out"), ("out.syn1", "out"), ("out", "output"),
    ])
    np.testing.assert_array_equal(back.nodes["input"].output_type["output"], [2, 8, 12])
    np.testing.assert_array_equal(back.nodes["output"].input_type["input"], [3, 4, 6])
    assert back.metadata["time_steps"] == 10 and back.metadata["dt"] == 1.0


def test_round_trip_parameters_follow_the_documented_mapping(tmp_path):
    neuron = NeuronParams(threshold=0.5, current_decay=0.25, voltage_decay=0.03)
    graph = small_graph(neuron)
    back = nir.read(export_nir(graph, tmp_path / "net.nir", time_steps=10))

    conv = graph.nodes[2].synapses[0]
    np.testing.assert_array_equal(back.nodes["c2.syn0"].weight, Q(conv.weight.detach())[..., 0].numpy())
    np.testing.assert_array_equal(back.nodes["c2.syn0"].dilation, [2, 2])
    np.testing.assert_array_equal(back.nodes["c2.syn0"].padding, [2, 2])
    np.testing.assert_array_equal(back.nodes["p1.syn0"].kernel_size, [2, 2])
    assert np.all(back.nodes["p1.syn0.scale"].scale == 0.5)

    lif = back.nodes["c1"]
    a_u, a_v = 1024 / 4096, 123 / 4096  # round(4096 * 0.25), round(4096 * 0.03)
    assert lif.tau_syn.shape == (4, 8, 12)
    np.testing.assert_allclose(lif.tau_syn, 1 / a_u, rtol=1e-6)
    np.testing.assert_allclose(lif.w_in, 1 / a_u, rtol=1e-6)
    np.testing.assert_allclose(lif.tau_mem, 1 / a_v, rtol=1e-6)
    np.testing.assert_allclose(lif.r, 1 / a_v, rtol=1e-6)
    assert np.all(lif.v_threshold == 0.5) and np.all(lif.v_leak == 0) and np.all(lif.v_reset == 0)
    assert np.all(back.nodes["c1.delay"].delay == 1)
    np.testing.assert_allclose(back.nodes["out"].r, 0.1)


def test_euler_simulation_of_the_nir_graph_reproduces_slayer(tmp_path):
    # Decays 1 and 1/2 keep every state on slayer's 1/4096 grid for T = 8
    # (2/64 weight steps halved at most 7 times), so the fixed point is exact.
    graph = small_graph(NeuronParams(threshold=0.5, current_decay=1.0, voltage_decay=0.5))
    torch.manual_seed(1)
    x = (torch.rand(2, 2, 8, 12, 8) < 0.4).float()
    with torch.no_grad():
        readout, spikes = graph(x)
    back = nir.read(export_nir(graph, tmp_path / "net.nir", time_steps=8))
    got_readout, got_spikes = simulate(back, x.numpy())
    for name, s in spikes.items():
        assert float(s.mean()) > 0.02, f"{name} too quiet to test anything"
        np.testing.assert_array_equal(got_spikes[name], s.numpy(), err_msg=name)
    np.testing.assert_allclose(got_readout, readout.numpy(), rtol=1e-5, atol=1e-6)


def test_average_pool_weight_becomes_avgpool2d(tmp_path):
    graph = small_graph(NeuronParams(), pool_weight=0.25)
    back = nir.read(export_nir(graph, tmp_path / "net.nir"))
    assert isinstance(back.nodes["p1.syn0"], nir.AvgPool2d)
    assert "p1.syn0.scale" not in back.nodes
    np.testing.assert_allclose(back.nodes["out"].r, 1.0)  # no T given: the readout sums


def test_without_axon_delay_neurons_feed_consumers_directly(tmp_path):
    back = nir.read(export_nir(small_graph(NeuronParams()), tmp_path / "net.nir", axon_delay=False))
    assert not any(isinstance(n, nir.Delay) for n in back.nodes.values())
    assert ("c1", "p1.syn0") in map(tuple, back.edges)


def test_transposed_conv_layers_are_named_in_the_error_and_nothing_is_written(tmp_path):
    graph = models.build("spiking-fcn-tiny", 2, 6, (16, 16)).eval()
    path = tmp_path / "fcn.nir"
    with pytest.raises(ToolchainError) as err:
        export_nir(graph, path)
    assert "up1.syn0 (ConvTranspose)" in str(err.value) and "readout.syn0 (ConvTranspose)" in str(err.value)
    assert str(path) in str(err.value)
    assert not path.exists()


def test_channel_mixing_pool_and_zero_decay_are_refused(tmp_path):
    neuron = NeuronParams()
    mixing = SpikingGraph([Node("p", ["input"], [slayer.synapse.Pool(3, stride=2, padding=1)], neuron.make()),
                           Node("out", ["p"], [slayer.synapse.Conv(2, 2, 1)], None)], (2, 8, 8), neuron)
    with pytest.raises(ToolchainError, match="p.syn0: slayer Pool .* mixes channels"):
        export_nir(mixing, tmp_path / "a.nir")
    perfect = NeuronParams(voltage_decay=0.0)
    integrator = SpikingGraph([Node("c", ["input"], [slayer.synapse.Conv(2, 2, 1)], perfect.make()),
                               Node("out", ["c"], [slayer.synapse.Conv(2, 2, 1)], None)], (2, 4, 4), perfect)
    with pytest.raises(ToolchainError, match="node 'c': zero current or voltage decay"):
        export_nir(integrator, tmp_path / "b.nir")


def test_spiking_deeplab_tiny_exports_and_reads_back(tmp_path):
    graph = models.build("spiking-deeplab-tiny", 2, 6, (16, 16), quantized=True).eval()
    back = nir.read(export_nir(graph, tmp_path / "deeplab.nir", time_steps=20))
    lifs = [name for name, n in back.nodes.items() if isinstance(n, nir.CubaLIF)]
    assert sorted(lifs) == sorted(n.name for n in graph.nodes[:-1])
    assert isinstance(back.nodes["classifier"], nir.I)
    np.testing.assert_array_equal(back.nodes["output"].input_type["input"], [6, 4, 4])
