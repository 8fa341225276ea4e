"""`toolchain train` killed from outside: SIGKILL mid-epoch, then `--resume`,
then Ctrl-C (SIGINT) and `--resume` again, ends with the same weights and
metrics as one uninterrupted run. Extends the in-process resume tests of
tests/test_train_loop.py to real signals on a real process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from toolchain.core import checkpoint

# 16 batches an epoch (about 0.7 s here): the SIGKILL 0.1 s into epoch 2 lands
# mid-epoch with room to spare (with 4 batches, epoch 2 sometimes ended first)
TINY = ["data.synth_n_train=32", "data.synth_n_test=2", "data.synth_height=24", "data.synth_width=40",
        "data.height=16", "data.width=16", "data.time_steps=4", "train.batch_size=2",
        "train.optimizer=adamw", "train.lr=0.01", "train.augment=true", "train.qat=true",
        "model.name=spiking-deeplab-tiny"]
EPOCHS = 3


def _cmd(out: Path, *extra) -> list[str]:
    sets = [a for s in TINY for a in ("--set", s)]
    return [sys.executable, "-c", "import sys; from toolchain.cli import main; main(sys.argv[1:])", "train", "--epochs", str(EPOCHS), "--out", str(out),
            *extra, *sets]


def _env(cache: Path) -> dict:
    return dict(os.environ, TOOLCHAIN_CACHE=str(cache), OMP_NUM_THREADS="1")


def _signal_when(cmd, env, marker: str, sig: int, delay: float = 0.3) -> tuple[int, str, str]:
    """Start `cmd`; once `marker` shows in its progress output (stderr), wait
    `delay` s and send `sig`. Returns (exit code, stdout, stderr)."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = b""
    deadline = time.time() + 600
    try:
        while marker.encode() not in err:
            chunk = os.read(p.stderr.fileno(), 4096)
            assert chunk and time.time() < deadline, f"never reached {marker!r}: {err.decode()[-2000:]}"
            err += chunk
        time.sleep(delay)
        p.send_signal(sig)
        out, rest = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out.decode(), (err + rest).decode()


def _weights(run: Path) -> dict:
    return checkpoint.load(run / "checkpoint.pt")["model"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_then_sigint_then_resume_equals_an_uninterrupted_run(tmp_path):
    env = _env(tmp_path / "cache")
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    p = subprocess.run(_cmd(straight), env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]

    code, _, err = _signal_when(_cmd(broken), env, f"epoch 2/{EPOCHS}", signal.SIGKILL, 0.1)
    assert code == -signal.SIGKILL, err[-2000:]  # killed, not finished
    assert not json.loads((broken / "metrics.json").read_text())["final"]
    assert checkpoint.load(broken / "checkpoint.pt")["epoch"] == 1  # intact, from epoch 1

    code, out, err = _signal_when(_cmd(broken, "--resume"), env, f"epoch 3/{EPOCHS}", signal.SIGINT, 0.05)
    assert code != 0 and "interrupted: checkpoint saved" in out, out[-2000:] + err[-2000:]
    saved = checkpoint.load(broken / "checkpoint.pt")
    assert (saved["epoch"], saved["step"] > 0) == (2, True)  # saved inside epoch 3

    p = subprocess.run(_cmd(broken, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = json.loads((straight / "metrics.json").read_text()), json.loads((broken / "metrics.json").read_text())
    assert b["final"] and b["epochs"] == EPOCHS
    for key in ("miou", "pixel_acc", "loss", "iou_per_class", "firing"):
        assert a[key] == b[key], key
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    wa, wb = _weights(straight), _weights(broken)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
