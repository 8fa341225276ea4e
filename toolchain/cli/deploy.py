"""`toolchain export`, `toolchain import`, `toolchain run` and `toolchain predict`."""
from __future__ import annotations

import json

import click

from ..core.errors import ToolchainError
from ..core.files import write_text
from ..core.formatting import percent
from . import config_options, quiet_heavy_imports

quiet_heavy_imports()  # before any command of this module loads models

TARGETS = ("loihi-sim", "onnx", "nir")


@click.command("export")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="Training checkpoint.")
@click.option("--target", type=click.Choice(TARGETS), default="loihi-sim", show_default=True)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="The file to write: .net (loihi-sim), .onnx or .nir.")
@click.option("--frames", type=int, default=32, show_default=True,
              help="Test frames for the float vs quantized mIoU check (0 skips it).")
@click.option("--data", "data_root", default=None, help="Data root (default: the config's).")
@click.option("--nir-timing", type=click.Choice(("portable", "exact")), default="portable", show_default=True,
              help="nir target: 'portable' writes only nodes NIR consumers import (norse, snntorch), the "
                   "output being the readout's input, per-layer step delays dropped (metadata 'lag'); "
                   "'exact' keeps Lava's step timing (Delay, Scale, SumPool2d, an integrator readout).")
@config_options
def export_cmd(checkpoint, target, out, frames, data_root, nir_timing, config_path, overrides):
    """Quantize a trained model to Loihi fixed point and write it as a .net file
    (or its step graph as ONNX, or NIR, both built from that .net)."""
    from dataclasses import replace

    import torch

    import models
    from deploy.export import build_netfile, quantized_copy
    from deploy.netfile import write

    from ..data import build_dataset
    from ..train.loop import evaluate

    model, cfg = models.load_checkpoint(checkpoint, quantized=False, config_path=config_path, overrides=overrides)
    if not isinstance(model, models.SpikingGraph):
        if target != "onnx":
            raise ToolchainError(f"{checkpoint}: holds a non-spiking model; only spiking graphs export "
                                 f"to {target} (an ANN twin exports to onnx)")
        from deploy.onnx_export import export_ann_onnx
        click.echo(f"wrote {export_ann_onnx(model, out)}")
        return
    net = build_netfile(model, time_steps=cfg.data.time_steps, encoding=cfg.data.encoding,
                        class_names=getattr(model, "class_names", []))
    if target in ("onnx", "nir"):
        from deploy.nir_export import export_nir
        from deploy.onnx_export import export_onnx
        click.echo(f"wrote {export_onnx(net, out) if target == 'onnx' else export_nir(net, out, timing=nir_timing)}")
        return
    report = dict(net=str(out), target=target, layers=len(net.layers), neurons=net.num_neurons,
                  synapses=net.num_synapses)
    if frames > 0:
        data_cfg = cfg.data if data_root is None else replace(cfg.data, root=data_root)
        dataset = build_dataset(data_cfg, "test")
        cpu = torch.device("cpu")
        for kind, m in (("float", model), ("quantized", quantized_copy(model))):
            ev = evaluate(m, dataset, cpu, batch_size=8, frames=frames)
            report[f"miou_{kind}"] = ev["miou"]
            report[f"iou_per_class_{kind}"] = dict(zip(dataset.class_names, ev["iou_per_class"], strict=True))
        report["frames"] = min(frames, len(dataset))
    write(out, net)
    click.echo(f"wrote {out}: {report['layers']} layers, {report['neurons']} neurons, "
               f"{report['synapses']} synapses, T={net.time_steps}, encoding={net.encoding}")
    if frames > 0:
        click.echo(f"mIoU on {report['frames']} test frames: float {percent(report['miou_float'])}%  "
                   f"quantized {percent(report['miou_quantized'])}%")
    from deploy.lava import format_mapping, mapping_report

    report["lava_mapping"] = mapping_report(net)
    click.echo("Lava process per layer (deploy.lava.Network) and its Loihi 2 cost:")
    click.echo(format_mapping(report["lava_mapping"]))
    write_text(str(out) + ".json", json.dumps(report, indent=2))


def _shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ToolchainError(f"--input-shape {text!r}: give C,H,W (or C) as integers") from None
    if not shape or min(shape) < 1:
        raise ToolchainError(f"--input-shape {text!r}: sizes must be >= 1")
    return shape


@click.command("import")
@click.option("--nir", "nir_path", required=True, type=click.Path(dir_okay=False), help="The NIR file to read.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The .net file to write.")
@click.option("--time-steps", type=int, default=None,
              help="T, input steps per frame [default: the graph's metadata 'time_steps'].")
@click.option("--classes", default=None, help="Class names, comma-separated, one per readout channel.")
@click.option("--input-shape", default=None, help="C,H,W where the Input node carries no shape.")
@click.option("--dt", type=float, default=None,
              help="The graph's time step [default: metadata 'dt', else 1e-4 (snntorch's)].")
@click.option("--frames", type=int, default=4, show_default=True,
              help="Random input frames for the float-graph vs emulator check (0 skips it).")
@click.option("--rate", type=float, default=0.3, show_default=True, help="Spike probability of those frames.")
@click.option("--weight-split", is_flag=True, default=False,
              help="Carry each weight by two synapses (8-bit mantissas at two weight exponents): up to 15 bits "
                   "a weight for twice the synapses and synaptic operations (deploy.nir_import).")
def import_cmd(nir_path, out, time_steps, classes, input_shape, dt, frames, rate, weight_split):
    """Read a NIR graph, quantize it to Loihi fixed point and write a validated .net;
    report each layer's weight error and the spikes the float graph and the
    emulator agree on."""
    import torch

    from deploy.nir_import import agreement, format_report, import_nir

    names = [c.strip() for c in classes.split(",")] if classes else []
    result = import_nir(nir_path, out, time_steps=time_steps, class_names=names, input_shape=_shape(input_shape),
                        dt=dt, precision="split" if weight_split else "8bit")
    net = result.net
    click.echo(f"wrote {out}: {len(net.layers)} layers, {net.num_neurons} neurons, {net.num_synapses} synapses, "
               f"T={net.time_steps}, dt={result.dt:g}")
    agree = None
    if frames > 0:
        gen = torch.Generator().manual_seed(0)
        x = (torch.rand((frames, *net.input_shape, net.time_steps), generator=gen) < rate).float()
        agree = agreement(result, x)
        click.echo(f"float NIR graph vs emulator on {frames} random frames (spike rate {rate:g}):")
    click.echo(format_report(result, agree))


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
    from deploy.runner import evaluate, format_report

    from ..core.config import load_config

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


@click.command("predict")
@click.option("--net", "net_path", type=click.Path(dir_okay=False), default=None, help="The .net file.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="A training checkpoint instead of a .net (runs the torch model).")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="Event recording: .aedat4 (DAVIS), .npz or .h5/.hdf5 with x, y, t, p.")
@click.option("--window-ms", type=float, default=None,
              help="Window length [default: 50, the milliseconds a DDD17 frame accumulates].")
@click.option("--backend", type=click.Choice(["emulator", "lava"]), default="emulator", show_default=True,
              help="A .net on the bit-exact emulator, or in Lava's CPU simulator: the whole recording "
                   "streamed through one Lava runtime, the same outputs.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--batch", "batch_size", type=int, default=8, show_default=True,
              help="Windows run together (with lava: windows per Lava run of the one runtime).")
@click.option("--resize", "resize_mode", type=click.Choice(["resize", "crop"]), default=None,
              help="Sensor frame to model input [default: the checkpoint's data.resize, else resize].")
@click.option("--sensor-crop/--no-sensor-crop", default=None,
              help="Keep the DDD17 release's top 200 rows of a DAVIS346 [default: only for 346x260 recordings].")
@click.option("--sensor-size", nargs=2, type=int, default=None, metavar="W H",
              help="Sensor size when the file does not record one.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the poisson input draws.")
@click.option("--no-gif", is_flag=True, help="Skip the animated GIF.")
def predict_cmd(net_path, checkpoint, input_path, window_ms, backend, out_dir, batch_size, resize_mode,
                sensor_crop, sensor_size, seed, no_gif):
    """Segment an event recording window by window: class maps (.npz), overlays (PNG) and a GIF."""
    from deploy.predict import predict

    window = {} if window_ms is None else dict(window_ms=window_ms)
    s = predict(input_path, out_dir, net=net_path, checkpoint=checkpoint, **window, backend=backend,
                batch_size=batch_size, resize_mode=resize_mode, sensor_crop=sensor_crop,
                sensor_size=tuple(sensor_size) if sensor_size else None, seed=seed, gif=not no_gif)
    click.echo(f"{s['windows']} windows of {s['window_ms']:g} ms from {s['sensor'][0]}x{s['sensor'][1]} events "
               f"-> {s['input_shape'][1]}x{s['input_shape'][2]} ({s['backend']}, {s['windows_per_second']} "
               f"windows/s); wrote {out_dir}/maps, {out_dir}/overlays"
               + (f", {s['gif']}" if s["gif"] else ""))
