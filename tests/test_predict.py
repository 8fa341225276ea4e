"""`toolchain predict`: a raw recording is cut into windows, each encoded exactly
as a training frame, run through the net, and written as class maps, overlays
and a GIF."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import deploy
import models
from deploy.export import export
from deploy.predict import geometry, predict
from models import NeuronParams
from tests.conftest import aedat4_bytes
from tests.content import assert_output_has_content
from toolchain.core import checkpoint
from toolchain.core.config import Config, DataConfig, to_dict
from toolchain.core.errors import ToolchainError
from toolchain.data.ddd17 import DDD17
from toolchain.data.events import Recording, to_ddd17

CLASSES = ["flat", "construction+sky", "object", "nature", "human", "vehicle"]
HW = (16, 16)
T = 8  # enough steps for spikes to reach the readout of the untrained tiny net


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory):
    torch.manual_seed(0)
    model = models.build("spiking-deeplab-tiny", 2, 6, HW, NeuronParams())
    path = tmp_path_factory.mktemp("net") / "tiny.net"
    export(model, path, time_steps=T, encoding="poisson", class_names=CLASSES)
    return path


def _events(rng, n, width, height, t_span):
    # clustered events, so windows differ and the min-max normalisation has work to do
    t = np.sort(rng.integers(2_000_000, 2_000_000 + t_span, n)).astype(np.int64)
    cx, cy = rng.integers(0, width, 8), rng.integers(0, height, 8)
    k = rng.integers(0, 8, n)
    x = np.clip(cx[k] + rng.integers(-4, 5, n), 0, width - 1)
    y = np.clip(cy[k] + rng.integers(-4, 5, n), 0, height - 1)
    return dict(x=x, y=y, t=t, p=rng.integers(0, 2, n))


@pytest.fixture(params=["aedat4-40x30", "npz-davis346"])
def recording(request, tmp_path):
    """(path, events, sensor rows the DDD17 crop keeps)."""
    rng = np.random.default_rng(5)
    if request.param == "aedat4-40x30":
        e = _events(rng, 2000, 40, 30, 230_000)
        path = tmp_path / "drive.aedat4"
        path.write_bytes(aedat4_bytes(e["x"], e["y"], e["t"], e["p"], width=40, height=30))
        return path, e, 30
    e = _events(rng, 4000, 346, 260, 140_000)
    path = tmp_path / "drive.npz"
    np.savez(path, **e, width=346, height=260)
    return path, e, 200


def training_inputs(path, rows, root, seed=0):
    """The windows written as a DDD17-layout test split and read back through the
    training data set: the frames training would have seen for these windows."""
    rec = Recording(path)
    for d in ("events/test", "labels/test"):
        (root / d).mkdir(parents=True)
    n = 0
    for n, (a, b, ev) in enumerate(rec.windows(50_000)):
        frame = to_ddd17(ev, rec.height, rec.width, a, b)[:rows]
        np.save(root / "events" / "test" / f"rec1_export_{n}.npy", frame)
        Image.fromarray(np.zeros(frame.shape[:2], np.uint8)).save(root / "labels" / "test" / f"rec1_export_{n}.png")
    cfg = DataConfig(root=str(root), height=HW[0], width=HW[1], time_steps=T, encoding="poisson", seed=seed)
    ds = DDD17(cfg, "test")
    return torch.stack([ds[i][0] for i in range(n + 1)])


def test_class_maps_equal_running_training_frames_through_the_net(tiny_net, recording, tmp_path):
    path, events, rows = recording
    out = tmp_path / "out"
    summary = predict(path, out, net=str(tiny_net), batch_size=2, progress=False)
    x = training_inputs(path, rows, tmp_path / "ddd17")
    n = len(x)
    assert n == (int(events["t"][-1]) - int(events["t"][0])) // 50_000 + 1
    assert summary["windows"] == n and summary["sensor_rows"] == rows
    run = deploy.load(tiny_net).run(x)
    assert_output_has_content(run, layers=[layer.name for layer in deploy.load(tiny_net).net.layers[:-1]],
                              where="predict vs Deployed.run")
    expected = run.class_map
    assert len(np.unique(expected)) > 1  # a constant map would make the comparison empty
    maps = sorted((out / "maps").glob("window_*.npz"))
    pngs = sorted((out / "overlays").glob("window_*.png"))
    assert len(maps) == len(pngs) == n
    t0 = int(events["t"][0])
    for i, f in enumerate(maps):
        z = np.load(f)
        assert z["class_map"].shape == HW and z["class_map"].dtype == np.uint8
        np.testing.assert_array_equal(z["class_map"], expected[i])
        assert (int(z["t_start"]), int(z["t_end"])) == (t0 + 50_000 * i, t0 + 50_000 * (i + 1))
    with Image.open(out / "recording.gif") as gif:
        assert gif.n_frames == n and gif.info["loop"] == 0 and gif.info["duration"] == 50
    saved = json.loads((out / "summary.json").read_text())
    assert saved["windows"] == n and abs(sum(saved["class_fraction"].values()) - 1) < 1e-3
    assert set(saved["class_fraction"]) == set(CLASSES)


def test_windows_are_written_as_each_batch_finishes(tiny_net, tmp_path, monkeypatch):
    """Streaming: when window k is read, every earlier batch is already on disk."""
    rng = np.random.default_rng(1)
    path = tmp_path / "long.npz"
    np.savez(path, **_events(rng, 1500, 24, 20, 340_000), width=24, height=20)
    out = tmp_path / "out"
    seen = []
    windows = Recording.windows

    def watched(self, window_us):
        for k, w in enumerate(windows(self, window_us)):
            seen.append((k, len(list((out / "maps").glob("*.npz")))))
            yield w

    monkeypatch.setattr(Recording, "windows", watched)
    summary = predict(path, out, net=str(tiny_net), batch_size=3, progress=False, gif=False)
    assert summary["windows"] == len(seen) == 7
    assert seen == [(k, 3 * (k // 3)) for k in range(7)]
    assert not (out / "recording.gif").exists()


def test_checkpoint_runs_the_torch_model_on_the_same_frames(tmp_path, recording):
    path, _, rows = recording
    cfg = Config()
    cfg.data.height, cfg.data.width, cfg.data.time_steps = HW[0], HW[1], T
    torch.manual_seed(1)
    model = models.from_config(cfg, 2, 6)
    ckpt = tmp_path / "last.pt"
    checkpoint.save(ckpt, model=model.state_dict(), config=to_dict(cfg),
                    dataset={"in_channels": 2, "num_classes": 6, "class_names": CLASSES})
    predict(path, tmp_path / "out", checkpoint=str(ckpt), batch_size=4, progress=False, gif=False)
    x = training_inputs(path, rows, tmp_path / "ddd17")
    loaded, _ = models.load_checkpoint(ckpt)
    with torch.no_grad():
        expected = models.predict(loaded, x, HW)[0].argmax(1).numpy()
    assert len(np.unique(expected)) > 1
    got = np.stack([np.load(f)["class_map"] for f in sorted((tmp_path / "out" / "maps").glob("*.npz"))])
    np.testing.assert_array_equal(got, expected)


def test_geometry_rule():
    assert geometry((346, 260), (2, 64, 64)).rows == 200
    assert geometry((346, 260), (2, 64, 64), sensor_crop=False).rows == 260
    assert geometry((640, 480), (6, 32, 32)).channels == (0, 1, 2, 3, 4, 5)
    with pytest.raises(ToolchainError, match="m.net: input has 3 channels"):
        geometry((346, 260), (3, 64, 64), where="m.net")
    with pytest.raises(ToolchainError, match="needs a DAVIS346 recording.*640x480"):
        geometry((640, 480), (2, 64, 64), sensor_crop=True)


def test_bad_recordings_are_clear_errors(tiny_net, tmp_path, capsys):
    from toolchain.cli import main

    rng = np.random.default_rng(2)
    e = _events(rng, 300, 16, 12, 90_000)
    bad = tmp_path / "cut.aedat4"
    bad.write_bytes(aedat4_bytes(e["x"], e["y"], e["t"], e["p"])[:-100])
    with pytest.raises(ToolchainError, match=r"cut\.aedat4: truncated AEDAT4 file"):
        predict(bad, tmp_path / "out", net=str(tiny_net), progress=False)
    np.savez(tmp_path / "noisy.npz", **{**e, "p": e["p"] * 3})
    with pytest.raises(ToolchainError, match=r"noisy\.npz.*field 'p' must be 0/1"):
        predict(tmp_path / "noisy.npz", tmp_path / "out", net=str(tiny_net), progress=False)
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--net", str(tiny_net), "--input", str(tmp_path / "rec.txt"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "rec.txt: event file not found" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("maps/*.npz"))


def test_cli_writes_the_outputs(tiny_net, tmp_path, capsys):
    from toolchain.cli import main

    rng = np.random.default_rng(3)
    path = tmp_path / "drive.h5"
    import h5py

    e = _events(rng, 500, 20, 16, 120_000)
    with h5py.File(path, "w") as f:
        for k, v in e.items():
            f.create_dataset(f"events/{k}", data=v)
        f.attrs["width"], f.attrs["height"] = 20, 16
    main(["predict", "--net", str(tiny_net), "--input", str(path), "--out", str(tmp_path / "o"),
          "--window-ms", "40"])
    assert "3 windows of 40 ms from 20x16 events -> 16x16" in capsys.readouterr().out
    assert len(list((tmp_path / "o" / "overlays").glob("*.png"))) == 3


def test_run_feeds_a_six_channel_net_all_six_ddd17_channels(tiny_ddd17, tmp_path):
    """A net trained with data.channels=all takes 6 input channels: `toolchain run`
    reads them from the .net's input shape, not from the default (the 2 histograms)."""
    from deploy.runner import evaluate

    torch.manual_seed(0)
    path = tmp_path / "six.net"
    export(models.build("spiking-deeplab-tiny", 6, 6, (16, 24), NeuronParams()), path, time_steps=T)
    report, out = evaluate(path, DataConfig(root=str(tiny_ddd17)), backend="emulator", progress=False)
    assert report["frames"] == 3 and out.class_map.shape == (3, 16, 24)
    assert sum(report["spikes_per_frame"].values()) > 0


@pytest.mark.parametrize(("size", "synth"), [((16, 24), (100, 173)), ((200, 346), (200, 346)),
                                             ((120, 100), (120, 173))])
def test_run_without_data_generates_the_default_set_at_least_the_nets_size(size, synth, tmp_path):
    """`toolchain run` without --data or --config on a net larger than the
    generated default set (100x173) evaluates data generated at the net's size,
    not the default scaled up; smaller nets keep the set their presets train on."""
    from deploy.runner import data_config_for

    torch.manual_seed(0)
    path = tmp_path / "net.net"
    export(models.build("spiking-deeplab-tiny", 2, 6, size, NeuronParams()), path, time_steps=T)
    cfg = data_config_for(deploy.load(path), DataConfig(), None)
    assert (cfg.height, cfg.width) == size and (cfg.synth_height, cfg.synth_width) == synth
    given = data_config_for(deploy.load(path), DataConfig(root=str(tmp_path)), None)
    assert (given.synth_height, given.synth_width) == (100, 173)  # a data root: nothing is generated
