"""`toolchain train`, `eval` and `models` on a tiny generated DDD17-format set,
and the same training under torchrun with two CPU processes (DDP)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from toolchain.cli import main
from toolchain.data import build_dataset
from toolchain.train import evaluate

TINY = ["data.synth_n_train=8", "data.synth_n_test=4", "data.synth_height=24", "data.synth_width=40",
        "data.height=16", "data.width=16", "data.time_steps=10", "train.batch_size=4",
        "train.optimizer=adamw", "train.lr=0.01", "train.augment=false", "train.qat=true"]


def _sets():
    return [a for s in TINY for a in ("--set", s)]


def _run_or_dump_stacks(cmd, env, timeout):
    """subprocess.run, except that past `timeout` every process of the run gets
    SIGABRT (stacks to stderr, with PYTHONFAULTHANDLER) and the test fails with them."""
    import signal

    from toolchain.bench.memory import descendants

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGABRT)
            except ProcessLookupError:
                pass
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"torchrun still running after {timeout} s; stacks:\n{err[-12000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _run(argv):
    try:
        main(argv)
    except SystemExit as e:
        return e.code
    return 0


def test_models_command_prints_parameter_counts(capsys):
    assert _run(["models"]) == 0
    out = capsys.readouterr().out
    assert "spiking-deeplab " in out and "4,099,200" in out and "13,540,800" in out


def test_eval_rejects_a_corrupt_checkpoint(cache, capsys):
    bad = cache / "x.pt"
    bad.write_bytes(b"\x00" * 10)
    assert _run(["eval", "--checkpoint", str(bad)]) == 2
    assert "x.pt" in capsys.readouterr().err


def test_resume_without_checkpoint_is_a_clean_error(cache, capsys):
    assert _run(["train", "--out", str(cache / "none"), "--resume"] + _sets()) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_train_then_eval_float_and_quantized(cache, capsys):
    run = cache / "run"
    assert _run(["train", "--epochs", "1", "--out", str(run)] + _sets()) == 0
    out = capsys.readouterr().out
    assert "majority class" in out and "untrained" in out
    saved = json.loads((run / "metrics.json").read_text())
    assert _run(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--json", str(cache / "q.json")]) == 0
    q = json.loads((cache / "q.json").read_text())
    assert q["quantized"] is True and q["miou"] == pytest.approx(saved["miou"])
    assert _run(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--float", "--json", str(cache / "f.json")]) == 0
    assert json.loads((cache / "f.json").read_text())["quantized"] is False


@pytest.mark.slow
def test_ddp_two_cpu_processes_reduce_metrics_and_only_rank0_writes(cache):
    run = cache / "ddp"
    # faulthandler: a rank that hangs is sent SIGABRT below and prints every thread's stack
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(sys.executable).parent / "toolchain"), "train", "--epochs", "2", "--out", str(run)] + _sets()
    p = _run_or_dump_stacks(cmd, env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("run folder:") == 1  # only rank 0 reports
    saved = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in saved["history"]] == [0, 1, 2]
    # the reduced test metrics equal a single-process evaluation of the saved weights
    model, cfg = models.load_checkpoint(run / "checkpoint.pt")
    r = evaluate(model, build_dataset(cfg.data, "test"), torch.device("cpu"))
    assert r["miou"] == pytest.approx(saved["miou"], abs=1e-9)
    assert r["pixel_acc"] == pytest.approx(saved["pixel_acc"], abs=1e-9)
