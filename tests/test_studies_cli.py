"""The study commands end to end from the CLI, on a tiny twin and tiny data."""
from __future__ import annotations

import json

import pytest
import torch

import models
from toolchain.cli import main
from toolchain.core.config import Config, to_dict


@pytest.fixture
def ann_ckpt(tmp_path, data_cfg):
    from toolchain.core import checkpoint

    cfg = Config(data=data_cfg)
    cfg.train.ann = True
    torch.manual_seed(0)
    path = tmp_path / "ann" / "checkpoint.pt"
    checkpoint.save(path, model=models.from_config(cfg, 2, 6, ann=True).state_dict(), config=to_dict(cfg),
                    dataset=dict(in_channels=2, num_classes=6, class_names=[f"c{k}" for k in range(6)]))
    return path


@pytest.mark.slow
def test_convert_sweep_energy_robustness_report_from_the_cli(ann_ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    conv = run / "converted" / "checkpoint.pt"
    main(["convert", "--checkpoint", str(ann_ckpt), "--out", str(conv), "--frames", "4", "--norm", "channel"])
    assert json.loads((run / "converted" / "convert.json").read_text())["norm"] == "channel"
    main(["sweep", "--checkpoint", f"conv={conv}", "--checkpoint", f"ann={ann_ckpt}", "--steps", "2,8",
          "--frames", "2", "--out", str(run / "sweep")])
    sweep = json.loads((run / "sweep" / "sweep.json").read_text())
    assert [(r["label"], r["time_steps"]) for r in sweep["rows"]] == [("conv", 2), ("conv", 8), ("ann", 2), ("ann", 8)]
    assert (run / "sweep" / "sweep.png").stat().st_size > 1000
    main(["energy", "--checkpoint", str(conv), "--steps", "8", "--frames", "2", "--out", str(run / "energy")])
    e = json.loads((run / "energy" / "energy.json").read_text())
    assert e["time_steps"] == 8 and e["energy"]["macs_per_frame"] > 0 and e["resources"]["cores"] >= 1
    main(["robustness", "--checkpoint", f"snn={conv}", "--checkpoint", f"ann={ann_ckpt}", "--corruptions",
          "salt_pepper", "--frames", "2", "--steps", "4", "--out", str(run / "robustness")])
    assert len(json.loads((run / "robustness" / "robustness.json").read_text())["rows"]) == 8
    main(["report", str(run), "--out", str(tmp_path / "report")])
    md = (tmp_path / "report" / "report.md").read_text()
    for heading in ("ANN-to-SNN conversion", "Latency", "Energy and hardware cost", "Robustness"):
        assert heading in md
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--checkpoint", str(conv), "--steps", "0,x", "--out", str(tmp_path / "bad")])
    assert e.value.code == 2 and "--steps" in capsys.readouterr().err
