"""`toolchain export` and `toolchain run`."""
from __future__ import annotations

import json
import click

from toolchain.cli import config_options
from toolchain.errors import ToolchainError
from toolchain.files import write_text

TARGETS = ("loihi-sim", "onnx", "nir")


def _miou(model, dataset, indices, batch_size=8) -> float:
    import torch
    from models import predict
    from toolchain.metrics import SegmentationMetric

    metric = None
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            items = [dataset[i] for i in indices[start:start + batch_size]]
            x = torch.stack([torch.as_tensor(a) for a, _ in items])
            y = torch.stack([torch.as_tensor(b) for _, b in items])
            scores, _ = predict(model, x, tuple(y.shape[1:]))
            metric = metric or SegmentationMetric(scores.shape[1])
            metric.update(scores.argmax(1), y)
    return metric.compute()["miou"]


@click.command("export")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="Training checkpoint.")
@click.option("--target", type=click.Choice(TARGETS), default="loihi-sim", show_default=True)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="The file to write: .net (loihi-sim), .onnx or .nir.")
@click.option("--frames", type=int, default=32, show_default=True,
              help="Test frames for the float vs quantized mIoU check (0 skips it).")
@click.option("--data", "data_root", default=None, help="Data root (default: the config's).")
@config_options
def export_cmd(checkpoint, target, out, frames, data_root, config_path, overrides):
    """Quantize a trained model to Loihi fixed point and write it as a .net file."""
    import models
    from toolchain.config import load_config

    from .export import build_netfile, quantized_copy
    from .netfile import write

    model, cfg = models.load_checkpoint(checkpoint, quantized=False)
    if config_path or overrides:
        cfg.data = load_config(config_path, overrides).data
    if target in ("onnx", "nir"):
        from .nir_export import export_nir
        from .onnx_export import export_onnx_files
        if isinstance(model, models.SpikingGraph):
            models.set_quantized(model, True)  # the 8-bit weights the .net file carries
        paths = export_onnx_files(model, out) if target == "onnx" else \
            [export_nir(model, out, time_steps=cfg.data.time_steps)]
        click.echo("wrote " + ", ".join(map(str, paths)))
        return
    if not isinstance(model, models.SpikingGraph):
        raise ToolchainError(f"{checkpoint}: holds a non-spiking model; only spiking graphs export to Loihi")
    net = build_netfile(model, time_steps=cfg.data.time_steps, encoding=cfg.data.encoding,
                        class_names=getattr(model, "class_names", []))
    report = dict(net=str(out), target=target, layers=len(net.layers), neurons=net.num_neurons,
                  synapses=net.num_synapses)
    if frames > 0:
        from dataclasses import replace

        from toolchain.data import build_dataset
        data_cfg = cfg.data if data_root is None else replace(cfg.data, root=data_root)
        dataset = build_dataset(data_cfg, "test")
        idx = list(range(min(frames, len(dataset))))
        report["miou_float"] = _miou(model, dataset, idx)
        report["miou_quantized"] = _miou(quantized_copy(model), dataset, idx)
        report["frames"] = len(idx)
    write(out, net)
    click.echo(f"wrote {out}: {report['layers']} layers, {report['neurons']} neurons, "
               f"{report['synapses']} synapses, T={net.time_steps}, encoding={net.encoding}")
    if frames > 0:
        click.echo(f"mIoU on {report['frames']} test frames: float {100 * report['miou_float']:.2f}%  "
                   f"quantized {100 * report['miou_quantized']:.2f}%")
    write_text(str(out) + ".json", json.dumps(report, indent=2))


@click.command("run")
@click.option("--net", "net_path", required=True, type=click.Path(dir_okay=False), help="The .net file.")
@click.option("--data", "data_root", default=None, help="Data root (default: the generated set).")
@click.option("--split", default=None, help="Data split [default: run.split = test].")
@click.option("--frames", type=int, default=None, help="Number of frames [default: the whole split].")
@click.option("--workers", type=int, default=None, help="Worker processes for the lava backend.")
@click.option("--backend", type=click.Choice(["emulator", "lava"]), default=None,
              help="emulator (bit-exact, fast; default) or lava (the reference).")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Write the report here.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Write prediction PNGs here.")
@config_options
def run_cmd(net_path, data_root, split, frames, workers, backend, json_path, out_dir, config_path, overrides):
    """Run a .net file over a data split and report mIoU, speed and spikes per layer."""
    from toolchain.config import load_config

    from .runner import evaluate, format_report

    cfg = load_config(config_path, overrides)
    run = cfg.run
    report, _ = evaluate(net_path, cfg.data if data_root is None else _with_root(cfg.data, data_root),
                         split=split or run.split, frames=frames if frames is not None else run.frames,
                         backend=backend or run.backend, workers=workers or run.workers,
                         batch_size=run.batch_size, out_dir=out_dir, json_path=json_path)
    click.echo(format_report(report))


def _with_root(data_cfg, root):
    from dataclasses import replace
    return replace(data_cfg, root=root)
