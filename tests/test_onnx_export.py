"""ONNX export of a `.net` file: the step graph, run in onnxruntime by the
documented protocol, equals the bit-exact emulator spike for spike on every
layer and step and in the readout voltage; the ANN twin exports as a plain
graph equal to torch."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import models
from deploy import emulator, netfile
from deploy.export import build_netfile
from deploy.netfile import Layer, NetFile, Neuron, Synapse
from deploy.onnx_export import export_ann_onnx, export_onnx, run_onnx_step
from tests.content import assert_has_content
from toolchain.core.errors import ToolchainError
from toolchain.core.loihi import READOUT_NEURON, readout_value


def weights(rng, shape, mean=0.0, spread=40) -> np.ndarray:
    """Even 8-bit synapse integers around `mean`."""
    w = 2 * np.round((mean + spread * rng.standard_normal(shape)) / 2)
    return np.clip(w, -256, 254).astype(np.int32)


def every_type_net(rng) -> NetFile:
    """conv (padding, groups, dilation, stride), pool (unequal kernel, windows
    past the edge, 1x1), dense, convT (stride, groups, output padding), add,
    a skip over layers and a readout reading the input directly."""
    neuron = [Neuron(1024, 128, 40), Neuron(4096, 300, 60), Neuron(2048, 0, 30), Neuron(700, 41, 50)]
    c = lambda *a, **k: Synapse("conv", *a, **k)  # noqa: E731
    layers = [
        Layer("c1", "conv", (4, 8, 12), [0], [c(weights(rng, (4, 2, 3, 3), 8), (1, 1), (1, 1))], neuron[0]),
        Layer("p1", "pool", (4, 4, 6), [1], [Synapse("pool", np.array([[24, 18, 12], [18, 24, 12], [6, 12, 18]]),
                                                      (2, 2))], neuron[1]),
        Layer("g", "conv", (4, 4, 6), [2], [c(weights(rng, (4, 2, 3, 3), 6), (1, 1), (2, 2), (2, 2), 2)], neuron[2]),
        Layer("s", "add", (6, 2, 3), [3, 1], [c(weights(rng, (6, 4, 3, 3), 4), (2, 2), (1, 1)),
                                              c(weights(rng, (6, 4, 4, 4), 2), (4, 4))], neuron[3]),
        Layer("d", "dense", (10, 1, 1), [4], [Synapse("dense", weights(rng, (10, 36), 2))], neuron[0]),
        Layer("t1", "convT", (4, 2, 3), [5], [Synapse("convT", weights(rng, (10, 4, 2, 3), 6))], neuron[1]),
        Layer("t2", "add", (4, 4, 6), [6, 2], [Synapse("convT", weights(rng, (4, 2, 3, 3), 10), (2, 2), (1, 1),
                                                       groups=2),
                                               Synapse("pool", np.array([[30]]))], neuron[3]),
        Layer("out", "add", (3, 4, 6), [7, 0], [c(weights(rng, (3, 4, 1, 1))), c(weights(rng, (3, 2, 2, 2)), (2, 2))],
              Neuron(**READOUT_NEURON)),
    ]
    net = NetFile((2, 8, 12), 12, layers)
    netfile.validate(net)
    return net


def spikes_in(steps: int, shape, density: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((2, *shape, steps), generator=gen) < density).float()


def assert_onnx_equals_emulator(net: NetFile, x: torch.Tensor, path) -> dict[str, int]:
    """Step graph vs emulator on every layer and step and the readout; every
    compared layer must spike and the readout must be non-zero, or the
    comparison would prove nothing. Returns the spike count per layer."""
    voltage, spikes = run_onnx_step(export_onnx(net, path), x.numpy())
    ref = emulator.run(net, x, device="cpu")
    assert set(spikes) == set(ref.spikes) == {layer.name for layer in net.layers[:-1]}
    counts = assert_has_content(ref.spikes, ref.voltage, layers=spikes, where="ONNX vs emulator")
    for name, s in ref.spikes.items():
        assert counts[name] < 0.9 * s.numel(), f"{name}: {counts[name]} spikes of {s.numel()}"
        np.testing.assert_array_equal(spikes[name], s.numpy(), err_msg=name)
    assert voltage.dtype == np.int64 and np.count_nonzero(voltage) > voltage.size // 2
    np.testing.assert_array_equal(voltage, ref.voltage.numpy())
    np.testing.assert_array_equal(readout_value(voltage, x.shape[-1]),
                                  readout_value(ref.voltage.numpy(), x.shape[-1]))
    return counts


def test_every_synapse_type_matches_the_emulator_spike_for_spike(tmp_path):
    net = every_type_net(np.random.default_rng(0))
    assert {s.type for layer in net.layers for s in layer.synapses} == set(netfile.SYNAPSE_TYPES)
    assert_onnx_equals_emulator(net, spikes_in(12, net.input_shape, 0.25), tmp_path / "net.onnx")


def test_saturated_currents_wrap_and_voltages_clip_as_in_the_emulator(tmp_path):
    # 64 channels x 3x3 taps of weight 254: inputs up to 146304 synapse units, so
    # u = a << 6 passes 2^23 and wraps, and v clips at 24 bits.
    rng = np.random.default_rng(1)
    w = np.full((4, 64, 3, 3), 254, np.int32)
    w[2:] = -256
    w[1, ::2] = weights(rng, (32, 3, 3), 0, 200)
    layers = [Layer("big", "conv", (4, 3, 3), [0], [Synapse("conv", w, padding=(1, 1))], Neuron(100, 50, 1000)),
              Layer("out", "conv", (2, 3, 3), [1], [Synapse("conv", weights(rng, (2, 4, 1, 1), 100))],
                    Neuron(**READOUT_NEURON))]
    net = NetFile((64, 3, 3), 12, layers)
    x = spikes_in(12, net.input_shape, 0.9)
    assert 576 * 254 << 6 > 1 << 23
    assert_onnx_equals_emulator(net, x, tmp_path / "sat.onnx")


@pytest.mark.parametrize("name", ["spiking-deeplab-tiny", "spiking-fcn-tiny"])
def test_presets_match_the_emulator_on_every_layer_and_step(name, tmp_path):
    # T above the pipeline depth: the deepest layers carry spikes on several steps
    torch.manual_seed(0)
    model = models.build(name, 2, 6, (16, 24), quantized=True)
    t_steps = model.pipeline_depth + 3
    net = build_netfile(model, time_steps=t_steps)
    counts = assert_onnx_equals_emulator(net, spikes_in(t_steps, net.input_shape, 0.3), tmp_path / "net.onnx")
    assert len(counts) == len(net.layers) - 1


def test_step_graph_is_valid_opset17_with_named_state_and_dynamic_batch(tmp_path):
    net = every_type_net(np.random.default_rng(0))
    path = export_onnx(net, tmp_path / "net.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 17
    meta = {p.key: p.value for p in proto.metadata_props}
    state = json.loads(meta["toolchain.state"])
    spiking = [layer.name for layer in net.layers[:-1]]
    assert state == ["input.s"] + [f"{n}.{k}" for n in spiking for k in "uvs"] + ["out.v"]
    assert meta["toolchain.readout"] == "out.v" and meta["toolchain.mode"] == "step"
    assert "T+D steps" in meta["toolchain.protocol"] and meta["toolchain.time_steps"] == "12"
    assert [i.name for i in proto.graph.input] == ["input"] + state
    assert [o.name for o in proto.graph.output] == [f"{s}.next" for s in state]
    sess = ort.InferenceSession(str(path))
    types = {i.name: i.type for i in sess.get_inputs()}
    assert types["c1.u"] == types["c1.v"] == types["out.v"] == "tensor(int64)"
    assert types["c1.s"] == types["input"] == "tensor(float)"
    for batch in (1, 3):
        feeds = {i.name: np.zeros((batch, *i.shape[1:]), np.int64 if "int64" in i.type else np.float32)
                 for i in sess.get_inputs()}
        outs = sess.run(None, feeds)
        assert all(o.shape[0] == batch for o in outs)


def test_ann_twin_exports_its_scores_clip_levels_and_transfer_curves_as_a_plain_graph(tmp_path):
    torch.manual_seed(0)
    twin = models.build("spiking-fcn-tiny-ann", 2, 6, (16, 24)).eval()
    path = export_ann_onnx(twin, tmp_path / "ann.onnx")
    proto = onnx.load(str(path))
    assert {p.key: p.value for p in proto.metadata_props}["toolchain.mode"] == "ann"
    x = torch.rand(3, 2, 16, 24)
    got = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, twin(x)[0].detach().numpy(), rtol=1e-4, atol=1e-5)
    # a twin tuned under train.ann_clip exports its clip levels (here low enough to bite)
    with torch.no_grad():
        _, acts = twin(x)
    twin.clip_at({name: 0.5 * float(a.max()) for name, a in acts.items()})
    path = export_ann_onnx(twin, tmp_path / "clipped.onnx")
    got = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    clipped = twin(x)[0].detach().numpy()
    assert not np.allclose(clipped, ort.InferenceSession(str(tmp_path / "ann.onnx")).run(None, {"input": x.numpy()})[0])
    np.testing.assert_allclose(got, clipped, rtol=1e-4, atol=1e-5)
    # and one tuned under its conversion's spike rates (train.ann_transfer) its curves
    from models.ann import TRANSFER_KNOTS, TRANSFER_STEP

    r = np.arange(TRANSFER_KNOTS) * TRANSFER_STEP
    twin.set_transfer({name: 0.5 * float(a.max()) for name, a in acts.items()},
                      {name: np.minimum(r / (1 + 0.5 * r), 1).tolist() for name in acts})
    path = export_ann_onnx(twin, tmp_path / "transfer.onnx")
    got = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    bent = twin(x)[0].detach().numpy()
    assert not np.allclose(bent, clipped)
    np.testing.assert_allclose(got, bent, rtol=1e-4, atol=1e-5)


def test_spiking_models_and_shapeless_modules_are_refused_by_the_ann_export(tmp_path):
    spiking = models.build("spiking-deeplab-tiny", 2, 6, (16, 24))
    with pytest.raises(ToolchainError, match=r"is spiking; export its \.net"):
        export_ann_onnx(spiking, tmp_path / "a.onnx")
    with pytest.raises(ToolchainError, match="pass input_shape"):
        export_ann_onnx(torch.nn.Conv2d(1, 1, 1), tmp_path / "b.onnx")
    export_ann_onnx(torch.nn.Conv2d(1, 1, 1), tmp_path / "c.onnx", input_shape=(1, 4, 4))
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()


def test_bad_inputs_are_refused_naming_the_file_and_earlier_files_are_kept(tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(b"earlier")
    with pytest.raises(ToolchainError, match=f"{path}: the ONNX step graph is built from a .net file"):
        export_onnx(models.build("spiking-deeplab-tiny", 2, 6, (16, 24)), path)
    # 20000 inputs of weight 254: partial sums past float32's exact range
    huge = NetFile((5000, 2, 2), 4, [Layer("out", "dense", (2, 1, 1), [0],
                                           [Synapse("dense", np.full((2, 20000), 254, np.int32))],
                                           Neuron(**READOUT_NEURON))])
    with pytest.raises(ToolchainError, match=r"layer 1 \(out\) synapse 0: fan-in too large"):
        export_onnx(huge, path)
    assert path.read_bytes() == b"earlier"
    assert list(tmp_path.iterdir()) == [path]
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ToolchainError, match="cannot write here"):
        export_onnx(every_type_net(np.random.default_rng(0)), blocker / "net.onnx")


def test_run_onnx_step_refuses_missing_foreign_and_plain_graphs(tmp_path):
    with pytest.raises(ToolchainError, match="no such ONNX file"):
        run_onnx_step(tmp_path / "missing.onnx", np.zeros((1, 1, 4, 4, 2)))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ToolchainError, match=f"{tmp_path / 'junk.onnx'}: not a readable ONNX model"):
        run_onnx_step(tmp_path / "junk.onnx", np.zeros((1, 1, 4, 4, 2)))
    ann = export_ann_onnx(torch.nn.Conv2d(1, 1, 1), tmp_path / "ann.onnx", input_shape=(1, 4, 4))
    with pytest.raises(ToolchainError, match="not a spiking step graph"):
        run_onnx_step(ann, np.zeros((1, 1, 4, 4, 2)))
    step = export_onnx(every_type_net(np.random.default_rng(0)), tmp_path / "step.onnx")
    with pytest.raises(ToolchainError, match=r"frames of shape \(1, 1, 4, 4, 2\); expected \(N, 2, 8, 12, T\)"):
        run_onnx_step(step, np.zeros((1, 1, 4, 4, 2)))
