"""`toolchain convert`, `sweep`, `energy`, `robustness` and `report`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..core.errors import ToolchainError
from ..core.files import write_text
from ..core.formatting import percent
from . import config_options, quiet_heavy_imports

quiet_heavy_imports()  # before any command of this module loads models


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ToolchainError(f"{what}: {text!r} is not a comma-separated list of integers") from e
    if not values or any(v < 1 for v in values):
        raise ToolchainError(f"{what}: {text!r} needs positive integers")
    return values


def _labelled(paths) -> list[tuple[str, str]]:
    """LABEL=PATH or PATH (labelled by its folder name)."""
    out = []
    for p in paths:
        label, _, path = p.rpartition("=") if "=" in p else ("", "", p)
        if not Path(path).is_file():
            raise ToolchainError(f"{path}: checkpoint not found")
        out.append((label or Path(path).parent.name or Path(path).stem, path))
    return out


def _dump(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1, allow_nan=True))


class _ScaleType(click.ParamType):
    name = "FLOAT|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value == "auto":
            return value
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor auto", param, ctx)


@click.command("convert")
@click.option("--checkpoint", "ckpt", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint of a non-spiking twin (`toolchain train --ann`).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Spiking checkpoint to write.")
@click.option("--norm", type=click.Choice(["layer", "channel"]), default="layer", show_default=True,
              help="Balance on one activation level per layer or per channel.")
@click.option("--thresholds", type=click.Choice(["layer", "net"]), default="layer", show_default=True,
              help="Each layer its own threshold, its 8-bit weights spanning the range, or one for the net.")
@click.option("--percentile", type=float, default=100.0, show_default=True,
              help="Activation percentile (100: the paper's maximum).")
@click.option("--scale", type=_ScaleType(), default="0.7", show_default=True,
              help="Factor on the statistic (the paper: 0.7), or auto: the best of "
                   "0.2-0.7 on the training frames, at the config's T with 8-bit weights.")
@click.option("--frames", type=click.IntRange(min=1), default=64, show_default=True,
              help="Training frames to measure activations on.")
@click.option("--data", "data_root", default=None, help="Data root (default: the checkpoint's).")
@config_options
def convert_cmd(ckpt, out, norm, thresholds, percentile, scale, frames, data_root, config_path, overrides):
    """ANN-to-SNN conversion by threshold balancing; writes an ordinary spiking checkpoint.
    The twin's configuration, or --config's, with --set applied, becomes the spiking net's
    (e.g. --set data.time_steps=16 --set data.encoding=rate: converted for 16 steps of the rate code).
    convert.json also holds each layer's measured spike rate against its input (`transfer`), which
    `train.ann_transfer` tunes the twin under; such a twin converts at the levels it was tuned for."""
    from ..studies.convert import convert_checkpoint

    info = convert_checkpoint(ckpt, out, norm=norm, percentile=percentile, scale=scale, frames=frames,
                              thresholds=thresholds, data_root=data_root, config_path=config_path,
                              overrides=overrides, log=click.echo)
    _dump(Path(out).parent / "convert.json", info)


@click.command("sweep")
@click.option("--checkpoint", "ckpts", multiple=True, required=True, metavar="[LABEL=]PATH",
              help="Spiking (trained or converted) or twin checkpoint; repeatable.")
@click.option("--steps", default="5,10,20,50", show_default=True, help="Time steps T to evaluate.")
@click.option("--frames", type=click.IntRange(min=1), default=32, show_default=True, help="Test frames.")
@click.option("--data", "data_root", default=None, help="Data root (default: each checkpoint's).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for sweep.json and sweep.png.")
def sweep_cmd(ckpts, steps, frames, data_root, out_dir):
    """mIoU against T for converted and directly trained models (emulator of the .net)."""
    from ..studies import sweep

    result = sweep.sweep(_labelled(ckpts), _ints(steps, "--steps"), frames, data_root, log=click.echo)
    out = Path(out_dir)
    _dump(out / "sweep.json", result)
    sweep.plot(result, out / "sweep.png")
    header, rows = sweep.table(result)
    click.echo("  ".join(header))
    for r in rows:
        click.echo("  ".join(r))
    click.echo(f"wrote {out / 'sweep.json'}, {out / 'sweep.png'}")


@click.command("energy")
@click.option("--checkpoint", "ckpt", required=True, type=click.Path(dir_okay=False),
              help="Spiking checkpoint or exported .net file.")
@click.option("--frames", type=click.IntRange(min=1), default=8, show_default=True, help="Test frames to run.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Time steps T (default: the model's).")
@click.option("--backend", type=click.Choice(["emulator", "lava"]), default="emulator", show_default=True)
@click.option("--e-ac", type=float, default=0.9, show_default=True, help="pJ per accumulate (45 nm).")
@click.option("--e-mac", type=float, default=4.6, show_default=True, help="pJ per multiply-accumulate (45 nm).")
@click.option("--loihi-synop", type=float, default=23.6, show_default=True, help="Loihi pJ per synaptic op.")
@click.option("--loihi-neuron", type=float, default=52.0, show_default=True, help="Loihi pJ per neuron update.")
@click.option("--neurons-per-core", type=click.IntRange(min=1), default=8192, show_default=True)
@click.option("--memory-per-core", type=click.IntRange(min=1), default=128, show_default=True,
              help="Synaptic memory per core, KiB.")
@click.option("--data", "data_root", default=None, help="Data root.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for energy.json.")
def energy_cmd(ckpt, frames, steps, backend, e_ac, e_mac, loihi_synop, loihi_neuron, neurons_per_core,
               memory_per_core, data_root, out_dir):
    """Spikes, SynOps, ANN MACs, energy per frame and the Loihi 2 resource estimate, from a real run."""
    import models

    from ..studies import energy
    from ..studies.sweep import load_frames, quiet_export

    if str(ckpt).endswith(".net"):
        from deploy import load
        from deploy.runner import data_config_for
        from toolchain.core.config import Config

        net = load(ckpt).net
        if steps is not None and steps != net.time_steps:
            raise ToolchainError(f"{ckpt}: a .net file runs at its own T={net.time_steps}; export again for T={steps}")
        cfg = Config()
        cfg.data = data_config_for(load(ckpt), cfg.data, data_root)
    else:
        model, cfg = models.load_checkpoint(ckpt, data_root=data_root)
        if not isinstance(model, models.SpikingGraph):
            raise ToolchainError(f"{ckpt}: a non-spiking twin; convert it first (`toolchain convert`)")
        net = quiet_export(model, steps or cfg.data.time_steps)
    x, _ = load_frames(cfg, net.time_steps, frames)
    counts = energy.count_run(net, x, backend)
    e = energy.energy(counts, energy.EnergyModel(e_ac, e_mac, loihi_synop, loihi_neuron))
    res = energy.resources(net, energy.CoreModel(neurons_per_core, memory_per_core))
    out = dict(checkpoint=str(ckpt), frames=counts["frames"], time_steps=counts["time_steps"], backend=backend,
               input_spikes=counts["input_spikes"], layers=counts["layers"], energy=e, resources=res)
    _dump(Path(out_dir) / "energy.json", out)
    click.echo(f"{'layer':<12} {'spikes/frame':>14} {'SynOps/frame':>14} {'ANN MACs':>12}")
    for l in counts["layers"]:
        click.echo(f"{l['name']:<12} {l['spikes']:>14.0f} {l['synops']:>14.0f} {l['macs']:>12}")
    click.echo(f"SynOps/frame {e['synops_per_frame']:.4g}  MACs/frame {e['macs_per_frame']:.4g}  "
               f"SNN {e['snn_45nm_uj']:.4g} uJ  ANN {e['ann_45nm_uj']:.4g} uJ  ANN/SNN {e['ann_snn_ratio']:.2f}  "
               f"Loihi {e['loihi_uj']:.4g} uJ")
    click.echo(f"Loihi 2: {res['neurons']} neurons, {res['synapses']} synapses, "
               f"{res['synaptic_memory_kib']:.0f} KiB, {res['cores']} cores, {res['chips']} chip(s)")


@click.command("robustness")
@click.option("--checkpoint", "ckpts", multiple=True, required=True, metavar="[LABEL=]PATH",
              help="Spiking or twin checkpoint; repeatable (give the SNN and its ANN twin).")
@click.option("--corruptions", default=None, help="Comma-separated subset (default: all).")
@click.option("--frames", type=click.IntRange(min=1), default=16, show_default=True, help="Test frames.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Time steps T (default: each model's).")
@click.option("--data", "data_root", default=None, help="Data root.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for robustness.json and robustness.png.")
def robustness_cmd(ckpts, corruptions, frames, steps, data_root, out_dir):
    """mIoU under Gaussian noise, salt-and-pepper, blur and event-camera corruptions."""
    from ..studies import robustness

    names = [c.strip() for c in corruptions.split(",") if c.strip()] if corruptions else None
    result = robustness.robustness(_labelled(ckpts), names, frames, steps, data_root=data_root, log=click.echo)
    out = Path(out_dir)
    _dump(out / "robustness.json", result)
    robustness.plot(result, out / "robustness.png")
    for label, per in robustness.middle(result).items():
        click.echo(f"{label} at the middle strength: " +
                   ", ".join(f"{c} {s:g}: {percent(v)}%" for c, (s, v) in per.items()))
    click.echo(f"wrote {out / 'robustness.json'}, {out / 'robustness.png'}")


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Report folder.")
@click.option("--title", default="Toolchain report", show_default=True)
def report_cmd(run_dirs, out_dir, title):
    """Gather metrics, studies and pictures of run folders into report.md and report.html."""
    from ..studies.report import build

    md, hp = build(list(run_dirs), out_dir, title)
    click.echo(f"wrote {md} and {hp}")


@click.command("pareto")
@click.option("--checkpoint", "ckpt", required=True, type=click.Path(dir_okay=False),
              help="Trained spiking checkpoint every point is fine-tuned from.")
@click.option("--budgets", required=True,
              help="SynOps per frame to fine-tune under, comma-separated (e.g. 3e6,1.5e6,7.5e5).")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Fine-tuning epochs per budget.")
@click.option("--frames", type=click.IntRange(min=1), default=64, show_default=True,
              help="Test frames each deployed point is measured on.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Fine-tuning learning rate (default: a tenth of the checkpoint's).")
@click.option("--weight", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="train.synops_weight: the loss added per budget's worth of excess SynOps.")
@click.option("--steps", default="",
              help="Also measure every point at these T, comma-separated (fewer steps, fewer neuron updates).")
@click.option("--ann", "ann_ckpt", default=None, type=click.Path(dir_okay=False),
              help="The ANN twin's checkpoint, for its point on the front.")
@click.option("--data", "data_root", default=None, help="Data root (default: the checkpoint's).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Study folder (resumable): a run per budget, pareto.json, pareto.png.")
def pareto_cmd(ckpt, budgets, epochs, frames, lr, weight, steps, ann_ckpt, data_root, out_dir):
    """The accuracy-energy front: fine-tune under SynOps budgets, deploy and measure each point."""
    from ..studies import pareto

    try:
        values = [float(v) for v in budgets.split(",") if v.strip()]
    except ValueError as e:
        raise ToolchainError(f"--budgets: {budgets!r} is not a comma-separated list of numbers") from e
    result = pareto.pareto(ckpt, values, out_dir, epochs=epochs, frames=frames, lr=lr, weight=weight,
                           steps=_ints(steps, "--steps") if steps.strip() else [], ann_checkpoint=ann_ckpt,
                           data_root=data_root, log=click.echo)
    out = Path(out_dir)
    _dump(out / "pareto.json", result)
    pareto.plot(result, out / "pareto.png")
    header, rows = pareto.table(result)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    for row in [header] + rows:
        click.echo("  ".join(f"{c:>{w}}" for c, w in zip(row, widths, strict=True)))
    click.echo(f"wrote {out / 'pareto.json'} and {out / 'pareto.png'}")
