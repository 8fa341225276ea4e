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
def test_native_hybrid_script_clips_converts_and_deploys_then_resumes_and_fine_tunes(tmp_path):
    """examples/native-hybrid.sh end to end on a small generated set: twin,
    the twin tuned under the clip, conversion of it for the asked steps and
    code (the twin tuned on its own steps), the twin tuned again under that
    conversion's spike rates and converted at its levels, the .net equal in
    Lava and on the emulator; run again, every finished step is kept; with
    CLIP_EPOCHS=0, TRANSFER_EPOCHS=0 and TUNE_EPOCHS the plain twin's
    conversion is fine-tuned spiking under the converted neurons, distilled
    from that twin, and deployed."""
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

    def deployed_equal(run_dir, code):
        lava, emulator = (json.loads((run_dir / f"deploy/run-{b}.json").read_text()) for b in ("lava", "emulator"))
        assert lava["miou"] == emulator["miou"] and lava["frames"] == emulator["frames"] == 8
        assert lava["time_steps"] == 12 and code in (run_dir / "deploy/config.yaml").read_text()

    run = script()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"
    clipped = json.loads((out / "twin-80ep-clip99-conv1-99.9-40ep-lr0.001-T16-rate/metrics.json").read_text())
    assert clipped["ann"] and clipped["ann_clip"] == 99 and clipped["ann_clip_layers"] == {"conv1": 99.9}
    assert clipped["init"].endswith("twin-80ep/checkpoint.pt")
    # tuned on TWIN_STEPS (16) steps of the code, converted for STEPS (12)
    assert "time_steps: 16" in (out / "twin-80ep-clip99-conv1-99.9-40ep-lr0.001-T16-rate/config.yaml").read_text()
    converted = out / "converted-80ep-clip99-conv1-99.9-40ep-lr0.001-T12-rate"
    info = json.loads((converted / "convert.json").read_text())
    assert info["percentile"] == 100 and info["source"].endswith("twin-80ep-clip99-conv1-99.9-40ep-lr0.001-T16-rate/checkpoint.pt")
    assert "scale_search" in info and "transfer" in info and "== 3." not in run.stdout
    transferred = out / "twin-80ep-clip99-conv1-99.9-40ep-lr0.001-T12-rate-transfer-20ep"
    twin = json.loads((transferred / "metrics.json").read_text())
    assert twin["ann"] and twin["ann_transfer"] == str(converted / "checkpoint.pt")
    assert twin["init"].endswith("twin-80ep-clip99-conv1-99.9-40ep-lr0.001-T16-rate/checkpoint.pt")
    assert f"logit_scale: {info['transfer_logit_scale']!r}" in (transferred / "config.yaml").read_text()
    final = out / "converted-80ep-clip99-conv1-99.9-40ep-lr0.001-transfer-20ep-T12-rate"
    again_info = json.loads((final / "convert.json").read_text())
    levels = lambda conversion: {k: max(v) for k, v in conversion["lambdas"].items()}  # noqa: E731
    assert again_info["scale"] == 1 and levels(again_info) == pytest.approx(levels(info))
    deployed_equal(final, "rate")
    assert json.loads((final / "deploy/energy/energy.json").read_text())["energy"]
    again = script()
    assert again.returncode == 0 and again.stdout.count("finished, kept") == 3, again.stdout[-3000:]
    assert again.stdout.count("converted, kept") == 2
    tuned = script(CLIP_EPOCHS="0", TRANSFER_EPOCHS="0", TUNE_EPOCHS="1", CODE="poisson")
    assert tuned.returncode == 0, tuned.stdout[-3000:] + tuned.stderr[-3000:]
    assert tuned.stdout.count("finished, kept") == 1 and "== 1b." not in tuned.stdout
    snn = json.loads((out / "tuned-80ep-T12-poisson-1ep/metrics.json").read_text())
    assert snn["init"].endswith("converted-80ep-T12-poisson/checkpoint.pt") and not snn["ann"]
    assert snn["teacher"].endswith("out/twin-80ep/checkpoint.pt")  # distilled from the twin it was converted from
    conversion = json.loads((out / "converted-80ep-T12-poisson/convert.json").read_text())
    assert conversion["percentile"] == 99
    # the loss saw the scores in the twin's units
    scale = conversion["logit_scale"]
    assert f"logit_scale: {scale!r}" in (out / "tuned-80ep-T12-poisson-1ep/config.yaml").read_text()
    deployed_equal(out / "tuned-80ep-T12-poisson-1ep", "poisson")
