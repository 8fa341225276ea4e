"""ONNX export: the single-step spiking graph reproduces slayer's forward pass
step by step in onnxruntime, and the non-spiking twin matches torch."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from lava.lib.dl import slayer

import models
from deploy.onnx_export import AnnTwin, cuba_step, export_onnx, neuron_constants, run_onnx_step
from models.graph import NeuronParams, Node, SpikingGraph
from toolchain.errors import ToolchainError

Q = slayer.utils.quantize_hook_fx


def every_synapse_graph(neuron: NeuronParams, quantize, scale: float) -> SpikingGraph:
    """Conv, slayer's channel-folding Pool with padding, dilated conv, additive skip,
    Dense, Unpool, ConvTranspose: every synapse kind the step graph supports."""
    q = quantize
    nodes = [
        Node("c1", ["input"], [slayer.synapse.Conv(2, 4, 3, padding=1, weight_scale=3 * scale, pre_hook_fx=q)],
             neuron.make()),
        Node("p1", ["c1"], [slayer.synapse.Pool(3, stride=2, padding=1, weight_scale=scale, pre_hook_fx=q)],
             neuron.make()),
        Node("c2", ["p1", "p1"], [slayer.synapse.Conv(4, 4, 3, padding=2, dilation=2, weight_scale=3 * scale,
                                                      pre_hook_fx=q),
                                  slayer.synapse.Conv(4, 4, 1, weight_scale=scale, pre_hook_fx=q)], neuron.make()),
        Node("d", ["c2"], [slayer.synapse.Dense((6, 5, 4), 5, weight_scale=3 * scale, pre_hook_fx=q)],
             neuron.make()),
        Node("un", ["d"], [slayer.synapse.Unpool(2, weight_scale=scale, pre_hook_fx=q)], neuron.make()),
        Node("up", ["un"], [slayer.synapse.ConvTranspose(5, 3, 3, stride=2, padding=1, weight_scale=3 * scale,
                                                         pre_hook_fx=q)], neuron.make()),
        Node("out", ["up", "c1"], [slayer.synapse.Conv(3, 3, 1, pre_hook_fx=q),
                                   slayer.synapse.Conv(4, 3, (6, 10), pre_hook_fx=q)], None),
    ]
    return SpikingGraph(nodes, (2, 8, 12), neuron).eval()


@pytest.fixture(params=["quantized-spikes", "float-analog"])
def case(request):
    """A graph and an input: quantized weights with binary input spikes, or
    float weights with real-valued input and a high threshold."""
    torch.manual_seed(3)
    if request.param == "quantized-spikes":
        neuron = NeuronParams(threshold=0.5, current_decay=0.25, voltage_decay=0.03)
        graph = every_synapse_graph(neuron, Q, 1.0)
        x = (torch.rand(3, 2, 8, 12, 12) < 0.3).float()
    else:
        neuron = NeuronParams(threshold=40.0, current_decay=0.1, voltage_decay=0.2)
        graph = every_synapse_graph(neuron, None, 30.0)
        x = torch.randn(3, 2, 8, 12, 12)
    return graph, x


def test_step_graph_in_onnxruntime_reproduces_slayer_spikes_and_readout(case, tmp_path):
    graph, x = case
    with torch.no_grad():
        readout, spikes = graph(x)
    path = export_onnx(graph, tmp_path / "net.onnx")
    got_readout, got_spikes = run_onnx_step(path, x.numpy())

    assert set(got_spikes) == set(spikes)
    for name, s in spikes.items():
        assert 0.02 < float(s.mean()) < 0.98, f"{name} too quiet or saturated to test anything"
        np.testing.assert_array_equal(got_spikes[name], s.numpy(), err_msg=name)
    np.testing.assert_allclose(got_readout, readout.numpy(), rtol=1e-5, atol=1e-5)


def test_step_graph_is_valid_opset17_with_named_state_and_dynamic_batch(case, tmp_path):
    graph, _ = case
    path = export_onnx(graph, tmp_path / "net.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 17
    meta = {p.key: p.value for p in proto.metadata_props}
    state = json.loads(meta["toolchain.state"])
    spiking = [n.name for n in graph.nodes[:-1]]
    assert state == [f"{n}.{k}" for n in spiking for k in "uvs"] + ["readout.acc"]
    assert [i.name for i in proto.graph.input] == ["input"] + state
    assert [o.name for o in proto.graph.output] == [f"{s}.next" for s in state]
    sess = ort.InferenceSession(str(path))
    for batch in (1, 4):
        feeds = {i.name: np.zeros((batch, *i.shape[1:]), np.float32) for i in sess.get_inputs()}
        outs = sess.run(None, feeds)
        assert all(o.shape[0] == batch for o in outs)


def test_cuba_step_truncates_toward_zero_and_resets_above_threshold():
    neuron = NeuronParams(threshold=1.0, current_decay=0.5, voltage_decay=0.5).make()
    const = neuron_constants(Node("n", ["input"], [slayer.synapse.Conv(1, 1, 1)], neuron))
    assert const["current_decay"] == 2048 and const["voltage_decay"] == 2048
    # u = trunc(u * 2048 / 4096) + trunc(z * 4096), in 1/4096 units; v likewise; spike if v > 1.
    u0 = torch.tensor([3.0, -3.0, 0.0, 0.0]) / 4096
    z = torch.tensor([0.5 / 4096, -0.5 / 4096, 4097.0 / 4096, 1.0])
    u, v, s = cuba_step(z, u0, torch.zeros(4), **const)
    np.testing.assert_array_equal((u * 4096).numpy(), [1, -1, 4097, 4096])
    np.testing.assert_array_equal(s.numpy(), [0, 0, 1, 0])
    np.testing.assert_array_equal((v * 4096).numpy(), [1, -1, 0, 4096])


def test_ann_twin_runs_in_onnxruntime_like_torch_with_relu_neurons(tmp_path):
    torch.manual_seed(0)
    graph = every_synapse_graph(NeuronParams(), Q, 1.0)
    path = export_onnx(graph, tmp_path / "twin.onnx", mode="ann")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = torch.rand(2, 2, 8, 12)
    twin = AnnTwin(graph)
    got = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, twin(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_ann_twin_is_the_spiking_synapses_with_relu_and_no_delay():
    torch.manual_seed(0)
    neuron = NeuronParams()
    conv1, conv2 = slayer.synapse.Conv(2, 3, 3, padding=1, pre_hook_fx=Q), slayer.synapse.Conv(3, 2, 1, pre_hook_fx=Q)
    graph = SpikingGraph([Node("c1", ["input"], [conv1], neuron.make()), Node("out", ["c1"], [conv2], None)],
                         (2, 5, 6), neuron)
    x = torch.rand(2, 2, 5, 6)
    with torch.no_grad():
        expected = conv2(F.relu(conv1(x[..., None])))[..., 0]
        torch.testing.assert_close(AnnTwin(graph)(x), expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["spiking-deeplab-tiny", "spiking-fcn-tiny"])
def test_presets_export_to_step_graph_and_twin_matching_torch(name, tmp_path):
    torch.manual_seed(0)
    graph = models.build(name, 2, 6, (16, 24), quantized=True).eval()
    x = (torch.rand(2, 2, 16, 24, 6) < 0.3).float()
    with torch.no_grad():
        readout, spikes = graph(x)
    got_readout, got_spikes = run_onnx_step(export_onnx(graph, tmp_path / "snn.onnx"), x.numpy())
    for key, s in spikes.items():
        np.testing.assert_array_equal(got_spikes[key], s.numpy(), err_msg=key)
    np.testing.assert_allclose(got_readout, readout.numpy(), rtol=1e-5, atol=1e-5)

    twin = models.build(name + "-ann", 2, 6, (16, 24)).eval()
    path = export_onnx(twin, tmp_path / "ann.onnx", mode="ann")
    xa = torch.rand(3, 2, 16, 24)
    got = ort.InferenceSession(str(path)).run(None, {"input": xa.numpy()})[0]
    np.testing.assert_allclose(got, twin(xa)[0].detach().numpy(), rtol=1e-4, atol=1e-5)


def test_unsupported_synapse_is_named_and_earlier_file_is_kept(tmp_path):
    neuron = NeuronParams()
    graph = SpikingGraph([Node("c1", ["input"], [slayer.synapse.Conv(1, 2, 1)], neuron.make()),
                          Node("odd", ["c1"], [torch.nn.Identity()], None)], (1, 4, 4), neuron)
    path = tmp_path / "net.onnx"
    path.write_bytes(b"earlier")
    with pytest.raises(ToolchainError, match=r"node 'odd' synapse 0: Identity"):
        export_onnx(graph, path)
    assert path.read_bytes() == b"earlier"
    assert list(tmp_path.iterdir()) == [path]


def test_bad_mode_and_non_graph_step_export_are_refused(tmp_path):
    graph = every_synapse_graph(NeuronParams(), None, 1.0)
    with pytest.raises(ToolchainError, match="unknown ONNX export mode 'lava'"):
        export_onnx(graph, tmp_path / "a.onnx", mode="lava")
    with pytest.raises(ToolchainError, match="needs a SpikingGraph"):
        export_onnx(torch.nn.Conv2d(1, 1, 1), tmp_path / "b.onnx")
    with pytest.raises(ToolchainError, match="pass input_shape"):
        export_onnx(torch.nn.Conv2d(1, 1, 1), tmp_path / "c.onnx", mode="ann")
