"""`toolchain predict --backend lava`: a recording streamed window by window
through ONE Lava runtime (one `deploy.lava.Network`, one compiled runtime,
one `RunSteps` per batch) gives, window for window, the emulator's class map,
readout voltage and spike counts, in the same output files."""
from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

import models
from deploy import lava_host
from deploy.export import export
from deploy.lava_compat import import_lava_runtime
from deploy.netfile import read, write
from deploy.predict import predict
from models import NeuronParams
from tests.conftest import aedat4_bytes
from tests.content import assert_has_content
from tests.test_predict import CLASSES, HW, T, _events, tiny_net  # noqa: F401  (tiny_net: a fixture)
from toolchain.core.errors import ToolchainError


@pytest.fixture(scope="module")
def tiny_fcn(tmp_path_factory):
    """The tiny FCN: its skips carry delays (up to 9 steps), so windows streamed
    back to back only stay apart if every layer restarts on time."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("net") / "fcn.net"
    export(models.build("spiking-fcn-tiny", 2, 6, HW, NeuronParams()), path, time_steps=T, encoding="poisson",
           class_names=CLASSES)
    return path


@pytest.fixture
def drive(tmp_path):
    """An AEDAT4 recording of 7 windows of 50 ms, events clustered so windows differ."""
    rng = np.random.default_rng(5)
    e = _events(rng, 2000, 40, 30, 330_000)
    path = tmp_path / "drive.aedat4"
    path.write_bytes(aedat4_bytes(e["x"], e["y"], e["t"], e["p"], width=40, height=30))
    return path


class _Counted:
    """Counts calls of a method patched on a class."""

    def __init__(self, monkeypatch, cls, name):
        self.calls = 0
        original = getattr(cls, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(cls, name, counted)


def _maps(out):
    return [dict(np.load(f)) for f in sorted((out / "maps").glob("window_*.npz"))]


@pytest.mark.lava
@pytest.mark.slow
@pytest.mark.parametrize("net_fixture", ["tiny_net", "tiny_fcn"])
def test_recording_through_one_lava_runtime_equals_the_emulator_window_by_window(
        net_fixture, drive, tmp_path, monkeypatch, request, capsys):
    import_lava_runtime()  # before Lava's modules: an earlier test may have chosen a start method
    from lava.magma.core.process.process import AbstractProcess
    from lava.magma.runtime.runtime import Runtime

    from deploy.lava import Network
    from toolchain.cli import main

    net = request.getfixturevalue(net_fixture)
    started = time.perf_counter()
    emu = predict(drive, tmp_path / "emu", net=str(net), batch_size=3, progress=False)
    emu_s = time.perf_counter() - started

    networks = _Counted(monkeypatch, Network, "__init__")
    runtimes = _Counted(monkeypatch, AbstractProcess, "create_runtime")
    runs = _Counted(monkeypatch, Runtime, "start")
    started = time.perf_counter()
    main(["predict", "--net", str(net), "--input", str(drive), "--out", str(tmp_path / "lava"),
          "--backend", "lava", "--batch", "3"])
    lava_s = time.perf_counter() - started
    assert "7 windows of 50 ms from 40x30 events -> 16x16 (lava," in capsys.readouterr().out
    # one network, one runtime for the whole recording; one RunSteps per batch of 3
    assert (networks.calls, runtimes.calls, runs.calls) == (1, 1, 3)

    emu_maps, lava_maps = _maps(tmp_path / "emu"), _maps(tmp_path / "lava")
    assert len(emu_maps) == len(lava_maps) == emu["windows"] == 7
    layers = [k for k in emu_maps[0] if k.startswith("spikes_")]
    assert len(layers) == len(read(net).layers) - 1  # every hidden layer's count is written
    for k, (e, lv) in enumerate(zip(emu_maps, lava_maps, strict=True)):
        assert set(e) == set(lv), f"window {k}: the lava outputs hold other fields"
        for field in e:
            np.testing.assert_array_equal(lv[field], e[field], err_msg=f"window {k}: {field}")
        # each window compared has spikes in every layer and a readout that varies
        assert_has_content({name: e[name] for name in layers}, e["voltage"], where=f"window {k}")
    assert len(np.unique(np.stack([m["class_map"] for m in emu_maps]))) > 1, "a constant class map"

    with Image.open(tmp_path / "emu" / "recording.gif") as a, Image.open(tmp_path / "lava" / "recording.gif") as b:
        assert a.n_frames == b.n_frames == 7
        for k in range(7):
            a.seek(k)
            b.seek(k)
            assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))), f"GIF frame {k}"
    lava = json.loads((tmp_path / "lava" / "summary.json").read_text())
    assert lava["backend"] == "lava" and emu["backend"] == "emulator"
    drop = {"backend", "seconds", "windows_per_second", "gif"}
    assert {k: v for k, v in lava.items() if k not in drop} == {k: v for k, v in emu.items() if k not in drop}
    spikes = sum(int(m[name]) for m in emu_maps for name in layers)
    print(f"{net_fixture}: 7 windows, {spikes} spikes; emulator {7 / emu_s:.1f} windows/s, "
          f"lava {7 / lava_s:.1f} windows/s (one runtime, start included)")


def test_a_net_whose_skips_are_not_delay_aligned_is_refused(tiny_fcn, drive, tmp_path):
    """Its windows would mix in one runtime: a clear error before Lava starts, no outputs."""
    net = read(tiny_fcn)
    up1 = next(layer for layer in net.layers if len(layer.sources) > 1)
    up1.synapses = [up1.synapses[0], dataclasses.replace(up1.synapses[1], delay=0)]
    bad = write(tmp_path / "unaligned.net", net)
    with pytest.raises(ToolchainError, match=r"unaligned\.net: its skips are not delay-aligned.*--backend emulator"):
        predict(drive, tmp_path / "out", net=str(bad), backend="lava", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.lava
def test_a_lava_failure_names_the_window_and_stops_the_runtime(tiny_net, drive, tmp_path, monkeypatch):  # noqa: F811
    """The second batch fails at its second window: window 4 of the recording is named,
    the runtime is closed, the first batch's outputs stay and no GIF is left."""
    closed = _Counted(monkeypatch, lava_host.LavaNetwork, "close")
    calls = []

    def run(self, frames):
        calls.append(len(frames))
        if len(calls) == 2:
            raise lava_host.LavaRunError(1, "the spike sink of layer 'conv2' (FileSink) raised ValueError: boom")
        shape = (len(frames), *self.net.layers[-1].shape)
        return {}, {layer.name: np.zeros(len(frames), np.int64) for layer in self.net.layers[:-1]}, \
            np.zeros(shape, np.int64)

    monkeypatch.setattr(lava_host.LavaNetwork, "run", run)
    with pytest.raises(ToolchainError, match=r"tiny\.net: Lava failed at window 4: the spike sink of layer 'conv2'"):
        predict(drive, tmp_path / "out", net=str(tiny_net), backend="lava", batch_size=3, progress=False)
    assert calls == [3, 3] and closed.calls == 1
    assert len(list((tmp_path / "out" / "maps").glob("*.npz"))) == 3
    assert not (tmp_path / "out" / "recording.gif").exists()


def test_a_checkpoint_with_the_lava_backend_is_refused(tmp_path, drive):
    with pytest.raises(ToolchainError, match="--backend lava runs a .net file"):
        predict(drive, tmp_path / "out", checkpoint=str(tmp_path / "last.pt"), backend="lava", progress=False)
