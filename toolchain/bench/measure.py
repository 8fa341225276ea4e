"""One measurement, run in a child process of its own (`python -m
toolchain.bench.measure SPEC.json`) so that its peak memory is its own."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .memory import PeakMemory


def train_digest(spikes: np.ndarray) -> str:
    """A fingerprint of one frame's spike train (C, H, W, S) of one layer: equal
    digests mean equal trains, step for step and neuron for neuron."""
    s = np.ascontiguousarray(spikes, dtype=np.bool_)
    return hashlib.sha256(repr(s.shape).encode() + np.packbits(s).tobytes()).hexdigest()[:24]


def _answers(spikes: dict, counts: dict, voltage) -> dict:
    """What a run's rows are compared on: per frame, the readout, every layer's
    spike count and spike-train digest."""
    return dict(voltage=np.asarray(voltage).tolist(),
                counts={k: np.asarray(v).tolist() for k, v in counts.items()},
                trains={k: [train_digest(f) for f in np.asarray(v)] for k, v in spikes.items()})


def _join(parts: list[dict]) -> dict:
    return dict(voltage=sum((p["voltage"] for p in parts), []),
                counts={k: sum((p["counts"][k] for p in parts), []) for k in parts[0]["counts"]},
                trains={k: sum((p["trains"][k] for p in parts), []) for k in parts[0]["trains"]})


def _measure_lava(spec: dict) -> dict:
    from deploy import load
    from deploy.lava_host import LavaNetwork

    net = load(spec["net"]).net
    frames = np.load(spec["frames"])[: spec["n_frames"]]
    t_steps = frames.shape[-1]
    t0 = time.perf_counter()
    with LavaNetwork(net, t_steps, keep_spikes=True, capacity=len(frames)) as lava:
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        runs = [_answers(*lava.run(frames[:1]))]  # compiles and starts the runtime
        first = time.perf_counter() - t0
        # frame 0's answers survive a timeout of the timed frames: the parent compares them
        Path(spec["out"] + ".partial").write_text(json.dumps(dict(runs[0], build_s=build, first_frame_s=first,
                                                                  timed_start=time.time())))
        t0 = time.perf_counter()
        runs.append(_answers(*lava.run(frames[1:])))
        steps_per_s = (len(frames) - 1) * net.frame_steps(t_steps) / (time.perf_counter() - t0)
    return dict(_join(runs), build_s=build, first_frame_s=first, frames=len(frames), timed_frames=len(frames) - 1,
                steps_per_s=steps_per_s)


def _measure_lava_stock(spec: dict) -> dict:
    """Lava as released (`deploy.lava.run_stock`): its RingBuffer source, an
    Extractor per hidden layer, its own models and default channels; frame 0
    (graph compile and runtime start) untimed, frames 1.. timed."""
    from deploy import load
    from deploy.lava import run_stock

    net = load(spec["net"]).net
    frames = np.load(spec["frames"])[: spec["n_frames"]]
    done = []
    t0 = time.perf_counter()
    spikes, voltage = run_stock(net, frames, on_frame=lambda k: done.append(time.perf_counter()))
    counts = {k: v.reshape(len(v), -1).sum(1) for k, v in spikes.items()}
    steps_per_s = (len(frames) - 1) * net.frame_steps(frames.shape[-1]) / (done[-1] - done[0])
    # Network() builds inside run_stock; its build is part of frame 0 here
    return dict(_answers(spikes, counts, voltage), build_s=float("nan"), first_frame_s=done[0] - t0,
                frames=len(frames), timed_frames=len(frames) - 1, steps_per_s=steps_per_s)


def _measure_stock_conv(spec: dict) -> dict:
    """An upper bound on Lava's steps/s with its own Conv model, for networks where
    it would take hours to run: the CPU time its conv function
    (`lava.proc.conv.utils.conv`) needs per step for every conv synapse, on spikes
    at the given rate, over the machine's cores. Lava's conv loops over (output,
    input) channel pairs at a constant cost each, so each layer is timed on a
    few output channels and scaled to all of them."""
    from lava.proc.conv import utils

    from deploy import load
    from deploy.synapses import lava_conv_weight, lava_shape

    net = load(spec["net"]).net
    rng = np.random.default_rng(0)
    cpu_s = 0.0
    layers = {}
    for layer in net.layers:
        for src, syn in zip(layer.sources, layer.synapses, strict=True):
            if syn.type != "conv":
                continue
            w = lava_conv_weight(syn)
            k = min(len(w), syn.groups * spec["channels"])  # whole groups: conv_scipy needs out % groups == 0
            x = (rng.random(lava_shape(net.shape_of(src))) < 0.1).astype(np.int32)
            t0 = time.process_time()
            utils.conv(x, w[:k], w.shape[1:3], syn.stride[::-1], syn.padding[::-1], syn.dilation[::-1],
                       syn.groups)
            layers[layer.name] = (time.process_time() - t0) * len(w) / k
            cpu_s += layers[layer.name]
    return dict(steps_per_s=(os.cpu_count() or 1) / cpu_s, conv_cpu_s_per_step=cpu_s, layer_cpu_s=layers)


EMULATOR_SECONDS = 2.0


def _measure_emulator(spec: dict) -> dict:
    import torch

    from deploy import emulator, load

    net = load(spec["net"]).net
    frames = torch.as_tensor(np.load(spec["frames"])[: spec["n_frames"]])
    t_steps = frames.shape[-1]
    batch = spec["batch"]

    def run(x):
        """(answers, seconds the emulator took): the answers' digests are not the emulator's time."""
        t0 = time.perf_counter()
        out = emulator.run(net, x, device="cpu", keep_spikes=True)
        took = time.perf_counter() - t0
        return _answers({k: v.numpy() for k, v in out.spikes.items()}, out.counts, out.voltage), took

    answers, warm = run(frames[:1])  # compiles the kernel (or loads its cache)
    runs = [answers]
    timed = frames[1:]
    if batch > 1:
        run(timed[:batch])  # untimed: torch's first convolution of a new shape plans it
    def timed_pass(keep: bool) -> float:
        wall = 0.0
        for i in range(0, len(timed), batch):
            answers, took = run(timed[i:i + batch])
            if keep:
                runs.append(answers)
            wall += took
        return wall
    # passes over the same frames until EMULATOR_SECONDS have been timed: one
    # pass of a small net lasts milliseconds, where a stray interruption
    # would decide the figure; the median pass is reported
    passes = [timed_pass(keep=True)]  # its answers are the ones compared
    while sum(passes) < EMULATOR_SECONDS and len(passes) < 100:
        passes.append(timed_pass(keep=False))
    return dict(_join(runs), first_frame_s=warm, frames=len(frames), timed_frames=len(timed), batch=batch,
                passes=len(passes), steps_per_s=len(timed) * net.frame_steps(t_steps) / float(np.median(passes)))


def _measure_training(spec: dict) -> dict:
    """Samples/s of the training step (forward, loss, backward, optimiser step)
    of the configured model, and of the plain-PyTorch LIF twin of the same
    layers and weights (`toolchain.train.bench.PlainLIF`), on the same batch."""
    import torch

    import models

    from ..core.config import load_config
    from .training import PlainLIF, throughput

    cfg = load_config(spec["config"], spec.get("overrides", []))
    torch.manual_seed(0)
    n, (h, w), t = spec["batch"], (cfg.data.height, cfg.data.width), cfg.data.time_steps
    x = (torch.rand(n, 2, h, w, t) < 0.2).float()
    y = torch.randint(0, 6, (n, h, w))
    graph = models.from_config(cfg, 2, 6, ann=cfg.train.ann, quantized=cfg.train.qat).train()
    plain = PlainLIF(graph, leak=1 - cfg.model.voltage_decay, threshold=cfg.model.threshold).train()
    ours = throughput(graph, x, y, spec["steps"])
    ref = throughput(plain, x, y, spec["steps"])
    return dict(model=cfg.model.name, batch=n, height=h, width=w, time_steps=t, qat=cfg.train.qat,
                toolchain_samples_per_s=ours, plain_torch_samples_per_s=ref, ratio=ours / ref)


def _measure_predict(spec: dict) -> dict:
    """Windows/s of `toolchain predict` (emulator, class maps, overlays and GIF
    written) for the configured model, untrained (the emulator's work does not
    depend on the weights), on a recording stitched from generated 50 ms windows."""
    import torch

    import models
    from deploy.export import export
    from deploy.predict import predict

    from ..core.config import load_config
    from ..data.synth import synthesize

    cfg = load_config(spec["config"], spec.get("overrides", []))
    tmp = Path(spec["out"]).parent
    data = synthesize(tmp / "recording-data", 0, spec["windows"], seed=1, raw_events=True, progress=False)
    windows = [np.load(f) for f in sorted((data / "raw" / "test").glob("*.npz"))]
    events = {k: [] for k in "xytp"}
    for i, w in enumerate(windows):  # back to back, 50 ms apart
        for k in "xyp":
            events[k].append(w[k])
        events["t"].append(w["t"] - w["t_start"] + i * (w["t_end"] - w["t_start"]))
    recording = tmp / "recording.npz"
    np.savez(recording, **{k: np.concatenate(v) for k, v in events.items()}, width=windows[0]["width"],
             height=windows[0]["height"])
    in_channels = 6 if cfg.data.channels == "all" else 2
    torch.manual_seed(0)
    model = models.from_config(cfg, in_channels, 6, ann=False, quantized=True)
    net_path = tmp / "predict.net"
    export(model, net_path, time_steps=cfg.data.time_steps, encoding=cfg.data.encoding)
    # a first, untimed pass loads the compiled kernels (a recording of minutes would amortise it)
    predict(recording, tmp / "predict-warm-up", net=str(net_path), batch_size=spec["batch"], progress=False)
    summary = predict(recording, tmp / "predict", net=str(net_path), batch_size=spec["batch"], progress=False)
    return dict(model=cfg.model.name, height=cfg.data.height, width=cfg.data.width,
                time_steps=cfg.data.time_steps, batch=spec["batch"], windows=summary["windows"],
                window_ms=summary["window_ms"], seconds=summary["seconds"],
                windows_per_second=summary["windows_per_second"])


def _measure_evaluation(spec: dict) -> dict:
    from deploy.runner import evaluate

    from ..core.config import load_config

    cfg = load_config(None, spec.get("overrides", []))
    report, _ = evaluate(spec["net"], cfg.data, split="test", backend="emulator", progress=False,
                         frames=spec.get("frames"))
    return dict(frames=report["frames"], wall_s=report["wall_s"], steps_per_s=report["steps_per_s"],
                miou=report["miou"])


MEASURES = {"lava": _measure_lava, "lava_stock": _measure_lava_stock, "stock_conv": _measure_stock_conv,
            "emulator": _measure_emulator, "training": _measure_training, "evaluation": _measure_evaluation,
            "predict": _measure_predict}


def _child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    with PeakMemory() as mem:
        result = MEASURES[spec["kind"]](spec)
    result["peak_pss_mb"] = mem.peak / 2**20
    Path(spec["out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    from ..core.allocator import keep_freed_memory

    keep_freed_memory()  # before torch loads, as every `toolchain` command does
    _child_main(sys.argv[1])
