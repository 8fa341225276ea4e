"""A checkpoint cannot run code when it is opened.

A pickle can name any callable to run while it loads. Every command that
takes a checkpoint reads it through `toolchain.core.checkpoint.load` (torch's
weights-only unpickler): a file whose pickle would create a marker file is
refused with one line naming it, and the marker never appears. Version 1
files (numpy RNG state pickled as an array) are rewritten once by
`toolchain upgrade-checkpoint`, which admits numpy arrays and still refuses
anything that runs code.
"""
from __future__ import annotations

import builtins
import random

import numpy as np
import pytest
import torch

import models
from toolchain.cli import main
from toolchain.core import checkpoint
from toolchain.core.config import Config, to_dict

TINY = ["data.synth_n_train=4", "data.synth_n_test=2", "data.synth_height=24", "data.synth_width=40",
        "data.height=16", "data.width=16", "data.time_steps=4", "train.batch_size=2", "train.epochs=1"]


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears if the payload ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _valid_entries() -> dict:
    cfg = Config()
    cfg.model.name = "spiking-deeplab-tiny"
    model = models.from_config(cfg, 2, 3)
    return dict(format=checkpoint.FORMAT, version=checkpoint.VERSION, rng=checkpoint.rng_state(),
                model=model.state_dict(), config=to_dict(cfg), epoch=1, step=0,
                dataset=dict(in_channels=2, num_classes=3, class_names=["a", "b", "c"]))


@pytest.fixture
def armed(tmp_path):
    """(checkpoint path, marker path): a well-formed checkpoint with a payload in it."""
    marker = tmp_path / "payload-ran"
    entries = _valid_entries()
    entries["extra"] = {"note": Payload(marker)}
    path = tmp_path / "shared" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save(entries, path)
    assert not marker.exists()
    return path, marker


def _run(argv) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return e.code
    return 0


def _commands(ckpt, tmp_path, events):
    out = tmp_path / "out"
    sets = [a for s in TINY for a in ("--set", s)]
    return {
        "export": ["export", "--checkpoint", ckpt, "--out", out / "m.net"],
        "eval": ["eval", "--checkpoint", ckpt],
        "sweep": ["sweep", "--checkpoint", ckpt, "--steps", "4", "--out", out],
        "convert": ["convert", "--checkpoint", ckpt, "--out", out / "snn.pt"],
        "energy": ["energy", "--checkpoint", ckpt, "--out", out],
        "robustness": ["robustness", "--checkpoint", ckpt, "--out", out],
        "predict": ["predict", "--checkpoint", ckpt, "--input", events, "--out", out],
        "train --resume": ["train", "--out", ckpt.parent, "--resume"] + sets,
        "train.init": ["train", "--out", out / "run", "--set", f"train.init={ckpt}"] + sets,
    }


COMMANDS = [
    "export", "eval", "sweep", "convert", "energy", "robustness", "predict", "train --resume", "train.init"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_a_checkpoint_that_would_run_code(command, armed, tmp_path, monkeypatch, capsys):
    path, marker = armed
    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path / "cache"))
    events = tmp_path / "rec.npz"
    np.savez(events, x=np.array([1, 2]), y=np.array([1, 2]), t=np.array([0, 60_000]), p=np.array([0, 1]))
    argv = [str(a) for a in _commands(path, tmp_path, events)[command]]
    assert _run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists(), f"{command}: the payload ran"
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and "refused" in err and "io.open" in err, err


def test_training_checkpoints_hold_plain_values_and_restore_every_generator(tmp_path):
    path = tmp_path / "c.pt"
    np.random.seed(5)
    random.seed(5)
    torch.manual_seed(5)
    checkpoint.save(path, model={"w": torch.ones(2)}, history=[{"epoch": 1, "miou": 0.5}])
    expected = (np.random.rand(3), random.random(), torch.rand(3))
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)
    ckpt = checkpoint.load(path)
    checkpoint.set_rng_state(ckpt["rng"])
    got = (np.random.rand(3), random.random(), torch.rand(3))
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_saving_an_object_fails_at_once_naming_the_entry(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint.history\[0\].miou is a numpy.float64"):
        checkpoint.save(tmp_path / "c.pt", history=[{"miou": np.float64(0.5)}])
    assert not (tmp_path / "c.pt").exists()


def _v1(entries: dict) -> dict:
    """What toolchain 0.1 wrote: numpy's RNG state as the tuple numpy returns."""
    entries = dict(entries, version=1)
    entries["rng"] = dict(entries["rng"], numpy=np.random.get_state())
    return entries


def test_a_version_1_checkpoint_is_refused_then_upgraded_once_on_request(tmp_path, capsys):
    path = tmp_path / "old.pt"
    np.random.seed(11)
    torch.save(_v1(_valid_entries()), path)
    expected = np.random.rand(4)

    assert _run(["eval", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and f"toolchain upgrade-checkpoint {path}" in err, err

    assert _run(["upgrade-checkpoint", str(path)]) == 0
    ckpt = checkpoint.load(path)
    assert ckpt["version"] == checkpoint.VERSION
    np.random.seed(0)
    checkpoint.set_rng_state(ckpt["rng"])
    np.testing.assert_array_equal(np.random.rand(4), expected)
    model, _ = models.load_checkpoint(path)
    assert model.class_names == ["a", "b", "c"]


def test_upgrade_refuses_a_version_1_file_with_a_payload(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    entries = _v1(_valid_entries())
    entries["extra"] = Payload(marker)
    path = tmp_path / "old.pt"
    torch.save(entries, path)
    before = path.read_bytes()
    assert _run(["upgrade-checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists() and path.read_bytes() == before
    assert len(err.splitlines()) == 1 and "io.open is not allowed" in err, err
