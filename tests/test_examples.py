"""Every configuration in examples/ loads (no misspelt field: OmegaConf refuses
unknown keys), names a registered model, and that model builds at the
configuration's input size with its channels."""
from __future__ import annotations

from pathlib import Path

import pytest

import models
from toolchain.core.config import load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_the_documented_settings_are_there():
    names = {p.name for p in EXAMPLES}
    assert {"ddd17-tiny.yaml", "ddd17-small.yaml", "ddd17-paper-64.yaml", "ddd17-deeplab-gpu.yaml",
            "ddd17-fcn-gpu.yaml", "ddd17-full.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_loads_and_its_model_builds(path):
    cfg = load_config(path)
    assert cfg.model.name in models.names()
    if cfg.data.dataset == "voc":
        channels, classes = 3, 21
    else:
        channels, classes = (6 if cfg.data.channels == "all" else 2), 6
    model = models.build(cfg.model.name, channels, classes, (cfg.data.height, cfg.data.width))
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
def test_native_hybrid_script_trains_converts_fine_tunes_and_deploys_then_resumes(tmp_path):
    """examples/native-hybrid.sh end to end on a small generated set: twin,
    conversion for the asked steps and code, spiking fine-tune under the
    converted neurons, the .net equal in Lava and on the emulator; run again,
    every finished step is kept; with TUNE_EPOCHS=0 the conversion itself is
    deployed, from the same twin."""
    import json
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    small = [f"--set={kv}" for kv in ("data.height=16", "data.width=16", "data.synth_height=24", "data.synth_width=40",
                                      "data.synth_n_train=16", "data.synth_n_test=8", "train.epochs=1",
                                      "train.batch_size=8", f"data.root={tmp_path / 'data'}")]
    subprocess.run([str(root / ".venv/bin/toolchain"), "data", "synth", "--out", str(tmp_path / "data"), "--n-train", "16",
                    "--n-test", "8", "--height", "24", "--width", "40", "--seed", "0"], check=True)

    def script(**env):
        return subprocess.run(["bash", str(root / "examples/native-hybrid.sh"), str(tmp_path / "out"), *small],
                              capture_output=True, text=True, env={**os.environ, "STEPS": "12", **env})
    run = script()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"
    converted = json.loads((out / "converted-40ep-T12-poisson/convert.json").read_text())
    tuned = out / "tuned-40ep-T12-poisson-10ep"
    snn = json.loads((tuned / "metrics.json").read_text())
    assert snn["init"].endswith("converted-40ep-T12-poisson/checkpoint.pt") and not snn["ann"]
    lava, emulator = (json.loads((tuned / f"deploy/run-{b}.json").read_text()) for b in ("lava", "emulator"))
    assert lava["miou"] == emulator["miou"] and lava["frames"] == emulator["frames"] == 8 and lava["time_steps"] == 12
    assert json.loads((tuned / "deploy/energy/energy.json").read_text())["energy"]
    assert converted["threshold"] > 0
    again = script()
    assert again.returncode == 0 and again.stdout.count("finished, kept") == 2, again.stdout[-3000:]
    assert "converted, kept" in again.stdout and "scale_search" in converted
    as_converted = script(TUNE_EPOCHS="0", CODE="rate")
    assert as_converted.returncode == 0, as_converted.stdout[-3000:] + as_converted.stderr[-3000:]
    assert as_converted.stdout.count("finished, kept") == 1 and "== 3." not in as_converted.stdout
    deployed = out / "converted-40ep-T12-rate/deploy"
    lava, emulator = (json.loads((deployed / f"run-{b}.json").read_text()) for b in ("lava", "emulator"))
    assert lava["miou"] == emulator["miou"] and lava["frames"] == 8
    assert "rate" in (deployed / "config.yaml").read_text()
