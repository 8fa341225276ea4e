"""The entry points users call, run in Lava, give the emulator's answers.

`Deployed.run(backend="lava")`, `toolchain run --backend lava --workers 2`
(the sharded runner), `toolchain predict --backend lava` and `toolchain energy
--backend lava` on a small net (the untrained tiny DeepLab at 16x16, T above
its pipeline depth): the same class maps and the same spike count in every
layer as the emulator on the same frames, every layer spiking and the readout
neither zero nor constant.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import deploy
from deploy.runner import PALETTE, evaluate
from tests.content import assert_has_content, assert_output_has_content
from tests.test_predict import T, _events, tiny_net, training_inputs  # noqa: F401  (fixture)
from toolchain.cli import main
from toolchain.core.config import DataConfig

pytestmark = [pytest.mark.lava, pytest.mark.slow]


def hidden_layers(net_path) -> list[str]:
    return [layer.name for layer in deploy.load(net_path).net.layers[:-1]]


def test_deployed_run_in_lava_equals_the_emulator(tiny_net):  # noqa: F811
    net = deploy.load(tiny_net)
    assert T > net.net.pipeline_depth
    gen = np.random.default_rng(0)
    frames = (gen.random((2, *net.net.input_shape, T)) < np.array([0.3, 0.15]).reshape(2, 1, 1, 1, 1))
    emu = net.run(frames.astype(np.float32))
    lava = net.run(frames.astype(np.float32), backend="lava")
    assert_output_has_content(emu, layers=hidden_layers(tiny_net), where="Deployed.run lava vs emulator")
    for name in emu.spikes:
        np.testing.assert_array_equal(lava.spikes[name], emu.spikes[name], err_msg=name)
        np.testing.assert_array_equal(lava.counts[name], emu.counts[name], err_msg=name)
    np.testing.assert_array_equal(lava.voltage, emu.voltage)
    np.testing.assert_array_equal(lava.class_map, emu.class_map)


def test_toolchain_run_in_lava_with_two_workers_equals_the_emulator(tiny_net, tiny_ddd17, tmp_path):  # noqa: F811
    """Three test frames over two Lava workers (shards 0, 2 and 1): the class
    maps come back in frame order and every layer's spikes add up as on the emulator.
    In a process of its own, as users run it: the workers are forked, and a
    fork of a process that has run Lava before can hang."""
    subprocess.run([sys.executable, "-c", "import sys; from toolchain.cli import main; main(sys.argv[1:])",
                    "run", "--net", str(tiny_net), "--data", str(tiny_ddd17), "--backend", "lava", "--workers", "2",
                    "--json", str(tmp_path / "lava.json"), "--out", str(tmp_path / "pred")],
                   check=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    lava = json.loads((tmp_path / "lava.json").read_text())
    report, emu = evaluate(tiny_net, DataConfig(root=str(tiny_ddd17)), backend="emulator", progress=False)
    assert lava["frames"] == report["frames"] == 3
    assert_has_content(report["spikes_per_frame"], emu.voltage, layers=hidden_layers(tiny_net),
                       where="toolchain run lava --workers 2 vs emulator")
    assert lava["spikes_per_frame"] == report["spikes_per_frame"]
    assert len(np.unique(emu.class_map)) > 1
    for i, cm in enumerate(emu.class_map):
        png = np.asarray(Image.open(tmp_path / "pred" / f"pred_{i:04d}.png"))
        np.testing.assert_array_equal(png, PALETTE[cm % len(PALETTE)], err_msg=f"frame {i}")
    assert lava["miou"] == report["miou"]


@pytest.mark.timeout(300)
def test_sharded_lava_run_from_a_process_that_already_ran_torch_and_lava(tiny_net, tiny_ddd17):  # noqa: F811
    """The sharded runner forks its workers from this test process, which has
    run torch on several threads and Lava before: a forked child that enters
    its parent's OpenMP pool deadlocks, so the workers must not."""
    import torch

    torch.set_num_threads(2)
    torch.nn.functional.avg_pool2d(torch.ones(1, 64, 256, 256), 2)  # the parent's OpenMP pool exists
    net = deploy.load(tiny_net)
    net.run(np.ones((1, *net.net.input_shape, T), np.float32), backend="lava")
    cfg = DataConfig(root=str(tiny_ddd17))
    lava, lava_out = evaluate(tiny_net, cfg, backend="lava", workers=2, progress=False)
    emu, emu_out = evaluate(tiny_net, cfg, backend="emulator", progress=False)
    assert_has_content(emu["spikes_per_frame"], emu_out.voltage, layers=hidden_layers(tiny_net),
                       where="sharded lava after torch and lava vs emulator")
    assert lava["spikes_per_frame"] == emu["spikes_per_frame"]
    np.testing.assert_array_equal(lava_out.class_map, emu_out.class_map)


def test_toolchain_predict_in_lava_equals_the_emulator(tiny_net, tmp_path):  # noqa: F811
    rng = np.random.default_rng(5)
    e = _events(rng, 1500, 40, 30, 140_000)
    path = tmp_path / "drive.npz"
    np.savez(path, **e, width=40, height=30)
    main(["predict", "--net", str(tiny_net), "--input", str(path), "--out", str(tmp_path / "o"),
          "--backend", "lava", "--batch", "2"])
    # the frames predict builds, through the training data set (tests/test_predict.py shows they are equal)
    x = training_inputs(path, 30, tmp_path / "ddd17")
    emu = deploy.load(tiny_net).run(x)
    assert_output_has_content(emu, layers=hidden_layers(tiny_net), where="toolchain predict lava vs emulator")
    windows = sorted((tmp_path / "o" / "maps").glob("window_*.npz"))
    assert len(windows) == len(x) == 3
    for i, f in enumerate(windows):
        z = np.load(f)
        np.testing.assert_array_equal(z["class_map"], emu.class_map[i], err_msg=f"window {i}")
        for name, counts in emu.counts.items():
            assert int(z[f"spikes_{name}"]) == int(counts[i]), f"window {i}, layer {name}"
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["backend"] == "lava"


def test_toolchain_energy_in_lava_equals_the_emulator(tiny_net, tiny_ddd17, tmp_path):  # noqa: F811
    out = {}
    for backend in ("lava", "emulator"):
        main(["energy", "--checkpoint", str(tiny_net), "--backend", backend, "--frames", "2",
              "--data", str(tiny_ddd17), "--out", str(tmp_path / backend)])
        out[backend] = json.loads((tmp_path / backend / "energy.json").read_text())
    from toolchain.core.config import Config
    from toolchain.studies.sweep import load_frames

    cfg = Config()
    cfg.data = deploy.runner.data_config_for(deploy.load(tiny_net), cfg.data, str(tiny_ddd17))
    x, _ = load_frames(cfg, T, 2)
    emu = deploy.load(tiny_net).run(x)
    spikes = {layer["name"]: layer["spikes"] for layer in out["emulator"]["layers"][:-1]}
    assert spikes == {k: float(v.sum()) / 2 for k, v in emu.counts.items()}  # the frames energy ran
    assert_has_content(spikes, emu.voltage, layers=hidden_layers(tiny_net), where="toolchain energy lava vs emulator")
    assert out["lava"]["layers"] == out["emulator"]["layers"]
    assert out["lava"]["energy"] == out["emulator"]["energy"]
