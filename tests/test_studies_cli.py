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
    with pytest.raises(SystemExit) as bad:  # --scale takes a number or auto, nothing else
        main(["convert", "--checkpoint", str(ann_ckpt), "--out", str(tmp_path / "x.pt"), "--scale", "best"])
    assert bad.value.code == 2 and "'best' is neither a number nor auto" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
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


def test_eval_against_its_twin_prints_and_writes_where_the_conversion_loses(ann_ckpt, tmp_path, capsys):
    """`toolchain eval --twin`: a row for the twin, each hidden layer spliced in
    and the spiking net, in the terminal and in the JSON; the spiking row is the
    evaluation's own figure. A checkpoint that is no conversion, or a spiking
    twin, is refused by name."""
    conv = tmp_path / "conv" / "checkpoint.pt"
    main(["convert", "--checkpoint", str(ann_ckpt), "--out", str(conv), "--frames", "2", "--scale", "0.5",
          "--set", "data.time_steps=16"])
    capsys.readouterr()
    main(["eval", "--checkpoint", str(conv), "--twin", str(ann_ckpt), "--json", str(tmp_path / "eval.json"),
          "--batch-size", "2"])
    printed = capsys.readouterr().out.splitlines()
    r = json.loads((tmp_path / "eval.json").read_text())
    rows = ["twin", "conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "spiking"]
    assert list(r["layers"]) == rows and r["layers"]["spiking"]["miou"] == r["miou"]
    assert list(r["layers"]["conv2"]["iou_per_class"]) == list(r["iou_per_class"])
    table = [line.split() for line in printed[printed.index(next(x for x in printed if "spiking up to" in x)) + 2:]]
    assert [line[0] for line in table] == rows
    assert [float(line[1]) for line in table] == [round(100 * r["layers"][k]["miou"], 2) for k in rows]
    for ckpt, twin, why in ((ann_ckpt, ann_ckpt, "not a `toolchain convert` checkpoint"),
                            (conv, conv, "holds a spiking model")):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--checkpoint", str(ckpt), "--twin", str(twin), "--batch-size", "2"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and why in err and str(twin) in err


def test_convert_for_other_steps_and_code_writes_them_into_the_spiking_config(ann_ckpt, tmp_path, capsys):
    """`convert --set data.time_steps=.. --set data.encoding=..`: the twin's
    configuration with the overrides becomes the converted net's, so that the
    fine-tune, export and runs that read it use them; the printed fine-tune
    command carries them; a field the config does not have is refused."""
    from toolchain.core import checkpoint

    out = tmp_path / "conv" / "checkpoint.pt"
    main(["convert", "--checkpoint", str(ann_ckpt), "--out", str(out), "--frames", "2",
          "--set", "data.time_steps=5", "--set", "data.encoding=rate"])
    data = checkpoint.load(out)["config"]["data"]
    assert (data["time_steps"], data["encoding"]) == (5, "rate")
    assert checkpoint.load(ann_ckpt)["config"]["data"]["encoding"] == "poisson"  # the twin as it was
    assert "--set data.time_steps=5 --set data.encoding=rate (and the twin's config)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        main(["convert", "--checkpoint", str(ann_ckpt), "--out", str(tmp_path / "x.pt"), "--set", "data.steps=5"])
    assert bad.value.code != 0 and not (tmp_path / "x.pt").exists()


@pytest.mark.slow
def test_pareto_fine_tunes_per_budget_deploys_every_point_and_resumes(tmp_path, data_cfg, capsys):
    """Each budget is an ordinary run fine-tuned from the checkpoint; every point,
    the start included, is measured on its deployed .net; a second call reuses
    the finished runs instead of training again."""
    from toolchain.core import checkpoint

    cfg = Config(data=data_cfg)
    cfg.model.name = "spiking-deeplab-tiny"
    cfg.train.batch_size = 4
    torch.manual_seed(0)
    start = tmp_path / "start" / "checkpoint.pt"
    checkpoint.save(start, model=models.from_config(cfg, 2, 6).state_dict(), config=to_dict(cfg),
                    dataset=dict(in_channels=2, num_classes=6, class_names=[f"c{k}" for k in range(6)]))
    out = tmp_path / "front"
    args = ["pareto", "--checkpoint", str(start), "--budgets", "2e5,5e4", "--epochs", "1", "--frames", "2",
            "--steps", "3", "--out", str(out)]
    main(args)
    result = json.loads((out / "pareto.json").read_text())
    t = cfg.data.time_steps
    assert [(p["label"], p["time_steps"]) for p in result["points"]] == [
        ("start", t), ("start", 3), ("budget 2e+05", t), ("budget 2e+05", 3), ("budget 5e+04", t), ("budget 5e+04", 3)]
    assert [p["budget"] for p in result["points"]] == [None, None, 2e5, 2e5, 5e4, 5e4]
    assert all(p["synops_per_frame"] > 0 and p["neuron_updates_per_frame"] > 0 for p in result["points"])
    # fewer steps, fewer neuron updates: every neuron is updated on each of a frame's T + D steps
    start_t, start_3 = result["points"][:2]
    depth = models.from_config(cfg, 2, 6).pipeline_depth
    assert start_3["neuron_updates_per_frame"] * (t + depth) == start_t["neuron_updates_per_frame"] * (3 + depth)
    # the front's mIoU from its one emulator run is the deployed .net's mIoU as `toolchain run` scores it
    from deploy.runner import evaluate
    report, _ = evaluate(out / "start" / "model.net", cfg.data, frames=2, progress=False)
    assert start_t["miou"] == pytest.approx(report["miou"], abs=1e-12)
    assert list(result["points"][0]["iou_per_class"]) == [f"c{k}" for k in range(6)]  # by the model's class names
    assert all((out / d / "model.net").is_file() for d in ("start", "budget-200000", "budget-50000"))
    assert (out / "pareto.png").stat().st_size > 1000
    assert "SynOps/frame" in capsys.readouterr().out
    finished = (out / "budget-50000" / "metrics.json").stat().st_mtime_ns
    main(args)
    assert (out / "budget-50000" / "metrics.json").stat().st_mtime_ns == finished
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # a finished run of other settings is not passed off as this one
        main(args[:-4] + ["--epochs", "2", "--out", str(out)])
    assert e.value.code == 2 and "fine-tuned with other settings (epochs 1 -> 2)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["pareto", "--checkpoint", str(start), "--budgets", "1e6,x", "--out", str(tmp_path / "bad")])
    assert e.value.code == 2 and "--budgets" in capsys.readouterr().err
