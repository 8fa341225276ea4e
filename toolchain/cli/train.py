"""`toolchain train`, `toolchain eval` and `toolchain models`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..core.config import load_config
from ..core.errors import ToolchainError
from ..core.files import write_text
from ..core.formatting import percent
from . import config_options, quiet_heavy_imports

quiet_heavy_imports()  # before any command of this module loads models


@click.command()
@config_options
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Data set root (default: the generated DDD17-format set).")
@click.option("--model", "model_name", default=None, help="Registered model name (see `toolchain models`).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Number of epochs.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder (default: runs/MODEL).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--ann", is_flag=True, help="Train the non-spiking twin (ReLU, average pooling) for conversion.")
def train(config_path, overrides, data_dir, model_name, epochs, out_dir, resume, ann):
    """Train a spiking segmenter; write checkpoint, logs, plots and metrics.json."""
    from ..train.loop import train as run

    cfg = load_config(config_path, overrides)
    if data_dir is not None:
        cfg.data.root = data_dir
    if model_name is not None:
        cfg.model.name = model_name
    if ann:
        cfg.train.ann = True
    out = Path(out_dir or Path("runs") / cfg.model.name)
    result = run(cfg, out, resume=resume, epochs=epochs, log=click.echo)
    if result is not None:
        click.echo(summary_table(result))
        click.echo(f"run folder: {out}")


def _clip_words(r: dict) -> str:
    layers = r.get("ann_clip_layers") or {}
    if r.get("ann_clip") is None and not layers:
        return ""
    named = ", ".join(f"{k} p{v:g}" for k, v in layers.items())
    if r.get("ann_clip") is None:
        return f" clipped at {named}"
    return f" clipped at p{r['ann_clip']:g}" + (f" ({named})" if named else "")


def summary_table(r: dict) -> str:
    rows = [("majority class (" + r["majority_class"] + ")", r["majority_miou"]),
            ((f"starting weights ({r['init']})" if r.get("init") else "untrained " + r["model"]),
             r["untrained_miou"]),
            (f"trained {r['model']}" + (" ANN twin" if r.get("ann") else "")
             + _clip_words(r) + (" under its conversion's spike rates" if r.get("ann_transfer") else "")
             + (f" and {r['ann_transfer_noise']:g}x their scatter" if r.get("ann_transfer_noise") else "")
             + f" ({r['epochs']} epochs"
             + (", quantized)" if r["quantized"] else ", float)"), r["miou"])]
    w = max(len(n) for n, _ in rows)
    lines = [f"{'model':<{w}}  test mIoU", f"{'-' * w}  ---------"]
    lines += [f"{n:<{w}}  {percent(v, width=8)}%" for n, v in rows]
    return "\n".join(lines)


@click.command("eval")
@click.option("--checkpoint", "ckpt", type=click.Path(dir_okay=False), required=True, help="Training checkpoint.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None, help="Data set root.")
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write metrics here.")
@click.option("--quantized/--float", "quantized", default=None,
              help="Loihi 8-bit weights or float weights (default: as trained).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--twin", "twin_ckpt", type=click.Path(dir_okay=False), default=None,
              help="The ANN twin a `toolchain convert` checkpoint came from: also the mIoU with the spiking "
                   "layers up to each layer and the twin after it, where the conversion loses (a second pass).")
def evaluate(ckpt, data_dir, split, json_out, quantized, batch_size, twin_ckpt):
    """Evaluate a training checkpoint: mIoU, per-class IoU, pixel accuracy, firing rates."""
    import models
    from toolchain.data import build_dataset

    from ..core import checkpoint
    from ..train.loop import evaluate as run
    from ..train.loop import pick_device

    entries = checkpoint.load(ckpt)
    conversion = entries.get("conversion")
    if twin_ckpt and not conversion:
        raise ToolchainError(f"{ckpt}: not a `toolchain convert` checkpoint; --twin compares a conversion with "
                             f"the twin it came from")
    model, cfg = models.load_checkpoint(ckpt, quantized=quantized, data_root=data_dir, entries=entries)
    twin = None
    if twin_ckpt:  # read before the evaluation: a wrong file fails at once
        twin, _ = models.load_checkpoint(twin_ckpt, data_root=data_dir)
        if isinstance(twin, models.SpikingGraph):
            raise ToolchainError(f"{twin_ckpt}: holds a spiking model; --twin takes the ANN twin (trained with --ann)")
    ds = build_dataset(cfg.data, split)
    if ds.num_classes != len(model.class_names):
        raise ToolchainError(f"{ckpt}: model has {len(model.class_names)} classes, data set {ds.num_classes}")
    device = pick_device(cfg.train.device)
    r = run(model.to(device), ds, device, batch_size=batch_size, progress=True)
    r = dict(checkpoint=str(ckpt), split=split, model=cfg.model.name,
             quantized=bool(getattr(model, "quantized", False)), samples=len(ds),
             miou=r["miou"], pixel_acc=r["pixel_acc"], loss=r["loss"],
             iou_per_class=dict(zip(model.class_names, r["iou_per_class"], strict=True)), firing=r["firing"])
    click.echo(f"{cfg.model.name} ({'quantized' if r['quantized'] else 'float'}) on {split} ({len(ds)} samples): "
               f"mIoU {percent(r['miou'])}%  pixel acc {percent(r['pixel_acc'])}%")
    for name, v in r["iou_per_class"].items():
        click.echo(f"  {name:<14} IoU {percent(v, width=6)}%")
    if twin is not None:
        r["layers"] = _layer_losses(model, conversion, twin, twin_ckpt, ds, batch_size, device)
    if json_out:
        write_text(json_out, json.dumps(r, indent=1))


def _layer_losses(model, conversion: dict, twin, twin_ckpt: str, ds, batch_size: int, device) -> dict:
    """`eval --twin`: the table of `convert.layer_losses`, printed; its rows for the JSON."""
    from ..studies.convert import layer_losses

    try:
        rows = layer_losses(twin, model, conversion["lambdas"], ds, batch_size=batch_size, device=device,
                            progress=True)
    except ToolchainError as e:
        raise ToolchainError(f"{twin_ckpt} against the conversion: {e}") from e
    names = model.class_names
    click.echo(f"spiking up to a layer, the twin {twin_ckpt} after it:")
    click.echo(f"  {'layer':<12} {'mIoU':>7} {'step':>6}  " + " ".join(f"{n[:8]:>8}" for n in names))
    before = None
    for row, m in rows.items():
        step = "" if before is None or row == "spiking" else f"{100 * (m['miou'] - before):+.2f}"
        click.echo(f"  {row:<12} {percent(m['miou'], width=7)} {step:>6}  "
                   + " ".join(percent(v, 1, width=8) for v in m["iou_per_class"]))
        before = m["miou"]
    return {row: dict(miou=m["miou"], pixel_acc=m["pixel_acc"],
                      iou_per_class=dict(zip(names, m["iou_per_class"], strict=True))) for row, m in rows.items()}


@click.command("models")
def models_cmd():
    """List the registered networks with their parameter counts."""
    import models

    width = max(len(name) for name in models.names()) + 2
    click.echo(f"{'name':<{width}} {'parameters':>12}   (2 input channels, 6 classes)")
    for name in models.names():
        click.echo(f"{name:<{width}} {models.describe(name):>12,}")
    click.echo("append -ann to any name for its non-spiking twin")


@click.command("upgrade-checkpoint")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the upgraded checkpoint here (default: replace PATH).")
def upgrade_checkpoint_cmd(path, out):
    """Rewrite a checkpoint of toolchain 0.1 in today's format.

    Version 1 files hold numpy's RNG state as a pickled array, which today's
    reader refuses. This command reads them through an allow-list (torch's
    tensor types and numpy arrays, nothing that runs code: anything else is
    refused) and writes tensors and plain values only. Run it once, on files
    you made or trust."""
    from ..core import checkpoint

    written = checkpoint.upgrade(path, out)
    click.echo(f"upgraded {path} -> {written} (checkpoint version {checkpoint.VERSION})")
