"""`toolchain bench`'s cases: each measurement run in a child process, the rows
compared, the report assembled."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.config import shipped_config
from ..core.errors import ToolchainError
from .compare import compare_rows

TINY_CONFIG = shipped_config("ddd17-tiny.yaml")  # package data: the bench runs from an installed wheel
SMALL_CONFIG = shipped_config("ddd17-small.yaml")  # the middle preset, whose predict speed the bench reports
PAPER_MODELS = ("spiking-deeplab", "spiking-fcn")  # benched at DDD17's 200x346

class _Timeout(ToolchainError):
    def __init__(self, message: str, at: float = 0.0):
        super().__init__(message)
        self.at = at  # time.time() when the limit ran out


def _measure(kind: str, tmp: Path, timeout: float | None = None, **spec) -> dict:
    """Run one measurement in a child process and return its result dict."""
    k = len(list(tmp.glob("spec*.json")))
    spec_path, out = tmp / f"spec{k}.json", tmp / f"out{k}.json"
    spec_path.write_text(json.dumps(dict(kind=kind, out=str(out), **spec)))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    # a session of its own, so that a timeout ends Lava's workers too
    child = subprocess.Popen([sys.executable, "-m", "toolchain.bench.measure", str(spec_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                             cwd=Path(__file__).resolve().parents[2])
    try:
        _, stderr = child.communicate(timeout=timeout)
        proc = subprocess.CompletedProcess(child.args, child.returncode, "", stderr)
    except subprocess.TimeoutExpired:
        expired = time.time()
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        proc = None
    if proc is None:
        raise _Timeout(f"bench: the {kind} measurement ran past {timeout:.0f} s", expired)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise ToolchainError(f"bench: the {kind} measurement failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def _lava_row(name: str, tmp: Path, net_path: Path, frames_path: Path, *, n_frames: int, steps: int,
              stock: bool, limit: float | None, progress) -> dict:
    backend = "lava-stock" if stock else "lava"
    progress(f"{name}: {backend}, {n_frames} frame(s) of {steps} steps"
             + (f", at most {limit:.0f} s" if limit else ""))
    try:
        r = _measure("lava_stock" if stock else "lava", tmp, timeout=limit, net=str(net_path),
                     frames=str(frames_path), n_frames=n_frames)
    except _Timeout as e:
        partial = sorted(tmp.glob("out*.json.partial"), key=lambda p: p.stat().st_mtime)
        if not partial:
            raise ToolchainError(f"bench: {name}: {backend} did not finish even its first frame in {limit:.0f} s, "
                                 f"so it has nothing to compare; raise --lava-limit") from None
        # frame 0 finished and is compared; the timed frames had not finished
        # when the limit ran out, which bounds Lava's speed from above
        r = json.loads(partial[-1].read_text())
        r.update(frames=1, timed_frames=0, upper_bound=True, timed_out=True,
                 steps_per_s=(n_frames - 1) * steps / max(e.at - r.pop("timed_start"), 1e-9))
    return dict(r, backend=backend, batch=1)


def _stock_bound_row(name: str, tmp: Path, net_path: Path, *, progress) -> dict:
    progress(f"{name}: lava-stock, bound from the CPU time of Lava's conv per step (not run)")
    r = _measure("stock_conv", tmp, net=str(net_path), channels=2)
    # its build time and memory were not measured: nothing was built, nothing ran
    return dict(r, backend="lava-stock", batch=1, upper_bound=True, estimated=True, peak_pss_mb=float("nan"))

def _case(name: str, net, frames: np.ndarray, tmp: Path, *, trained: bool, progress,
          lava_limit: float | None = None, stock_run: bool = True) -> dict:
    """Lava as released ("lava-stock", `deploy.lava.run_stock`: run, or with
    `stock_run=False` bounded from its conv work), Lava as `toolchain run --backend lava` runs it
    (BLAS Conv model), and the emulator at batch 1 and batched, all on `frames`:
    frame 0 untimed (compiling), frames 1.. timed; ratios are to both Lava rows."""
    from deploy.netfile import write

    net_path, frames_path = tmp / f"{name}.net", tmp / f"{name}-frames.npy"
    write(net_path, net)
    np.save(frames_path, frames.astype(np.uint8))
    t_build = time.perf_counter()
    n, timed = len(frames), len(frames) - 1
    if timed < 1:
        raise ToolchainError(f"bench: {name}: needs a warm-up frame and at least one timed frame")
    steps = net.frame_steps(frames.shape[-1])
    stock = (_lava_row(name, tmp, net_path, frames_path, n_frames=n, steps=steps, stock=True,
                       limit=None, progress=progress) if stock_run
             else _stock_bound_row(name, tmp, net_path, progress=progress))
    rows = [stock, _lava_row(name, tmp, net_path, frames_path, n_frames=n, steps=steps,
                             stock=False, limit=lava_limit, progress=progress)]
    for r in rows:  # what a row that did not run lacks
        for key in ("build_s", "first_frame_s", "peak_pss_mb"):
            r.setdefault(key, float("nan"))
        r.setdefault("frames", 0)
        r.setdefault("timed_frames", 0)
    progress(f"{name}: emulator, batch 1 and {timed}, the same {n} frames")
    for b in (1, timed):
        e = _measure("emulator", tmp, net=str(net_path), frames=str(frames_path), batch=b, n_frames=n)
        rows.append(dict(e, backend="emulator", build_s=0.0))
    check = compare_rows(name, rows)
    stock, ours = rows[0], rows[1]
    for r in rows:
        for key in ("voltage", "counts", "trains"):
            r.pop(key, None)
        r["ratio_stock"] = r["steps_per_s"] / stock["steps_per_s"]
        r["ratio_lava"] = r["steps_per_s"] / ours["steps_per_s"]
        r["stock_ratio_is_bound"] = bool(stock.get("upper_bound")) and r is not stock
        r["lava_ratio_is_bound"] = bool(ours.get("upper_bound")) and r is not ours
    c, h, w = net.input_shape
    return dict(case=name, input=f"{c}x{h}x{w}", time_steps=int(frames.shape[-1]),
                pipeline_depth=int(net.pipeline_depth), frame_steps=steps, frames=n, timed_frames=timed,
                neurons=net.num_neurons, synapses=net.num_synapses, trained=trained, rows=rows,
                lava_limit_s=lava_limit, **check, wall_s=time.perf_counter() - t_build)


def _frames_from_split(data_cfg, n: int, seed: int = 0) -> np.ndarray:
    from ..data import build_dataset

    ds = build_dataset(data_cfg, "test")
    if len(ds) == 0:
        raise ToolchainError(f"{data_cfg.root or 'generated data'}: the test split has no frames")
    return np.stack([np.asarray(ds[i % len(ds)][0]) for i in range(n)])


def run_bench(*, quick: bool = False, checkpoint: str | None = None, paper_steps: int = 16,
              lava_limit: float = 900.0, paper: bool = True, progress=print) -> dict:
    """Measure everything (the paper-size cases unless `quick` or not `paper`);
    returns the report dict (`format_table` prints it)."""
    import torch

    import models
    from deploy.export import build_netfile

    from ..core.config import load_config
    from ..data.synth import synthesize

    report = dict(quick=quick, paper=paper and not quick, cpus=os.cpu_count(),
                  load_avg_start=os.getloadavg()[0], cases=[])
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        overrides: list[str] = []
        if quick:
            # a small generated set, a tiny net at 16x16: the table's shape in seconds
            synthesize(tmp / "data", 0, 5, 24, 40, 0, progress=False)
            # (the preset's T = 10, above its pipeline depth: every layer carries spikes)
            overrides = [f"data.root={tmp / 'data'}", "data.height=16", "data.width=16"]
        if checkpoint is not None:
            model, cfg = models.load_checkpoint(checkpoint, quantized=False)
            cfg.data = load_config(None, overrides).data if quick else cfg.data
        else:
            cfg = load_config(TINY_CONFIG, overrides)
            torch.manual_seed(0)  # the same untrained net in every run, so runs compare
            model = models.from_config(cfg, 2, 6, ann=cfg.train.ann)
        trained = checkpoint is not None
        t_steps = cfg.data.time_steps
        net = build_netfile(model.eval(), time_steps=t_steps, encoding=cfg.data.encoding)
        data_overrides = [f"data.{k}={v}" for k, v in
                          dict(root=cfg.data.root, height=cfg.data.height, width=cfg.data.width,
                               time_steps=t_steps, encoding=cfg.data.encoding).items() if v is not None]
        eval_cfg = load_config(None, data_overrides)
        # a warm-up frame, then the frames every backend times
        frames = _frames_from_split(eval_cfg.data, 1 + (4 if quick else 8))
        name = f"{cfg.model.name} {cfg.data.height}x{cfg.data.width}"
        report["cases"].append(_case(name, net, frames, tmp, trained=trained, progress=progress))
        if paper and not quick:
            paper_cfg = replace(eval_cfg.data, height=200, width=346, time_steps=paper_steps)
            paper_frames = _frames_from_split(paper_cfg, 3)
            for paper_name in PAPER_MODELS:
                torch.manual_seed(0)
                paper_model = models.build(paper_name, 2, 6, (200, 346), quantized=False)
                paper_net = build_netfile(paper_model.eval(), time_steps=paper_steps, encoding=paper_cfg.encoding)
                del paper_model
                report["cases"].append(_case(f"{paper_name} 200x346", paper_net, paper_frames, tmp, trained=False,
                                             progress=progress, lava_limit=lava_limit, stock_run=False))
        progress("training throughput")
        train_overrides = list(overrides) + (["train.batch_size=2"] if quick else [])
        report["training"] = _measure("training", tmp, config=str(TINY_CONFIG), overrides=train_overrides,
                                      batch=2 if quick else 8, steps=1 if quick else 8)
        progress("predict on a generated recording (the middle preset, emulator)")
        report["predict"] = _measure("predict", tmp, config=str(SMALL_CONFIG), overrides=list(overrides),
                                     windows=8 if quick else 48, batch=8)
        progress("evaluation of the test split (emulator)")
        net_path = tmp / "eval.net"
        from deploy.netfile import write
        write(net_path, net)
        report["evaluation"] = _measure("evaluation", tmp, net=str(net_path), overrides=data_overrides)
        report["evaluation"]["split"] = cfg.data.root or "generated default set"
    report["load_avg_end"] = os.getloadavg()[0]
    return report
