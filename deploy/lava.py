"""A `.net` as one Lava process: netx's interface for segmenters.

    net = deploy.lava.Network("model.net")        # a hierarchical Lava process
    source.s_out.connect(net.inp)                   # spikes (x, y, channel)
    net.out.connect(sink.a_in)                      # the readout's spikes (never any)
    net.v                                           # the readout's voltage: the answer

Like `lava.lib.dl.netx.hdf5.Network`, the process builds its children when it
is made, only from Lava's stock processes: one `LIFReset` per layer (the
readout is an integrator that never fires) fed by one connection process per
synapse, `Conv`, `Dense` or `Sparse` (`DelaySparse`/`DelayDense` for a
synapse with a delay, `deploy.synapses`). Its sub-process model exposes the
readout's voltage as the process's own Var `v` (a Lava alias).

Frames stream back to back, each T + D steps (`NetFile.frame_steps`): the
input of frame k fills steps kP .. kP+T-1 (P = T + D), zeros after. Each layer
restarts when frame k first reaches it: `LIFReset` zeroes u and v and then
integrates that step's input (`PyLifResetModelBitAcc.run_spk`), so a layer
whose inputs all arrive r steps into a frame (r = the longest path from the
input in connections plus delays) resets at step kP + r. From then on
everything it receives is frame k's, and before it frame k could not have
reached it, so its state is the state of frame k run alone; it carries frame
k until kP + r + P. Frame k's answer is the readout's voltage at step
kP + P - 1 (Lava's time step (k+1)P), and layer L's spikes of frame k are those
of steps kP + r_L .. kP + P - 2 (zeros before r_L, as in a frame run alone).

This needs every layer's inputs to arrive equally late: where paths of
different depth meet (an additive skip), the shorter path carries a synaptic
delay that makes up the difference (`models.blocks.GraphBuilder.upsample_add`
puts it there in training, and the `.net` records it). A net without that
alignment (`aligned` False) is exact for one frame only: a layer then resets
when its earliest input arrives, and a later frame would mix the previous
frame's tail of a deeper path into its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .lava_compat import import_lava_runtime

import_lava_runtime()  # before Lava's modules: see there

from lava.magma.core.decorator import implements, requires, tag  # noqa: E402
from lava.magma.core.model.sub.model import AbstractSubProcessModel  # noqa: E402
from lava.magma.core.process.ports.ports import InPort, OutPort  # noqa: E402
from lava.magma.core.process.process import AbstractProcess  # noqa: E402
from lava.magma.core.process.variable import Var  # noqa: E402
from lava.magma.core.resources import CPU  # noqa: E402
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol  # noqa: E402
from lava.proc.lif.process import LIFReset  # noqa: E402

from .netfile import NetFile, read  # noqa: E402
from .synapses import lava_shape  # noqa: E402


def arrivals(net: NetFile) -> tuple[list[int], bool]:
    """(r per layer, aligned): the step of a frame at which its input first
    reaches each layer (connections plus delays on the path), and whether
    every layer's inputs all arrive at that same step."""
    arrival, aligned = [0], True
    for layer in net.layers:
        steps = [arrival[s] + 1 + syn.delay for s, syn in zip(layer.sources, layer.synapses, strict=True)]
        arrival.append(min(steps))
        aligned &= max(steps) == min(steps)
    return arrival[1:], aligned


@dataclass(frozen=True)
class Connection:
    """One synapse as built: its Lava process, its source and target layer."""

    process: AbstractProcess
    source: int  # file layer index, 0 = the input
    target: int
    flat: bool  # the process reads and writes flat vectors


class Network(AbstractProcess):
    """A `.net` file (path or `NetFile`) as a Lava hierarchical process of stock processes.

    Ports: `inp` (input spikes, Lava's (x, y, channel) order) and `out` (the
    readout's spikes, as netx's `out`); Var `v`: the readout's voltage, whose
    value at a frame's last step / (4096*T) is the class score
    (`toolchain.core.loihi.readout_value`). `layers[name]` is each layer's `LIFReset`
    (its `s_out` can feed a sink), `offsets[name]` the step of a frame at which
    that layer starts it, `frame_steps` the steps each frame runs.
    `time_steps` defaults to the file's T.
    """

    def __init__(self, net: NetFile | str | Path, *, time_steps: int | None = None, name: str | None = None):
        net = net if isinstance(net, NetFile) else read(net)
        t_steps = int(time_steps or net.time_steps)
        out_shape = lava_shape(net.layers[-1].shape)
        super().__init__(time_steps=t_steps, name=name)
        self.netfile = net
        self.time_steps = t_steps
        self.frame_steps = net.frame_steps(t_steps)
        r, self.aligned = arrivals(net)
        self.offsets = {layer.name: ri for layer, ri in zip(net.layers, r, strict=True)}
        self.inp = InPort(shape=lava_shape(net.input_shape))
        self.out = OutPort(shape=out_shape)
        self.v = Var(shape=out_shape, init=0)
        self.layers: dict[str, LIFReset] = {}
        self.connections: list[Connection] = []
        lifs = []
        for i, (layer, ri) in enumerate(zip(net.layers, r, strict=True), start=1):
            n = layer.neuron
            # Lava counts steps from 1: step kP + r of frame k is time step kP + r + 1
            lif = LIFReset(shape=lava_shape(layer.shape), du=n.iDecay - 1, dv=n.vDecay, vth=n.vThMant,
                           bias_mant=0, bias_exp=0, reset_interval=self.frame_steps,
                           reset_offset=(ri + 1) % self.frame_steps, name=layer.name)
            self.layers[layer.name] = lif
            lifs.append(lif)
            for src, syn in zip(layer.sources, layer.synapses, strict=True):
                proc, flat = syn.lava(net.shape_of(src), layer.shape)
                self.connections.append(Connection(proc, src, i, flat))
                if src == 0:
                    (self.inp.flatten() if flat else self.inp).connect(proc.s_in)
                else:
                    out = lifs[src - 1].s_out
                    (out.flatten() if flat else out).connect(proc.s_in)
                (proc.a_out.reshape(lif.a_in.shape) if flat else proc.a_out).connect(lif.a_in)
        self.readout = lifs[-1]
        self.readout.s_out.connect(self.out)

    @property
    def processes(self) -> list[AbstractProcess]:
        """Every process inside, connections first."""
        return [c.process for c in self.connections] + list(self.layers.values())


@implements(proc=Network, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class NetworkModel(AbstractSubProcessModel):
    """The sub-processes `Network` built; its `v` is the readout's."""

    def __init__(self, proc: Network):
        for k, p in enumerate(proc.processes):
            setattr(self, f"proc{k}", p)
        proc.vars.v.alias(proc.readout.vars.v)


def run_config(*networks: Network, fast_conv: bool = True, **kwargs):
    """`Loihi2SimCfg(select_tag="fixed_pt")` with each network's models named
    up front: Lava's compiler then does not search this package's folder for
    them, and with `fast_conv` every `Conv` runs `lava_procs.PyConvModelBlas`
    (the same integers as Lava's `PyConvModelFixed`, far faster) and every
    `DelaySparse` `lava_procs.PyDelaySparseModelCached` (Lava's model, its
    matrix prepared once). Extra
    `exception_proc_model_map` entries merge in."""
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.conv.process import Conv
    from lava.proc.sparse.process import DelaySparse

    models = dict(kwargs.pop("exception_proc_model_map", {}))
    for net in networks:
        models[net] = NetworkModel
        if fast_conv:
            from .lava_procs import PyConvModelBlas, PyDelaySparseModelCached
            fast = {Conv: PyConvModelBlas, DelaySparse: PyDelaySparseModelCached}
            models.update({c.process: fast[type(c.process)] for c in net.connections if type(c.process) in fast})
    return Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=models, **kwargs)


def run_stock(net: NetFile | str | Path, frames: np.ndarray, *, on_frame=None) -> tuple[dict, np.ndarray]:
    """Frames (N, C, H, W, T) through `Network` with Lava as released: Lava's
    RingBuffer source feeds `inp`, one Lava `Extractor` per hidden layer hands
    each step's spikes to this process while Lava runs, the readout's `v` is
    read at each frame's last step; Lava's own process models (its `Conv`
    included) and channels at their defaults. The reference the fast runner
    (`lava_host.LavaNetwork`) and the emulator are held against.

    Returns per hidden layer its spikes (N, C, H, W, T+D-1), each frame's
    steps counted from the frame's own start (zeros before the layer's
    offset, as in a frame run alone), and the readout's voltage (N, C, H, W).
    `on_frame(k)` is called as frame k finishes."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
    from lava.proc.io.source import RingBuffer

    from .lava_compat import from_lava, to_lava

    frames = np.asarray(frames)
    n, t_steps = len(frames), frames.shape[-1]
    lnet = Network(net, time_steps=t_steps)
    period = lnet.frame_steps
    data = np.zeros(lava_shape(lnet.netfile.input_shape) + (n * period,), dtype=np.int32)
    for k in range(n):
        data[..., k * period:k * period + t_steps] = to_lava(frames[k])
    source = RingBuffer(data=data)
    source.s_out.connect(lnet.inp)
    hidden = list(lnet.layers.items())[:-1]  # the readout never fires: its answer is `v`
    taps = {}
    for name, lif in hidden:
        taps[name] = Extractor(shape=lif.s_out.shape)
        lif.s_out.connect(taps[name].in_port)
    spikes = {name: np.zeros((n,) + lif.s_out.shape + (period - 1,), dtype=bool) for name, lif in hidden}
    voltage = []
    # Lava's Extractor model carries no tag, so fixed_pt must be told which it is
    cfg = run_config(lnet, fast_conv=False, exception_proc_model_map={t: PyLoihiExtractorModel for t in taps.values()})
    try:
        for k in range(n):
            lnet.run(condition=RunSteps(num_steps=period, blocking=False), run_cfg=cfg)
            for step in range(period):
                for name, tap in taps.items():
                    got = tap.receive()
                    # the frame's last step belongs to the next frame's reset window
                    if lnet.offsets[name] <= step < period - 1:
                        spikes[name][k, ..., step] = got != 0
            lnet.wait()
            voltage.append(from_lava(lnet.v.get()).astype(np.int64))
            if on_frame is not None:
                on_frame(k)
    finally:
        lnet.stop()
    return {name: np.stack([from_lava(f) for f in s]) for name, s in spikes.items()}, np.stack(voltage)


# ------------------------------------------------------------ mapping report
_MODULE = {"LIFReset": "lif", "Conv": "conv", "Dense": "dense", "DelayDense": "dense", "Sparse": "sparse",
           "DelaySparse": "sparse"}


def ships_loihi2_model(process: str) -> bool:
    """Whether the installed Lava has a process model for `process` that runs on a
    Loihi 2 neuro core (open-source lava-nc ships CPU models only; the chip's
    models come with Intel's lava-loihi extension)."""
    import importlib
    import inspect

    from lava.magma.core.resources import NeuroCore

    found = False
    for name in ("models", "ncmodels"):
        try:
            module = importlib.import_module(f"lava.proc.{_MODULE[process]}.{name}")
        except ImportError:
            continue
        for cls in vars(module).values():
            if inspect.isclass(cls) and getattr(getattr(cls, "implements_process", None), "__name__", "") == process:
                found |= any(inspect.isclass(r) and issubclass(r, NeuroCore)
                             for r in getattr(cls, "required_resources", []))
    return found


def mapping_report(net: NetFile) -> list[dict]:
    """Per layer: the Lava processes `Network` builds, whether Lava ships a Loihi 2
    model for each, neurons, synapses (hardware connections, `synapses.connections`),
    the weights each process stores and their synaptic memory (8 bits a weight,
    6 more for a delay; no index overhead, so a lower bound), and a note where a
    layer stores far more than its kernel's weights."""
    from .synapses import connections

    rows = []
    for i, layer in enumerate(net.layers, start=1):
        procs, stored, unique, bits, notes = ["LIFReset"], 0, 0, 0, []
        for src, syn in zip(layer.sources, layer.synapses, strict=True):
            name = syn.lava_process
            procs.append(name)
            w = np.asarray(syn.weight)
            src_shape = net.shape_of(src)
            n_src, n_out = int(np.prod(src_shape)), int(np.prod(layer.shape))
            if name == "Conv":
                count = int(w.size)  # one kernel, shared by every position
            elif name in ("Dense", "DelayDense"):
                count = n_out * n_src  # every entry of the matrix
            else:
                count = connections(syn, src_shape, layer.shape)  # one entry per (input, output) pair
            unique += int(w.size)
            stored += count
            bits += count * (8 + (6 if syn.delay else 0))
            if name in ("Sparse", "DelaySparse") and count > 10 * w.size:
                # stored as a matrix by its kind, or else because of its delay
                what = syn.kind.label if syn.kind.lava_process == "Sparse" else f"delayed {syn.kind.label}"
                notes.append(f"{what} as {name}: {count:,} stored weights for a {w.size:,}-weight kernel "
                             f"({count // max(1, w.size)}x)")
            if syn.delay:
                notes.append(f"synapse from layer {src} delayed {syn.delay} steps")
        rows.append(dict(layer=layer.name, index=i, processes=procs,
                         loihi2_model={p: ships_loihi2_model(p) for p in procs},
                         neurons=int(np.prod(layer.shape)),
                         synapses=sum(connections(s, net.shape_of(src), layer.shape)
                                      for src, s in zip(layer.sources, layer.synapses, strict=True)),
                         stored_weights=stored, kernel_weights=unique, memory_bytes=bits // 8,
                         readout=i == len(net.layers), notes=notes))
    return rows


def format_mapping(rows: list[dict]) -> str:
    lines = [f"{'layer':<12}{'Lava processes':<30}{'Loihi 2 model':>14}{'neurons':>10}{'synapses':>13}"
             f"{'stored w':>12}{'memory':>11}"]
    for r in rows:
        ships = "yes" if all(r["loihi2_model"].values()) else "no"
        lines.append(f"{r['layer']:<12}{' + '.join(r['processes']):<30}{ships:>14}{r['neurons']:>10,}"
                     f"{r['synapses']:>13,}{r['stored_weights']:>12,}{r['memory_bytes'] / 1024:>8.1f} KiB")
        lines += [f"{'':<12}note: {n}" for n in r["notes"]]
    total = sum(r["memory_bytes"] for r in rows)
    lines.append(f"{'total':<12}{'':<30}{'':>14}{sum(r['neurons'] for r in rows):>10,}"
                 f"{sum(r['synapses'] for r in rows):>13,}{sum(r['stored_weights'] for r in rows):>12,}"
                 f"{total / 1024:>8.1f} KiB")
    if not any(all(r["loihi2_model"].values()) for r in rows):
        lines.append("Loihi 2 models: none installed; lava-nc ships CPU models only (the chip's come with "
                     "Intel's lava-loihi). Memory: 8-bit weights (+6-bit delays), no index overhead.")
    return "\n".join(lines)
