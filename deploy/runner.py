"""Evaluate a `.net` over a data split on the emulator or in Lava.

Frames are scored by the one evaluator (`deploy.evaluation`) with a `.net`
predictor. Lava runs are sharded across K worker processes (plain,
non-daemonic processes: Lava starts its own children); each runs the
evaluator over its shard and the parent sums their confusion matrices.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from toolchain.core.errors import ToolchainError
from toolchain.core.files import atomic_path, write_text
from toolchain.core.formatting import percent
from toolchain.core.metrics import SegmentationMetric

from . import Deployed, Result, load
from .evaluation import NetPredictor
from .evaluation import evaluate as score

# a fixed palette: class k gets PALETTE[k]; ignore (255) is black
PALETTE = np.array([[128, 64, 128], [70, 70, 70], [220, 220, 0], [107, 142, 35], [220, 20, 60],
                    [0, 0, 142], [119, 11, 32], [0, 60, 100], [250, 170, 30], [152, 251, 152]],
                   dtype=np.uint8)


def data_config_for(net: Deployed, data_cfg, root: str | None):
    """The data configuration that feeds this net: its shape, encoding and T win,
    and on DDD17 its input channels pick the channel set (2: histograms, 6: all)."""
    from toolchain.data.ddd17 import CHANNELS

    c, h, w = net.net.input_shape
    cfg = replace(data_cfg, height=h, width=w, time_steps=net.time_steps, encoding=net.net.encoding)
    if cfg.dataset == "ddd17":
        cfg = replace(cfg, channels=next((k for k, v in CHANNELS.items() if len(v) == c), cfg.channels))
    if root is not None:
        cfg = replace(cfg, root=str(root))
    if cfg.root is None and (h > cfg.synth_height or w > cfg.synth_width):
        # generated data at least the net's size: a smaller set scaled up would
        # blur away the thin objects a net at that size was trained to see
        cfg = replace(cfg, synth_height=max(h, cfg.synth_height), synth_width=max(w, cfg.synth_width))
    return cfg


def _lava_worker(net_path, data_cfg, split, indices, num_classes, out_file):
    from toolchain.data import build_dataset

    from .lava_compat import import_lava_runtime
    from .lava_host import LavaRunError
    # this shard and the Lava workers it forks form one process group, so that
    # the parent can end them all at once, even after this process was killed
    os.setpgid(0, 0)
    # A forked child must not enter the OpenMP pool it inherited from a parent
    # that already ran torch in parallel (it deadlocks, as in torch's DataLoader
    # workers); one thread per shard is the right share of the cores anyway.
    torch.set_num_threads(1)
    import_lava_runtime()  # the forked worker inherits the parent's start method
    p = NetPredictor(load(net_path), "lava")
    dataset = build_dataset(data_cfg, split)
    try:  # the whole shard in one batch: one Lava runtime per shard
        metric = score(p, dataset, indices, num_classes, batch_size=len(indices))
    except ToolchainError as e:
        what = f"{split} frame {indices[e.frame]}: {e.what}" if isinstance(e, LavaRunError) else str(e)
        Path(f"{out_file}.err").write_text(what)
        sys.exit(3)
    np.savez(out_file, voltage=np.concatenate(p.voltages), confusion=metric.confusion.numpy(),
             **{f"count_{k}": np.int64(v) for k, v in p.counts.items()})


def _run_shards(net_path, cfg, split: str, shards: list[list[int]], num_classes: int, tmp: str) -> None:
    """One Lava worker process per shard; the first to fail ends every other
    one and all their Lava processes, and its error names the frame."""
    ctx = mp.get_context("fork")  # Lava sets the start method itself in a spawned child
    procs = []
    try:
        for k, shard in enumerate(shards):
            p = ctx.Process(target=_lava_worker, args=(str(net_path), cfg, split, shard, num_classes,
                                                       f"{tmp}/{k}.npz"))
            p.start()
            procs.append(p)
            assert p.pid is not None  # started
            try:  # also here, so that the group exists before the child could fork
                os.setpgid(p.pid, p.pid)
            except (PermissionError, ProcessLookupError):  # the child did it first, or is gone
                pass
        running = dict(enumerate(procs))
        while running:
            # A shard's sentinel closes only when its Lava workers, which
            # inherit it, have exited too: a killed shard leaves it open, so
            # the exit codes are polled as well.
            mp.connection.wait([p.sentinel for p in running.values()], timeout=0.2)
            for k, p in list(running.items()):
                if p.exitcode is None:
                    continue
                del running[k]
                if p.exitcode != 0:
                    err = Path(f"{tmp}/{k}.npz.err")
                    if err.is_file():
                        what = err.read_text()
                    else:
                        frames = ", ".join(map(str, shards[k][:8])) + (", ..." if len(shards[k]) > 8 else "")
                        how = f"was killed by {signal.Signals(-p.exitcode).name}" if p.exitcode < 0 \
                            else f"exited with code {p.exitcode}"
                        what = f"the Lava worker running {split} frames {frames} {how}"
                    raise ToolchainError(f"{net_path}: {what}")
    finally:
        for p in procs:  # after a failure: the other shards and every Lava process of any shard
            if p.pid is None:  # never started
                continue
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.join()


def evaluate(net_path, data_cfg, *, split: str = "test", frames: int | None = None,
             backend: str = "emulator", workers: int = 1, batch_size: int = 16,
             out_dir: str | Path | None = None, json_path: str | Path | None = None,
             progress: bool = True) -> tuple[dict, Result]:
    """Run the net over a split: (report dict, Result with the readout and class maps).

    The report is also written to `json_path`, the class maps as PNGs to `out_dir`."""
    from toolchain.data import build_dataset

    deployed = load(net_path)
    cfg = data_config_for(deployed, data_cfg, None)
    dataset = build_dataset(cfg, split)
    n = len(dataset) if frames is None else min(frames, len(dataset))
    if n == 0:
        raise ToolchainError(f"{split}: the split has no frames")
    indices = list(range(n))
    num_classes = deployed.net.layers[-1].shape[0]
    label_hw = tuple(torch.as_tensor(dataset[0][1]).shape)
    if label_hw != tuple(deployed.net.input_shape[1:]):
        raise ToolchainError(f"{split}: labels {label_hw} differ from the net's input size")
    t0 = time.perf_counter()
    if backend == "lava" and workers > 1:
        shards = [indices[k::workers] for k in range(workers) if indices[k::workers]]
        metric = SegmentationMetric(num_classes)
        with tempfile.TemporaryDirectory() as tmp:
            _run_shards(net_path, cfg, split, shards, num_classes, tmp)
            order = np.concatenate([np.array(s) for s in shards])
            parts = [np.load(f"{tmp}/{k}.npz") for k in range(len(shards))]
            v = np.concatenate([p["voltage"] for p in parts])
            voltage = v[np.argsort(order)]
            for p in parts:
                metric.confusion += torch.from_numpy(p["confusion"])
            counts = {l.name: int(sum(p[f"count_{l.name}"].sum() for p in parts))
                      for l in deployed.net.layers[:-1]}
    else:
        p = NetPredictor(deployed, backend)
        metric = score(p, dataset, indices, num_classes, batch_size=batch_size if backend == "emulator" else 1,
                       progress=progress, desc=f"run ({backend})")
        voltage, counts = np.concatenate(p.voltages), p.counts
    wall = time.perf_counter() - t0
    result = deployed._result({}, {}, voltage, deployed.time_steps)
    scores = metric.compute()
    steps = n * deployed.net.frame_steps()
    names = deployed.net.class_names or [str(k) for k in range(num_classes)]
    report = dict(net=str(net_path), backend=backend, split=split, frames=n, time_steps=deployed.time_steps,
                  frame_steps=deployed.net.frame_steps(),
                  miou=scores["miou"], pixel_acc=scores["pixel_acc"],
                  iou_per_class=dict(zip(names, scores["iou_per_class"], strict=True)),
                  wall_s=wall, steps_per_s=steps / wall, frames_per_s=n / wall,
                  spikes_per_frame={k: v / n for k, v in counts.items()})
    if out_dir is not None:
        write_predictions(out_dir, result.class_map)
    if json_path is not None:
        write_text(json_path, json.dumps(report, indent=2))
    return report, result


def write_predictions(out_dir, class_map: np.ndarray) -> list[Path]:
    paths = []
    for i, cm in enumerate(class_map):
        path = Path(out_dir) / f"pred_{i:04d}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(PALETTE[cm % len(PALETTE)]).save(tmp, format="PNG")
        paths.append(path)
    return paths


def format_report(report: dict) -> str:
    lines = [f"{report['net']}  backend={report['backend']}  split={report['split']}  "
             f"frames={report['frames']}  T={report['time_steps']}",
             f"mIoU {percent(report['miou'])}%   pixel acc {percent(report['pixel_acc'])}%",
             "per-class IoU: " + ", ".join(f"{k} {percent(v, 1)}" for k, v in report["iou_per_class"].items()),
             f"wall {report['wall_s']:.2f} s   {report['steps_per_s']:.1f} steps/s   "
             f"{report['frames_per_s']:.2f} frames/s",
             "spikes per frame: " + ", ".join(f"{k} {v:.0f}" for k, v in report["spikes_per_frame"].items())]
    return "\n".join(lines)
