"""`toolchain export --target onnx|nir` on a training checkpoint: both are
built from the quantized `.net` the checkpoint exports to, the ONNX step
graph equal to the emulator, and an ANN checkpoint exports its plain graph."""
from __future__ import annotations

import nir
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

import models
from deploy import emulator
from deploy.export import build_netfile
from deploy.onnx_export import run_onnx_step
from toolchain.cli import cli
from toolchain.core import checkpoint as checkpoint_file
from toolchain.core.config import Config, to_dict


def write_checkpoint(path, ann: bool = False):
    cfg = Config()
    cfg.data.height, cfg.data.width = 16, 24
    cfg.train.ann = ann
    torch.manual_seed(0)
    model = models.from_config(cfg, 2, 6, ann=ann)
    checkpoint_file.save(path, model=model.state_dict(), config=to_dict(cfg),
                    dataset={"in_channels": 2, "num_classes": 6, "class_names": list("abcdef")})
    return path


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "model.pt")


def export(*args):
    result = CliRunner().invoke(cli, ["export", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_onnx_target_writes_the_step_graph_of_the_net_equal_to_the_emulator(checkpoint, tmp_path):
    out = tmp_path / "net.onnx"
    printed = export("--checkpoint", checkpoint, "--target", "onnx", "--out", out, "--set", "data.time_steps=12")
    assert str(out) in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "net.onnx"]  # no .ann.onnx twin

    model, _ = models.load_checkpoint(checkpoint, quantized=True)
    net = build_netfile(model, time_steps=12)
    x = (torch.rand(1, 2, 16, 24, 12, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    ref = emulator.run(net, x, device="cpu")
    voltage, spikes = run_onnx_step(out, x.numpy())
    for name, s in ref.spikes.items():
        assert s.any(), f"{name} never spikes: the comparison would prove nothing"
        np.testing.assert_array_equal(spikes[name], s.numpy(), err_msg=name)
    assert voltage.any()
    np.testing.assert_array_equal(voltage, ref.voltage.numpy())


def test_onnx_target_on_an_ann_checkpoint_writes_its_plain_graph(tmp_path):
    ckpt = write_checkpoint(tmp_path / "ann.pt", ann=True)
    out = tmp_path / "ann.onnx"
    export("--checkpoint", ckpt, "--target", "onnx", "--out", out)
    model, _ = models.load_checkpoint(ckpt)
    x = torch.rand(2, 2, 16, 24)
    got = ort.InferenceSession(str(out)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x)[0].detach().numpy(), rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "ann.ann.onnx").exists()


def test_nir_target_writes_graph_with_configured_time_steps(checkpoint, tmp_path):
    out = tmp_path / "net.nir"
    export("--checkpoint", checkpoint, "--target", "nir", "--out", out, "--set", "data.time_steps=5")
    back = nir.read(out)
    # the portable graph by default: it ends at the classifier's synapse, the host sums over run_steps
    assert back.metadata["time_steps"] == 5 and back.metadata["timing"] == "portable"
    assert "classifier" not in back.nodes and ("classifier.syn0", "output") in map(tuple, back.edges)
    model, _ = models.load_checkpoint(checkpoint, quantized=True)
    net = build_netfile(model, time_steps=5)
    np.testing.assert_array_equal(back.nodes["conv1.syn0"].weight, net.layers[0].synapses[0].weight / 64)
    exact = tmp_path / "exact.nir"
    export("--checkpoint", checkpoint, "--target", "nir", "--out", exact, "--set", "data.time_steps=5",
           "--nir-timing", "exact")
    np.testing.assert_allclose(nir.read(exact).nodes["classifier"].r, 0.2)


def test_export_at_another_input_size_keeps_the_stored_configuration(tmp_path):
    """`--set data.height/width` builds the trained weights at another size;
    what the run stored (its 6 channels, T) stays, and another model is refused."""
    cfg = Config()
    cfg.data.height, cfg.data.width, cfg.data.channels, cfg.data.time_steps = 16, 24, "all", 7
    torch.manual_seed(0)
    model = models.from_config(cfg, 6, 6)
    ckpt = tmp_path / "six.pt"
    checkpoint_file.save(ckpt, model=model.state_dict(), config=to_dict(cfg),
                         dataset={"in_channels": 6, "num_classes": 6, "class_names": list("abcdef")})
    out = tmp_path / "big.net"
    export("--checkpoint", ckpt, "--out", out, "--frames", 0, "--set", "data.height=40", "--set", "data.width=56")
    from deploy import load
    net = load(out).net
    assert net.input_shape == (6, 40, 56) and net.time_steps == 7
    small = build_netfile(model.eval(), time_steps=7)
    for a, b in zip(net.layers, small.layers, strict=True):  # the same weights, other shapes
        for sa, sb in zip(a.synapses, b.synapses, strict=True):
            np.testing.assert_array_equal(sa.weight, sb.weight)
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x.net"),
                                      "--set", "model.name=spiking-fcn-tiny"])
    assert result.exit_code != 0 and "holds 'spiking-deeplab-tiny'" in str(result.exception) + result.output
