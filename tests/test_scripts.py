"""scripts/same_in_lava_and_emulator.py, the check the demo and deploy_run.sh
stop on: it passes only when the class maps are byte-identical, the spike
counts equal and every layer spikes; scripts/results_table.py, the results page's
table."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "same_in_lava_and_emulator.py"


def _run_dir(root: Path, name: str, maps: list[np.ndarray], spikes: dict) -> tuple[Path, Path]:
    d = root / name
    d.mkdir()
    for i, m in enumerate(maps):
        Image.fromarray(m).save(d / f"pred_{i:04d}.png")
    js = root / f"{name}.json"
    js.write_text(json.dumps(dict(spikes_per_frame=spikes)))
    return d, js


def _check(lava, emu) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "net", str(lava[0]), str(emu[0]), str(lava[1]),
                           str(emu[1])], capture_output=True, text=True)


@pytest.fixture
def maps():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (6, 9, 3), dtype=np.uint8) for _ in range(3)]


def test_identical_runs_pass(tmp_path, maps):
    spikes = {"conv1": 10.0, "conv2": 3.5}
    r = _check(_run_dir(tmp_path, "lava", maps, spikes), _run_dir(tmp_path, "emu", maps, spikes))
    assert r.returncode == 0, r.stderr
    assert "identical on all 3 frames" in r.stdout and "every layer spiking" in r.stdout


@pytest.mark.parametrize("what", ["pixel", "missing frame", "count", "silent layer"])
def test_any_difference_or_a_silent_layer_fails(tmp_path, maps, what):
    spikes = {"conv1": 10.0, "conv2": 0.0 if what == "silent layer" else 3.5}
    emu = _run_dir(tmp_path, "emu", maps, spikes)
    other = [m.copy() for m in maps]
    if what == "pixel":
        other[2][5, 8, 0] ^= 1
    lava_spikes = dict(spikes, conv2=4.0) if what == "count" else spikes
    lava = _run_dir(tmp_path, "lava", other, lava_spikes)
    if what == "missing frame":
        (lava[0] / "pred_0001.png").unlink()
    r = _check(lava, emu)
    assert r.returncode != 0
    expected = {"pixel": "DIFFER", "missing frame": "different class maps", "count": "spike counts DIFFER",
                "silent layer": "never spike"}[what]
    assert expected in r.stderr + r.stdout


def test_results_table_row_of_a_fine_tuned_ann_twin(tmp_path):
    # scripts/results_table.py: the results page's rows; a starting checkpoint is named by its run
    from toolchain.core.config import Config, save_config

    cfg = Config()
    cfg.train.ann, cfg.train.init, cfg.train.class_weights = True, "runs/stage1/checkpoint.pt", "inverse-sqrt"
    run = tmp_path / "twin"
    save_config(cfg, run)
    names = ["flat", "sky"]
    (run / "metrics.json").write_text(json.dumps(dict(
        miou=0.4567, iou_per_class=dict(zip(names, [0.9, 0.0134], strict=True)), class_names=names, epochs=4,
        train_seconds=150.0)))
    script = SCRIPT.parent / "results_table.py"
    out = subprocess.run([sys.executable, str(script), str(run)], capture_output=True, text=True, check=True).stdout
    cells = [c.strip() for c in out.strip().splitlines()[-1].strip("|").split("|")]
    assert cells[0] == f"{cfg.model.name} ANN twin"
    assert cells[2].endswith("class weights, from stage1")
    assert cells[3:7] == ["45.7", "-", "-", "-"]
    assert cells[7:9] == ["90.0", "1.3"]
    assert cells[-1] == "4 ep, 2 min"
