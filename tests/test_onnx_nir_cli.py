"""`toolchain export --target onnx|nir` on a training checkpoint."""
from __future__ import annotations

import nir
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

import models
from deploy.onnx_export import run_onnx_step
from toolchain.cli import cli
from toolchain.config import Config, to_dict


def write_checkpoint(path, ann: bool = False):
    cfg = Config()
    cfg.data.height, cfg.data.width = 16, 24
    cfg.train.ann = ann
    torch.manual_seed(0)
    model = models.from_config(cfg, 2, 6)
    torch.save({"model": model.state_dict(), "config": to_dict(cfg),
                "dataset": {"in_channels": 2, "num_classes": 6, "class_names": list("abcdef")}}, path)
    return path


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "model.pt")


def export(*args):
    result = CliRunner().invoke(cli, ["export", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_onnx_target_writes_quantized_step_graph_and_twin(checkpoint, tmp_path):
    out = tmp_path / "net.onnx"
    printed = export("--checkpoint", checkpoint, "--target", "onnx", "--out", out)
    twin = tmp_path / "net.ann.onnx"
    assert str(out) in printed and str(twin) in printed

    reference, _ = models.load_checkpoint(checkpoint, quantized=True)
    x = (torch.rand(1, 2, 16, 24, 5, generator=torch.Generator().manual_seed(2)) < 0.4).float()
    with torch.no_grad():
        readout, spikes = reference(x)
    got_readout, got_spikes = run_onnx_step(out, x.numpy())
    for name, s in spikes.items():
        np.testing.assert_array_equal(got_spikes[name], s.numpy(), err_msg=name)
    np.testing.assert_allclose(got_readout, readout.numpy(), rtol=1e-5, atol=1e-5)
    scores = ort.InferenceSession(str(twin)).run(None, {"input": x[..., 0].numpy()})[0]
    assert scores.shape == tuple(readout.shape)


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
    assert back.metadata["time_steps"] == 5
    np.testing.assert_allclose(back.nodes["classifier"].r, 0.2)
    model, _ = models.load_checkpoint(checkpoint, quantized=True)
    w = model.nodes[0].synapses[0]
    with torch.no_grad():
        expected = w._pre_hook_fx(torch._weight_norm(w.weight_v, w.weight_g, 0))[..., 0]
    np.testing.assert_array_equal(back.nodes["conv1.syn0"].weight, expected.numpy())
