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

Every backend runs the same frames: frame 0 first, untimed (it compiles Lava's
graph and the emulator's kernel), then frames 1.. timed. Each run keeps every
layer's spike trains, and the bench stops unless every row gives the reference
row's readout and the same spike train in every layer on every frame both ran,
and unless those frames have content (every layer spiking, the readout neither
zero nor constant): a speed is only reported for a computation shown equal.
"""
from __future__ import annotations

import hashlib
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
    from deploy.lava_graph import LavaNetwork

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
    frames = torch.as_tensor(np.load(spec["frames"])[: spec["n_frames"]])
    t_steps = frames.shape[-1]
    batch = spec["batch"]

    def run(x):
        out = emulator.run(net, x, device="cpu", keep_spikes=True)
        return _answers({k: v.numpy() for k, v in out.spikes.items()}, out.counts, out.voltage)

    t0 = time.perf_counter()
    runs = [run(frames[:1])]  # compiles the kernel (or loads its cache)
    warm = time.perf_counter() - t0
    timed = frames[1:]
    if batch > 1:
        run(timed[:batch])  # untimed: torch's first convolution of a new shape plans it
    t0 = time.perf_counter()
    runs += [run(timed[i:i + batch]) for i in range(0, len(timed), batch)]
    wall = time.perf_counter() - t0
    return dict(_join(runs), first_frame_s=warm, frames=len(frames), timed_frames=len(timed), batch=batch,
                steps_per_s=len(timed) * net.frame_steps(t_steps) / wall)


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


MEASURES = {"lava": _measure_lava, "lava_stock": _measure_lava_stock, "stock_conv": _measure_stock_conv,
            "emulator": _measure_emulator, "training": _measure_training, "evaluation": _measure_evaluation}


def _child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    with PeakMemory() as mem:
        result = MEASURES[spec["kind"]](spec)
    result["peak_pss_mb"] = mem.peak / 2**20
    Path(spec["out"]).write_text(json.dumps(result))


# ------------------------------------------------------------ orchestration (parent side)
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
    child = subprocess.Popen([sys.executable, "-m", "toolchain.bench", str(spec_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                             cwd=Path(__file__).resolve().parents[1])
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


def _content(name: str, ref: dict, frames: int) -> dict[str, int]:
    """Spikes per layer over the compared frames, after checking that every layer
    spikes and the readout is neither zero nor constant there."""
    totals = {layer: int(sum(c[:frames])) for layer, c in ref["counts"].items()}
    silent = [layer for layer, n in totals.items() if n == 0]
    v = np.asarray(ref["voltage"][:frames])
    if silent or not np.any(v != 0) or v.min() == v.max():
        raise ToolchainError(f"bench: {name}: on the {frames} compared frame(s) "
                             + (f"layers {silent} never spike" if silent else "the readout is constant")
                             + f" ({ref['backend']}), so comparing the backends proves nothing; use more time "
                               f"steps (T above the pipeline depth) or a trained net")
    return totals


def compare_rows(name: str, rows: list[dict]) -> dict:
    """Every row that ran against the reference (Lava with the project's conv model,
    or Lava's own when that one did not run): the same readout and the same spike
    train in every layer on every frame both ran, and content on those frames.
    Returns {backend/batch: frames compared}, the compared spikes per layer and
    the compared readout's range."""
    ran = [r for r in rows if not r.get("estimated")]
    reference = next((r for r in ran if r["backend"] == "lava" and r["frames"]), None) \
        or next((r for r in ran if r["frames"]), None)
    if reference is None:
        raise ToolchainError(f"bench: {name}: no backend finished a frame, so nothing was compared")
    compared = {}
    for r in ran:
        label = f"{r['backend']} batch {r['batch']}"
        k = min(r["frames"], reference["frames"])
        if k == 0:
            raise ToolchainError(f"bench: {name}: {label} ran no frame that {reference['backend']} ran, "
                                 f"so its speed compares nothing")
        if set(r["trains"]) != set(reference["trains"]) or set(r["counts"]) != set(reference["counts"]):
            raise ToolchainError(f"bench: {name}: {label} and {reference['backend']} report different layers")
        if r["voltage"][:k] != reference["voltage"][:k]:
            raise ToolchainError(f"bench: {name}: {label} and {reference['backend']} readouts differ")
        for layer, c in reference["counts"].items():
            if r["counts"][layer][:k] != c[:k]:
                raise ToolchainError(f"bench: {name}: {label} and {reference['backend']} spike counts "
                                     f"differ in layer {layer}")
            for f, (a, b) in enumerate(zip(r["trains"][layer][:k], reference["trains"][layer][:k])):
                if a != b:
                    raise ToolchainError(f"bench: {name}: {label} and {reference['backend']} spike trains "
                                         f"differ in layer {layer}, frame {f}")
        compared[label] = k
    # content on the frames every row was compared on (frame 0 at least)
    k = min(compared.values())
    v = np.asarray(reference["voltage"][:k])
    return dict(reference=reference["backend"], frames_compared=compared,
                compared_spikes=_content(name, reference, k), compared_readout=[int(v.min()), int(v.max())])


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
    from .data import build_dataset

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

    from .config import load_config
    from .data.synth import synthesize

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
            model = models.from_config(cfg, 2, 6, quantized=False)
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
            lines.append(f"{'':<30}(lava-stock: not run; its steps/s is an upper bound: Lava's conv alone needs "
                         f"{stock['conv_cpu_s_per_step']:.0f} CPU s per step here, over {report['cpus']} cores)")
        else:
            lines.append(f"{'':<30}(lava-stock: Lava as released: its RingBuffer source, an Extractor per "
                         f"layer, its own models and default channels; build time is in 1st frame)")
        if lava.get("timed_out"):
            lines.append(f"{'':<30}(lava: only frame 0 finished in {case['lava_limit_s']:.0f} s; its steps/s is an "
                         f"upper bound)")
        spikes = case["compared_spikes"]
        others = [f"{k} {v}" for k, v in case["frames_compared"].items() if k != f"{case['reference']} batch 1"]
        lines.append(f"{'':<30}(frames 1..{case['timed_frames']} timed on every row; frames equal to "
                     f"{case['reference']}'s in the readout and every layer's spike trains: {', '.join(others)})")
        lines.append(f"{'':<30}(on those frames every layer spikes, {min(spikes.values()):,} to "
                     f"{max(spikes.values()):,} spikes per layer; readout {case['compared_readout'][0]:,} to "
                     f"{case['compared_readout'][1]:,})")
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
