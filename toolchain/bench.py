"""`toolchain bench`: Lava against the emulator on the same `.net` and frames,
training throughput, and the time to evaluate a whole test split.

Everything is measured in one run, so the ratios compare like with like on a
machine shared with other jobs. Each measurement runs in its own child
process (`python -m toolchain.bench SPEC.json`) so that its peak memory is its
own: the child samples the proportional set size (PSS: resident memory,
shared pages split between their sharers) of itself and all its descendants
(Lava runs every process of a graph in a worker process of its own).

Steps are frame-steps: one frame of T time steps is T+D Lava steps (D the
net's pipeline depth), for both backends.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .errors import ToolchainError
from .files import write_text

TINY_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "ddd17-tiny.yaml"
PAPER_MODELS = ("spiking-deeplab", "spiking-fcn")  # benched at DDD17's 200x346


# ------------------------------------------------------------ memory
def _pss(pid: str) -> int:
    """Proportional set size in bytes: shared pages (Lava's forked workers share
    the parent's libraries) count once in total, not once per process."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def descendants(root: int) -> list[int]:
    """Process ids of every descendant of process `root` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except OSError:
                continue  # gone meanwhile
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _tree_memory(root: int) -> int:
    """Memory in bytes of process `root` and all its descendants (PSS, from /proc)."""
    total = 0
    for pid in [root] + descendants(root):
        try:
            total += _pss(str(pid))
        except OSError:
            continue
    return total


class PeakMemory:
    """Samples the memory (PSS) of this process tree every `every` seconds."""

    def __init__(self, every: float = 0.2):
        self.every, self.peak = every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_memory(os.getpid()))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _tree_memory(os.getpid()))


# ------------------------------------------------------------ measurements (child side)
def _measure_lava(spec: dict) -> dict:
    from deploy import load
    from deploy.lava_graph import LavaNetwork

    net = load(spec["net"]).net
    frames = np.load(spec["frames"])[: spec["n_frames"]]
    t_steps = frames.shape[-1]
    t0 = time.perf_counter()
    with LavaNetwork(net, t_steps, keep_spikes=False, capacity=len(frames), stock_conv=spec["stock_conv"]) as lava:
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        runs = [lava.run(frames[:1])]  # compiles and starts the runtime
        first = time.perf_counter() - t0
        if len(frames) > 1:
            t0 = time.perf_counter()
            runs.append(lava.run(frames[1:]))
            steps_per_s = (len(frames) - 1) * net.frame_steps(t_steps) / (time.perf_counter() - t0)
        else:  # one frame only: its time includes compiling the graph
            steps_per_s = net.frame_steps(t_steps) / first
    counts = {k: np.concatenate([r[1][k] for r in runs]).tolist() for k in runs[0][1]}
    return dict(build_s=build, first_frame_s=first, frames=len(frames), steps_per_s=steps_per_s,
                includes_compile=len(frames) == 1, voltage=np.concatenate([r[2] for r in runs]).tolist(),
                counts=counts)


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
        for src, syn in zip(layer.sources, layer.synapses):
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


def _measure_emulator(spec: dict) -> dict:
    import torch

    from deploy import emulator, load

    net = load(spec["net"]).net
    frames = torch.as_tensor(np.load(spec["frames"]))
    t_steps = frames.shape[-1]
    batch = spec["batch"]
    t0 = time.perf_counter()
    emulator.run(net, frames[:1], device="cpu", keep_spikes=False)  # compiles the kernel (or loads its cache)
    warm = time.perf_counter() - t0
    n = min(len(frames), spec["n_frames"])
    t0 = time.perf_counter()
    outs = [emulator.run(net, frames[i:i + batch], device="cpu", keep_spikes=False) for i in range(0, n, batch)]
    wall = time.perf_counter() - t0
    counts = {k: torch.cat([o.counts[k] for o in outs]).tolist() for k in outs[0].counts}
    return dict(first_frame_s=warm, frames=n, batch=batch, steps_per_s=n * net.frame_steps(t_steps) / wall,
                voltage=torch.cat([o.voltage for o in outs]).tolist(), counts=counts)


def _measure_training(spec: dict) -> dict:
    """Samples/s of the training step (forward, loss, backward, optimiser step)
    of the configured model, and of the plain-PyTorch LIF twin of the same
    layers and weights (`toolchain.train.bench.PlainLIF`), on the same batch."""
    import torch

    import models

    from .config import load_config
    from .train.bench import PlainLIF, throughput

    cfg = load_config(spec["config"], spec.get("overrides", []))
    torch.manual_seed(0)
    n, (h, w), t = spec["batch"], (cfg.data.height, cfg.data.width), cfg.data.time_steps
    x = (torch.rand(n, 2, h, w, t) < 0.2).float()
    y = torch.randint(0, 6, (n, h, w))
    graph = models.from_config(cfg, 2, 6).train()
    plain = PlainLIF(graph, leak=1 - cfg.model.voltage_decay, threshold=cfg.model.threshold).train()
    ours = throughput(graph, x, y, spec["steps"])
    ref = throughput(plain, x, y, spec["steps"])
    return dict(model=cfg.model.name, batch=n, height=h, width=w, time_steps=t, qat=cfg.train.qat,
                toolchain_samples_per_s=ours, plain_torch_samples_per_s=ref, ratio=ours / ref)


def _measure_evaluation(spec: dict) -> dict:
    from deploy.runner import evaluate

    from .config import load_config

    cfg = load_config(None, spec.get("overrides", []))
    report, _ = evaluate(spec["net"], cfg.data, split="test", backend="emulator", progress=False,
                         frames=spec.get("frames"))
    return dict(frames=report["frames"], wall_s=report["wall_s"], steps_per_s=report["steps_per_s"],
                miou=report["miou"])


MEASURES = {"lava": _measure_lava, "stock_conv": _measure_stock_conv, "emulator": _measure_emulator, "training": _measure_training,
            "evaluation": _measure_evaluation}


def _child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    with PeakMemory() as mem:
        result = MEASURES[spec["kind"]](spec)
    result["peak_pss_mb"] = mem.peak / 2**20
    Path(spec["out"]).write_text(json.dumps(result))


# ------------------------------------------------------------ orchestration (parent side)
class _Timeout(ToolchainError):
    pass


def _measure(kind: str, tmp: Path, timeout: float | None = None, **spec) -> dict:
    """Run one measurement in a child process and return its result dict."""
    k = len(list(tmp.glob("spec*.json")))
    spec_path, out = tmp / f"spec{k}.json", tmp / f"out{k}.json"
    spec_path.write_text(json.dumps(dict(kind=kind, out=str(out), **spec)))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    # a session of its own, so that a timeout ends Lava's workers too
    child = subprocess.Popen([sys.executable, "-m", "toolchain.bench", str(spec_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        _, stderr = child.communicate(timeout=timeout)
        proc = subprocess.CompletedProcess(child.args, child.returncode, "", stderr)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        proc = None
    if proc is None:
        raise _Timeout(f"bench: the {kind} measurement ran past {timeout:.0f} s")
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise ToolchainError(f"bench: the {kind} measurement failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def _lava_row(name: str, tmp: Path, net_path: Path, frames_path: Path, *, n_frames: int, steps: int,
              stock_conv: bool, limit: float | None, progress) -> dict:
    backend = "lava-stock" if stock_conv else "lava"
    progress(f"{name}: {backend}, {n_frames} frame(s) of {steps} steps"
             + (f", at most {limit:.0f} s" if limit else ""))
    try:
        r = _measure("lava", tmp, timeout=limit, net=str(net_path), frames=str(frames_path), n_frames=n_frames,
                     stock_conv=stock_conv)
    except _Timeout:
        # what did not finish in the limit bounds Lava's speed from above
        r = dict(steps_per_s=n_frames * steps / limit, upper_bound=True, timed_out=True)
    return dict(r, backend=backend, batch=1)


def _stock_bound_row(name: str, tmp: Path, net_path: Path, *, progress) -> dict:
    progress(f"{name}: lava-stock, bound from the CPU time of Lava's conv per step")
    r = _measure("stock_conv", tmp, net=str(net_path), channels=2)
    # its build time and memory were not measured: nothing was built
    return dict(r, backend="lava-stock", batch=1, upper_bound=True, estimated=True, peak_pss_mb=float("nan"))


def _case(name: str, net, frames: np.ndarray, tmp: Path, *, lava_frames: int, emu_frames: int,
          batch: int, trained: bool, progress, lava_limit: float | None = None,
          stock_run: bool = True) -> dict:
    """Lava with Lava's own Conv model ("lava-stock", the reference as released: run,
    or with `stock_run=False` bounded from its conv work), Lava as `toolchain run
    --backend lava` runs it (BLAS Conv model), and the emulator at batch 1 and
    batched; ratios are to both Lava rows."""
    from deploy.netfile import write

    net_path, frames_path = tmp / f"{name}.net", tmp / f"{name}-frames.npy"
    write(net_path, net)
    np.save(frames_path, frames.astype(np.uint8))
    t_build = time.perf_counter()
    steps = frames.shape[-1] + 1
    stock = (_lava_row(name, tmp, net_path, frames_path, n_frames=lava_frames, steps=steps, stock_conv=True,
                       limit=None, progress=progress) if stock_run
             else _stock_bound_row(name, tmp, net_path, progress=progress))
    rows = [stock, _lava_row(name, tmp, net_path, frames_path, n_frames=lava_frames, steps=steps,
                             stock_conv=False, limit=lava_limit, progress=progress)]
    for r in rows:  # what a row that did not run lacks
        for key in ("build_s", "first_frame_s", "peak_pss_mb"):
            r.setdefault(key, float("nan"))
        r.setdefault("frames", 0)
        r.setdefault("voltage", [])
        r.setdefault("counts", {})
    progress(f"{name}: emulator, batch 1 and {batch}")
    for b, n in ((1, emu_frames), (batch, max(batch, emu_frames))):
        e = _measure("emulator", tmp, net=str(net_path), frames=str(frames_path), batch=b, n_frames=n)
        rows.append(dict(e, backend="emulator", build_s=0.0))
    # the same answers (readout and every layer's spike count per frame), or the
    # speeds compare different computations
    reference = rows[1] if rows[1]["frames"] else rows[0]
    for r in rows:
        k = min(r["frames"], reference["frames"])
        if r["voltage"][:k] != reference["voltage"][:k]:
            raise ToolchainError(f"bench: {name}: {r['backend']} and {reference['backend']} readouts differ")
        for layer, c in reference["counts"].items():
            if k and r["counts"][layer][:k] != c[:k]:
                raise ToolchainError(f"bench: {name}: {r['backend']} and {reference['backend']} spike counts "
                                     f"differ in layer {layer}")
    case_counts = {layer: c[:1] for layer, c in reference["counts"].items()}  # first frame's, for the record
    stock, ours = rows[0], rows[1]
    for r in rows:
        del r["voltage"], r["counts"]
        r["ratio_stock"] = r["steps_per_s"] / stock["steps_per_s"]
        r["ratio_lava"] = r["steps_per_s"] / ours["steps_per_s"]
        r["stock_ratio_is_bound"] = bool(stock.get("upper_bound")) and r is not stock
        r["lava_ratio_is_bound"] = bool(ours.get("upper_bound")) and r is not ours
    c, h, w = net.input_shape
    return dict(case=name, input=f"{c}x{h}x{w}", time_steps=int(frames.shape[-1]), neurons=net.num_neurons,
                synapses=net.num_synapses, trained=trained, rows=rows, lava_limit_s=lava_limit,
                first_frame_spikes=case_counts, wall_s=time.perf_counter() - t_build)


def _frames_from_split(data_cfg, n: int, seed: int = 0) -> np.ndarray:
    from .data import build_dataset

    ds = build_dataset(data_cfg, "test")
    if len(ds) == 0:
        raise ToolchainError(f"{data_cfg.root or 'generated data'}: the test split has no frames")
    return np.stack([np.asarray(ds[i % len(ds)][0]) for i in range(n)])


def run_bench(*, quick: bool = False, checkpoint: str | None = None, paper_steps: int = 16,
              lava_limit: float = 900.0, progress=print) -> dict:
    """Measure everything; returns the report dict (`format_table` prints it)."""
    import torch

    import models
    from deploy.export import build_netfile

    from .config import load_config
    from .data.synth import synthesize

    report = dict(quick=quick, cpus=os.cpu_count(), load_avg_start=os.getloadavg()[0], cases=[])
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        overrides: list[str] = []
        if quick:
            # a small generated set, a tiny net at 16x16: the table's shape in seconds
            synthesize(tmp / "data", 0, 4, 24, 40, 0, progress=False)
            overrides = [f"data.root={tmp / 'data'}", "data.height=16", "data.width=16", "data.time_steps=4"]
        if checkpoint is not None:
            model, cfg = models.load_checkpoint(checkpoint, quantized=False)
            cfg.data = load_config(None, overrides).data if quick else cfg.data
        else:
            cfg = load_config(TINY_CONFIG, overrides)
            model = models.from_config(cfg, 2, 6, quantized=False)
        trained = checkpoint is not None
        t_steps = cfg.data.time_steps
        net = build_netfile(model.eval(), time_steps=t_steps, encoding=cfg.data.encoding)
        data_overrides = [f"data.{k}={v}" for k, v in
                          dict(root=cfg.data.root, height=cfg.data.height, width=cfg.data.width,
                               time_steps=t_steps, encoding=cfg.data.encoding).items() if v is not None]
        eval_cfg = load_config(None, data_overrides)
        n_emu = 4 if quick else 16
        frames = _frames_from_split(eval_cfg.data, n_emu)
        name = f"{cfg.model.name} {cfg.data.height}x{cfg.data.width}"
        report["cases"].append(_case(name, net, frames, tmp, lava_frames=2 if quick else 3, emu_frames=n_emu,
                                     batch=n_emu, trained=trained, progress=progress))
        if not quick:
            paper_cfg = replace(eval_cfg.data, height=200, width=346, time_steps=paper_steps)
            paper_frames = _frames_from_split(paper_cfg, 4)
            for paper_name in PAPER_MODELS:
                torch.manual_seed(0)
                paper = models.build(paper_name, 2, 6, (200, 346), quantized=False)
                paper_net = build_netfile(paper.eval(), time_steps=paper_steps, encoding=paper_cfg.encoding)
                del paper
                report["cases"].append(_case(f"{paper_name} 200x346", paper_net, paper_frames, tmp,
                                             lava_frames=2, emu_frames=2, batch=2, trained=False,
                                             progress=progress, lava_limit=lava_limit, stock_run=False))
        progress("training throughput")
        train_overrides = list(overrides) + (["train.batch_size=2"] if quick else [])
        report["training"] = _measure("training", tmp, config=str(TINY_CONFIG), overrides=train_overrides,
                                      batch=2 if quick else 8, steps=1 if quick else 3)
        progress("evaluation of the test split (emulator)")
        net_path = tmp / "eval.net"
        from deploy.netfile import write
        write(net_path, net)
        report["evaluation"] = _measure("evaluation", tmp, net=str(net_path), overrides=data_overrides)
        report["evaluation"]["split"] = cfg.data.root or "generated default set"
    report["load_avg_end"] = os.getloadavg()[0]
    return report


def _ratio(x: float) -> str:
    return f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def format_table(report: dict) -> str:
    lines = [f"{'case':<30}{'backend':<12}{'batch':>6}{'steps/s':>10}{'x stock':>9}{'x lava':>9}{'build s':>9}"
             f"{'1st frame s':>12}{'peak PSS MB':>13}"]
    for case in report["cases"]:
        head = (f"{case['case']} T={case['time_steps']}" + ("" if case["trained"] else " (untrained)"))
        lines.append(f"{head}: {case['neurons']:,} neurons, {case['synapses']:,} synapses")
        for r in case["rows"]:
            speed = ("<" if r.get("upper_bound") else "") + f"{r['steps_per_s']:.3g}"
            ratios = [(">=" if r[f"{k}_ratio_is_bound"] else "") + _ratio(r[f"ratio_{k}"]) for k in ("stock", "lava")]
            if r["backend"] == "lava-stock" and r.get("upper_bound"):
                ratios[1] = "<" + ratios[1]
            lines.append(f"{'':<30}{r['backend']:<12}{r['batch']:>6}{speed:>10}{ratios[0]:>9}{ratios[1]:>9}"
                         f"{r['build_s']:>9.2f}{r['first_frame_s']:>12.2f}{r['peak_pss_mb']:>13.0f}")
        stock, lava = case["rows"][:2]
        if stock.get("estimated"):
            lines.append(f"{'':<30}(lava-stock: not run; Lava's conv alone needs {stock['conv_cpu_s_per_step']:.0f} "
                         f"CPU s per step here, over {report['cpus']} cores)")
        if lava.get("timed_out"):
            lines.append(f"{'':<30}(lava did not finish in {case['lava_limit_s']:.0f} s, graph build and "
                         f"compile included)")
        for r in (stock, lava):
            if r.get("includes_compile"):
                lines.append(f"{'':<30}({r['backend']} steps/s over one frame, compile included)")
    t = report["training"]
    lines.append(f"training step ({t['model']} {t['height']}x{t['width']} T={t['time_steps']}, batch {t['batch']}, "
                 f"qat={t['qat']}): toolchain {t['toolchain_samples_per_s']:.2f} samples/s, plain PyTorch "
                 f"{t['plain_torch_samples_per_s']:.2f} samples/s, ratio {t['ratio']:.2f}")
    e = report["evaluation"]
    lines.append(f"test split on the emulator: {e['frames']} frames in {e['wall_s']:.2f} s "
                 f"({e['steps_per_s']:.1f} steps/s), mIoU {100 * e['miou']:.2f}%")
    lines.append(f"load average {report['load_avg_start']:.1f} -> {report['load_avg_end']:.1f} "
                 f"on {report['cpus']} CPUs")
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> None:
    write_text(path, json.dumps(report, indent=2))


if __name__ == "__main__":
    _child_main(sys.argv[1])
