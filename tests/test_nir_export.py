"""NIR export of a `.net` file: the written graph reads back with `nir.read`
with the documented nodes, edges and parameters, and, simulated in float
with forward Euler at dt = 1, reproduces the emulator's spikes and readout
where Loihi's fixed point is exact."""
from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from deploy import emulator, netfile
from deploy.export import build_netfile
from deploy.netfile import Layer, NetFile, Neuron, Synapse
from deploy.nir_export import export_nir
from tests.content import assert_output_has_content
from toolchain.core.errors import ToolchainError
from toolchain.core.loihi import READOUT_NEURON, readout_value

READOUT = Neuron(**READOUT_NEURON)


def weights(rng, shape, mean=0.0, spread=40) -> np.ndarray:
    w = 2 * np.round((mean + spread * rng.standard_normal(shape)) / 2)
    return np.clip(w, -256, 254).astype(np.int32)


def small_net(neuron: Neuron, pool_weight: int = 32, time_steps: int = 10) -> NetFile:
    """conv -> pool -> add of a dilated and a 1x1 conv -> readout adding a skip from c1."""
    rng = np.random.default_rng(0)
    layers = [
        Layer("c1", "conv", (4, 8, 12), [0], [Synapse("conv", weights(rng, (4, 2, 3, 3), 16), padding=(1, 1))],
              neuron),
        Layer("p1", "pool", (4, 4, 6), [1], [Synapse("pool", np.full((2, 2), pool_weight), (2, 2))], neuron),
        Layer("c2", "add", (4, 4, 6), [2, 2], [Synapse("conv", weights(rng, (4, 4, 3, 3), 8), padding=(2, 2),
                                                       dilation=(2, 2)),
                                               Synapse("conv", weights(rng, (4, 4, 1, 1), 30))], neuron),
        Layer("out", "add", (3, 4, 6), [3, 1], [Synapse("conv", weights(rng, (3, 4, 1, 1))),
                                                Synapse("conv", weights(rng, (3, 4, 2, 2)), (2, 2))], READOUT),
    ]
    net = NetFile((2, 8, 12), time_steps, layers)
    netfile.validate(net)
    return net


def delayed_net(neuron: Neuron, time_steps: int = 8) -> NetFile:
    """small_net with synapse delays: c2's 1x1 synapse 2 steps (spiking dynamics change) and the
    readout's skip from c1 2 steps, to arrive with the deep path."""
    net = small_net(neuron, time_steps=time_steps)
    net.layers[2].synapses[1].delay = 2
    net.layers[-1].synapses[1].delay = 2
    netfile.validate(net)
    return net


def dense_net(neuron: Neuron, time_steps: int = 8) -> NetFile:
    """A pool with unequal kernel weights (a per-channel conv in NIR), a grouped conv, dense layers."""
    rng = np.random.default_rng(1)
    layers = [
        Layer("c1", "conv", (4, 8, 12), [0], [Synapse("conv", weights(rng, (4, 2, 3, 3), 16), padding=(1, 1))],
              neuron),
        Layer("p1", "pool", (4, 4, 6), [1], [Synapse("pool", np.array([[40, 20], [20, 10]]), (2, 2))], neuron),
        Layer("g", "conv", (4, 4, 6), [2], [Synapse("conv", weights(rng, (4, 2, 3, 3), 16), padding=(1, 1),
                                                    groups=2)], neuron),
        Layer("d1", "dense", (12, 1, 1), [3], [Synapse("dense", weights(rng, (12, 96), 6))], neuron),
        Layer("out", "dense", (5, 1, 1), [4], [Synapse("dense", weights(rng, (5, 12)))], READOUT),
    ]
    net = NetFile((2, 8, 12), time_steps, layers)
    netfile.validate(net)
    return net


def simulate(graph: nir.NIRGraph, x: np.ndarray, *, summed: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Forward-Euler (dt = 1) interpreter of the NIR node kinds the exporter
    writes. Returns the output node's value after the last step (`summed`:
    summed over all steps) and the output of every Delay node (N, C, H, W, T)."""
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
    total = 0.0
    for t in range(x.shape[-1]):
        out = {}
        for name in order:
            node = nodes[name]
            if isinstance(node, nir.Input):
                out[name] = torch.as_tensor(x[..., t])
                continue
            if isinstance(node, nir.Delay):  # the input of `delay` steps ago
                hist, d = state.get(name, {}).get("hist", []), int(np.asarray(node.delay).reshape(-1)[0])
                out[name] = hist[-d] if len(hist) >= d else torch.zeros(n_batch, *node.delay.shape)
                continue
            z = sum(out[p] for p in preds[name])
            if isinstance(node, nir.Conv2d):
                out[name] = F.conv2d(z, torch.as_tensor(node.weight), torch.as_tensor(node.bias),
                                     tuple(node.stride), tuple(node.padding), tuple(node.dilation), node.groups)
            elif isinstance(node, nir.SumPool2d):
                out[name] = F.avg_pool2d(z, tuple(node.kernel_size), tuple(node.stride), tuple(node.padding),
                                         divisor_override=1)
            elif isinstance(node, nir.Scale):
                out[name] = z * torch.as_tensor(node.scale)
            elif isinstance(node, nir.Flatten):
                out[name] = z.flatten(1 + node.start_dim)
            elif isinstance(node, nir.Linear):
                out[name] = z @ torch.as_tensor(node.weight).T
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
        total = total + out["output"]
        for name in delayed:
            delayed[name].append(out[name].numpy())
            state.setdefault(name, {"hist": []})["hist"].append(out[preds[name][0]])
    # a layer's spikes are its axon delay's output (`L.delay`); `L.syn<k>.delay` are synapse delays
    return (total if summed else out["output"]).numpy(), {k[: -len(".delay")]: np.stack(v, -1) for k, v in delayed.items()
                                   if ".syn" not in k}


def test_round_trip_has_expected_nodes_and_edges(tmp_path):
    back = nir.read(export_nir(small_net(Neuron(1024, 123, 32)), tmp_path / "net.nir", timing="exact"))
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
    net = small_net(Neuron(1024, 123, 32))
    back = nir.read(export_nir(net, tmp_path / "net.nir", timing="exact"))

    np.testing.assert_array_equal(back.nodes["c2.syn0"].weight, net.layers[2].synapses[0].weight / 64)
    np.testing.assert_array_equal(back.nodes["c2.syn0"].dilation, [2, 2])
    np.testing.assert_array_equal(back.nodes["c2.syn0"].padding, [2, 2])
    np.testing.assert_array_equal(back.nodes["p1.syn0"].kernel_size, [2, 2])
    assert np.all(back.nodes["p1.syn0.scale"].scale == 0.5)  # pool weight 32 / 64

    lif = back.nodes["c1"]
    a_u, a_v = 1024 / 4096, 123 / 4096
    assert lif.tau_syn.shape == (4, 8, 12)
    np.testing.assert_allclose(lif.tau_syn, 1 / a_u, rtol=1e-6)
    np.testing.assert_allclose(lif.w_in, 1 / a_u, rtol=1e-6)
    np.testing.assert_allclose(lif.tau_mem, 1 / a_v, rtol=1e-6)
    np.testing.assert_allclose(lif.r, 1 / a_v, rtol=1e-6)
    assert np.all(lif.v_threshold == 0.5)  # vThMant 32 / 64
    assert np.all(lif.v_leak == 0) and np.all(lif.v_reset == 0)
    assert np.all(back.nodes["c1.delay"].delay == 1)
    np.testing.assert_allclose(back.nodes["out"].r, 0.1)  # 1 / T


def test_pool_weight_of_64_has_no_scale_and_unequal_pool_weights_are_a_per_channel_conv(tmp_path):
    back = nir.read(export_nir(small_net(Neuron(1024, 123, 32), pool_weight=64), tmp_path / "a.nir", timing="exact"))
    assert isinstance(back.nodes["p1.syn0"], nir.SumPool2d) and "p1.syn0.scale" not in back.nodes
    back = nir.read(export_nir(dense_net(Neuron(1024, 123, 32)), tmp_path / "b.nir", timing="exact"))
    pool = back.nodes["p1.syn0"]
    assert isinstance(pool, nir.Conv2d) and pool.groups == 1 and pool.weight.shape == (4, 4, 2, 2)
    np.testing.assert_array_equal(pool.weight[2, 2], [[40 / 64, 20 / 64], [20 / 64, 10 / 64]])
    assert np.count_nonzero(pool.weight[2]) == 4  # channel 2 reads channel 2 only
    grouped = back.nodes["g.syn0"]  # groups 2 as its block-diagonal weight
    assert grouped.weight.shape == (4, 4, 3, 3)
    assert not grouped.weight[:2, 2:].any() and not grouped.weight[2:, :2].any()
    assert isinstance(back.nodes["d1.syn0.flatten"], nir.Flatten) and isinstance(back.nodes["d1.syn0"], nir.Linear)
    assert "out.syn0.flatten" not in back.nodes  # d1 is already 1-D
    np.testing.assert_array_equal(back.nodes["output"].input_type["input"], [5])


@pytest.mark.parametrize("make", [small_net, dense_net, delayed_net])
def test_euler_simulation_of_the_nir_graph_reproduces_the_emulator(make, tmp_path):
    # iDecay 4096 and vDecay 2048 (u is the step's input, v halves) keep every
    # state on Loihi's integer grid for T = 8 (even weights x 64, halved at most
    # 7 times), so the float NIR dynamics are exact.
    net = make(Neuron(4096, 2048, 40), time_steps=8)
    x = (torch.rand(2, *net.input_shape, 8, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    ref = emulator.run(net, x, device="cpu")
    # the NIR graph runs the frame's T + D - 1 steps: the input, then zeros while the pipeline drains
    padded = F.pad(x, (0, net.spike_steps(8) - 8))
    graph = nir.read(export_nir(net, tmp_path / "net.nir", timing="exact"))
    got_readout, got_spikes = simulate(graph, padded.numpy())
    assert set(got_spikes) == set(ref.spikes)
    assert_output_has_content(ref, layers=[layer.name for layer in net.layers[:-1]], where="NIR vs emulator")
    for name, s in ref.spikes.items():
        assert 0.02 < float(s.float().mean()) < 0.9, f"{name} too quiet or saturated to test anything"
        # NIR step t is Lava step t+1: the delay's output at t is the layer's spikes at Lava step t
        # (a dense layer is 1-D in NIR, (C, 1, 1) in the .net)
        np.testing.assert_array_equal(got_spikes[name].reshape(s.shape), s.numpy(), err_msg=name)
    expected = readout_value(ref.voltage.numpy().astype(np.float64), 8)
    assert np.count_nonzero(expected) > expected.size // 2
    np.testing.assert_allclose(got_readout.reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)


def test_without_axon_delay_neurons_feed_consumers_directly(tmp_path):
    back = nir.read(export_nir(small_net(Neuron(1024, 123, 32)), tmp_path / "net.nir", timing="exact",
                               axon_delay=False))
    assert not any(isinstance(n, nir.Delay) for n in back.nodes.values())
    assert ("c1", "p1.syn0") in map(tuple, back.edges)


def test_transposed_conv_layers_are_named_in_the_error_and_nothing_is_written(tmp_path):
    torch.manual_seed(0)
    net = build_netfile(models.build("spiking-fcn-tiny", 2, 6, (16, 16), quantized=True), time_steps=4)
    path = tmp_path / "fcn.nir"
    with pytest.raises(ToolchainError) as err:
        export_nir(net, path)
    assert "up1.syn0 (convT)" in str(err.value) and "readout.syn0 (convT)" in str(err.value)
    assert str(path) in str(err.value)
    assert not path.exists()


def test_pool_past_the_edge_zero_decay_and_non_nets_are_refused(tmp_path):
    edge = NetFile((2, 5, 5), 4, [
        Layer("p", "pool", (2, 3, 3), [0], [Synapse("pool", np.full((2, 2), 32), (2, 2))], Neuron(1024, 100, 10)),
        Layer("out", "conv", (2, 3, 3), [1], [Synapse("conv", np.full((2, 2, 1, 1), 64))], READOUT)])
    netfile.validate(edge)
    with pytest.raises(ToolchainError, match=r"p.syn0: pool windows reach past the input edge"):
        export_nir(edge, tmp_path / "a.nir", timing="exact")
    integrator = small_net(Neuron(1024, 0, 32))
    with pytest.raises(ToolchainError, match=r"layer 1 \(c1\): zero current or voltage decay"):
        export_nir(integrator, tmp_path / "b.nir", timing="exact")
    with pytest.raises(ToolchainError, match="NIR export is built from a .net file"):
        export_nir(models.build("spiking-deeplab-tiny", 2, 6, (16, 16)), tmp_path / "c.nir")
    assert list(tmp_path.iterdir()) == []


def test_spiking_deeplab_tiny_exports_and_reads_back(tmp_path):
    torch.manual_seed(0)
    net = build_netfile(models.build("spiking-deeplab-tiny", 2, 6, (16, 16), quantized=True), time_steps=20)
    back = nir.read(export_nir(net, tmp_path / "deeplab.nir", timing="exact"))
    lifs = [name for name, n in back.nodes.items() if isinstance(n, nir.CubaLIF)]
    assert sorted(lifs) == sorted(layer.name for layer in net.layers[:-1])
    assert isinstance(back.nodes["classifier"], nir.I)
    np.testing.assert_allclose(back.nodes["classifier"].r, 1 / 20)
    np.testing.assert_array_equal(back.nodes["output"].input_type["input"], [6, 4, 4])
    np.testing.assert_array_equal(back.nodes["conv1.syn0"].weight, net.layers[0].synapses[0].weight / 64)


# ---------------------------------------------------------------- the portable graph (the default)
def test_portable_graph_has_only_consumer_nodes_and_delays_only_where_depths_differ(tmp_path):
    net = small_net(Neuron(1024, 123, 32))  # the readout adds c2 (3 layers deep) and a skip from c1
    back = nir.read(export_nir(net, tmp_path / "net.nir"))
    kinds = {name: type(node).__name__ for name, node in back.nodes.items()}
    assert kinds == {
        "input": "Input", "output": "Output",
        "c1.syn0": "Conv2d", "c1": "CubaLIF", "p1.syn0": "Conv2d", "p1": "CubaLIF",
        "c2.syn0": "Conv2d", "c2.syn1": "Conv2d", "c2": "CubaLIF",
        "out.syn0.delay": "Delay", "out.syn0": "Conv2d", "out.syn1": "Conv2d",
    }
    assert sorted(map(tuple, back.edges)) == sorted([
        ("input", "c1.syn0"), ("c1.syn0", "c1"), ("c1", "p1.syn0"), ("p1.syn0", "p1"),
        ("p1", "c2.syn0"), ("p1", "c2.syn1"), ("c2.syn0", "c2"), ("c2.syn1", "c2"),
        ("c2", "out.syn0.delay"), ("out.syn0.delay", "out.syn0"), ("out.syn0", "output"),
        ("c1", "out.syn1"), ("out.syn1", "output"),
    ])
    md = back.metadata
    assert md["timing"] == "portable" and md["dt"] == 1e-4 and md["time_steps"] == 10
    # the skip arrives 2 steps before the deep path in Lava: the deep path waits 2 steps (in seconds: x dt)
    np.testing.assert_allclose(back.nodes["out.syn0.delay"].delay, 2e-4)
    assert md["lag"] == 2 and md["run_steps"] == 10 + net.pipeline_depth - 2
    assert md["delay_nodes"] == "out.syn0.delay" and "cannot import" in md["consumers"]
    pool = back.nodes["p1.syn0"]  # SumPool2d x Scale 0.5 folded into a per-channel conv
    assert pool.weight.shape == (4, 4, 2, 2) and np.all(pool.weight[1, 1] == 0.5) and pool.weight.sum() == 8
    lif = back.nodes["c1"]  # dt = 1e-4: tau = dt / a, w_in and r as at dt = 1
    np.testing.assert_allclose(lif.tau_syn, 1e-4 * 4096 / 1024, rtol=1e-6)
    np.testing.assert_allclose(lif.tau_mem, 1e-4 * 4096 / 123, rtol=1e-6)
    np.testing.assert_allclose(lif.w_in, 4096 / 1024, rtol=1e-6)
    np.testing.assert_allclose(lif.r, 4096 / 123, rtol=1e-6)
    # delayed_net's skip delay matches the depths: no Delay on that path
    delayed = nir.read(export_nir(delayed_net(Neuron(1024, 123, 32)), tmp_path / "d.nir"))
    assert "out.syn0.delay" not in delayed.nodes and "out.syn1.delay" not in delayed.nodes
    assert "c2.syn1.delay" in delayed.nodes  # c2's 2-step 1x1 synapse: longer than its 3x3 twin


@pytest.mark.parametrize("make", [small_net, dense_net, delayed_net])
def test_euler_simulation_of_the_portable_graph_reproduces_the_emulators_readout(make, tmp_path):
    # as the exact-timing test above: states stay on Loihi's grid, so float dynamics are exact
    net = make(Neuron(4096, 2048, 40), time_steps=8)
    x = (torch.rand(2, *net.input_shape, 8, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    ref = emulator.run(net, x, device="cpu")
    graph = nir.read(export_nir(net, tmp_path / "net.nir", dt=1.0))  # the interpreter steps by 1
    steps = graph.metadata["run_steps"]
    got, _ = simulate(graph, F.pad(x, (0, steps - 8)).numpy(), summed=True)
    expected = readout_value(ref.voltage.numpy().astype(np.float64), 8)
    assert np.count_nonzero(expected) > expected.size // 2
    np.testing.assert_allclose(got.reshape(expected.shape) / 8, expected, rtol=1e-5, atol=1e-6)
