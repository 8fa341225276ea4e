"""ONNX export of a `SpikingGraph`: one time step with explicit state, or the
non-spiking twin as a plain feed-forward graph.

Step mode (`mode="step"`). Any ONNX runtime can step the network: the graph
maps (input spikes at step t, state at t-1) to (state at t). The state is,
for every spiking node `n`, `n.u` (synaptic current), `n.v` (membrane
voltage after reset) and `n.s` (the spikes the node emitted one step
earlier: slayer's one-step axon delay, which is what its consumers read at
this step), and `readout.acc`, the readout node's synaptic input summed so
far. Start from zeros; after T steps `readout.acc / T` is the network output
of `SpikingGraph.forward`. Output `X.next` is the next value of state `X`.

The CUBA step is slayer's fixed-point arithmetic
(`leaky_integrator._li_dynamics_fwd`) written in traceable ops: states are
integers in units of 1/4096 (slayer's `s_scale`), decays act as
`trunc(x * (4096 - decay) / 4096)`, and the input current is truncated to
that grid. The integer part runs in float64, where every product involved is
exact (< 2**53), so the ONNX graph reproduces slayer spike for spike; the
synapses run in float32 with the weights slayer uses in its forward pass
(after the synapse's `pre_hook_fx`, i.e. quantized when the model is).

ANN mode (`mode="ann"`): a `SpikingGraph` becomes its non-spiking twin (same
synapses, ReLU in place of each neuron, no delay, readout = synaptic input);
any other `torch.nn.Module` (a twin from `models/`) is exported as it is.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.weight_norm import WeightNorm
from lava.lib.dl import slayer

from models.graph import INPUT, Node, SpikingGraph
from toolchain.errors import ToolchainError
from toolchain.files import atomic_path

OPSET = 17
STATE_SCALE = 1 << 12  # slayer's s_scale = w_scale (64) * 64: one state unit is 1/4096
ACC = "readout.acc"
MODES = ("step", "ann")


# --- synapses, one time step (N, C, H, W) --------------------------------------------------

def synapse_weight(synapse: torch.nn.Module) -> torch.Tensor:
    """The weight slayer's forward pass uses: recomputed from weight
    normalisation (the stored `weight` is stale after loading g and v), then
    quantized by `pre_hook_fx` when set."""
    w = synapse.weight
    for hook in synapse._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            w = hook.compute_weight(synapse)
    w = w.detach()
    hook = getattr(synapse, "_pre_hook_fx", None)
    return (hook(w) if hook is not None else w).detach().clone().float()


class _ConvStep(torch.nn.Module):
    """slayer `Conv` / `Dense`: a Conv3d with a (kH, kW, 1) kernel, i.e. a 2-D conv per step."""

    def __init__(self, synapse: torch.nn.Conv3d):
        super().__init__()
        self.register_buffer("weight", synapse_weight(synapse)[..., 0])
        self.stride, self.padding = tuple(synapse.stride[:2]), tuple(synapse.padding[:2])
        self.dilation, self.groups = tuple(synapse.dilation[:2]), synapse.groups

    def forward(self, x):
        flat = x.dim() == 2  # Dense on (N, C) input
        if flat:
            x = x[:, :, None, None]
        z = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return z[:, :, 0, 0] if flat else z


class _ConvTransposeStep(torch.nn.Module):
    def __init__(self, synapse: torch.nn.ConvTranspose3d):
        super().__init__()
        self.register_buffer("weight", synapse_weight(synapse)[..., 0])
        self.stride, self.padding = tuple(synapse.stride[:2]), tuple(synapse.padding[:2])
        self.output_padding = tuple(synapse.output_padding[:2])
        self.dilation, self.groups = tuple(synapse.dilation[:2]), synapse.groups

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, None, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class _PoolStep(torch.nn.Module):
    """slayer `Pool`, reproduced with its exact layout: the input is padded by
    H % kH rows, channels and rows are folded into one axis and a single
    (kH, kW) kernel slides over it. With padding this mixes neighbouring
    channels at their borders, and the export must do the same to match."""

    def __init__(self, synapse: torch.nn.Conv3d):
        super().__init__()
        self.register_buffer("weight", synapse_weight(synapse)[..., 0])
        self.stride, self.padding = tuple(synapse.stride[:2]), tuple(synapse.padding[:2])
        self.dilation = tuple(synapse.dilation[:2])

    def forward(self, x):
        kh, kw = self.weight.shape[-2:]
        if x.shape[2] % kh:
            x = F.pad(x, (0, 0, 0, x.shape[2] % kh))
        if x.shape[3] % kw:
            x = F.pad(x, (0, x.shape[3] % kw))
        c, h, w = x.shape[1:]
        z = F.conv2d(x.reshape(-1, 1, c * h, w), self.weight, None, self.stride, self.padding,
                     self.dilation)
        return z.reshape(-1, c, z.shape[2] // c, z.shape[3])


class _UnpoolStep(torch.nn.Module):
    def __init__(self, synapse: torch.nn.ConvTranspose3d):
        super().__init__()
        self.register_buffer("weight", synapse_weight(synapse)[..., 0])
        self.stride, self.padding = tuple(synapse.stride[:2]), tuple(synapse.padding[:2])
        self.output_padding = tuple(synapse.output_padding[:2])
        self.dilation = tuple(synapse.dilation[:2])

    def forward(self, x):
        c, h, w = x.shape[1:]
        z = F.conv_transpose2d(x.reshape(-1, 1, c * h, w), self.weight, None, self.stride,
                               self.padding, self.output_padding, 1, self.dilation)
        return z.reshape(-1, c, z.shape[2] // c, z.shape[3])


# Exact types: a subclass may change the forward pass, so it must be added here explicitly.
SYNAPSE_STEPS: dict[type, Callable[[torch.nn.Module], torch.nn.Module]] = {
    slayer.synapse.Conv: _ConvStep,
    slayer.synapse.Dense: _ConvStep,
    slayer.synapse.Pool: _PoolStep,
    slayer.synapse.ConvTranspose: _ConvTransposeStep,
    slayer.synapse.Unpool: _UnpoolStep,
}


def synapse_step(node: Node, k: int) -> torch.nn.Module:
    synapse = node.synapses[k]
    make = SYNAPSE_STEPS.get(type(synapse))
    if make is None:
        known = ", ".join(t.__name__ for t in SYNAPSE_STEPS)
        raise ToolchainError(f"node {node.name!r} synapse {k}: {type(synapse).__name__} has no "
                             f"ONNX form (known: {known})")
    if getattr(synapse, "bias", None) is not None:
        raise ToolchainError(f"node {node.name!r} synapse {k}: synapse bias is not supported")
    return make(synapse)


# --- the CUBA neuron, one step --------------------------------------------------------------

def _trunc(x: torch.Tensor) -> torch.Tensor:
    # ONNX has no Trunc; this is rounding toward zero, as slayer's int casts and right shifts.
    return torch.sign(x) * torch.floor(torch.abs(x))


def neuron_constants(node: Node) -> dict[str, float]:
    """Integer decays and thresholds of a node's slayer CUBA neuron."""
    n = node.neuron
    if not isinstance(n, slayer.neuron.cuba.Neuron):
        raise ToolchainError(f"node {node.name!r}: neuron {type(n).__name__} is not slayer's CUBA neuron")
    if n.norm is not None or n.graded_spike:
        raise ToolchainError(f"node {node.name!r}: neuron normalization / graded spikes have no "
                             "ONNX step form")
    if n.current_decay.numel() != 1 or n.voltage_decay.numel() != 1:
        raise ToolchainError(f"node {node.name!r}: per-channel decays are not supported "
                             "(use shared_param=True)")
    if n.s_scale != STATE_SCALE:
        raise ToolchainError(f"node {node.name!r}: neuron scale {n.w_scale} differs from slayer's "
                             f"default {1 << 6}")
    threshold = float(n.threshold) + float(n.threshold_eps)
    return {
        "current_decay": int(n.cx_current_decay),
        "voltage_decay": int(n.cx_voltage_decay),
        # slayer resets on the integer state and reports spikes on the float32 voltage;
        # both comparisons are kept so that the two can never disagree with slayer.
        "reset_level": threshold * STATE_SCALE,
        "spike_level": float(np.float32(threshold)),
    }


def cuba_step(z, u, v, *, current_decay: int, voltage_decay: int, reset_level: float,
              spike_level: float):
    """One step of slayer's CUBA neuron; returns (u, v after reset, spikes)."""
    s = float(STATE_SCALE)
    u_int = _trunc(u.double() * s * (s - current_decay) / s) + _trunc((z * s).double())
    u_next = (u_int / s).float()
    v_int = _trunc(v.double() * s * (s - voltage_decay) / s) + _trunc((u_next * s).double())
    spikes = ((v_int / s).float() >= spike_level).float()
    v_int = torch.where(v_int >= reset_level, torch.zeros_like(v_int), v_int)
    return u_next, (v_int / s).float(), spikes


# --- whole graphs ---------------------------------------------------------------------------

class _NodeStep(torch.nn.Module):
    def __init__(self, node: Node):
        super().__init__()
        self.name, self.sources = node.name, list(node.sources)
        self.synapses = torch.nn.ModuleList(synapse_step(node, k) for k in range(len(node.sources)))

    def current(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for synapse, source in zip(self.synapses, self.sources):
            z = synapse(inputs[source])
            total = z if total is None else total + z
        return total


class SpikingStep(torch.nn.Module):
    """forward(input, *state) -> next state, in `state_names` order."""

    def __init__(self, graph: SpikingGraph):
        super().__init__()
        self.nodes = torch.nn.ModuleList(_NodeStep(n) for n in graph.nodes)
        self.constants = [neuron_constants(n) for n in graph.nodes[:-1]]
        self.state_names = [f"{n.name}.{k}" for n in graph.nodes[:-1] for k in "uvs"] + [ACC]

    def forward(self, x, *state):
        prev = {name: t for name, t in zip(self.state_names, state)}
        # Every node reads its sources' spikes from the previous step (slayer's axon delay).
        spikes = {INPUT: x, **{n.name: prev[f"{n.name}.s"] for n in self.nodes[:-1]}}
        out = []
        for node, const in zip(self.nodes[:-1], self.constants):
            out += cuba_step(node.current(spikes), prev[f"{node.name}.u"], prev[f"{node.name}.v"],
                             **const)
        out.append(prev[ACC] + self.nodes[-1].current(spikes))
        return tuple(out)


class AnnTwin(torch.nn.Module):
    """The non-spiking twin of a SpikingGraph: ReLU for each neuron, no delays."""

    def __init__(self, graph: SpikingGraph):
        super().__init__()
        self.nodes = torch.nn.ModuleList(_NodeStep(n) for n in graph.nodes)

    def forward(self, x):
        acts = {INPUT: x}
        for node in self.nodes[:-1]:
            acts[node.name] = torch.relu(node.current(acts))
        return self.nodes[-1].current(acts)


class _ScoresOnly(torch.nn.Module):
    """Twins such as `models.AnnGraph` return (scores, activations); ONNX gets the scores."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def state_shapes(graph: SpikingGraph) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of every state tensor, found by running one step."""
    with torch.no_grad():
        twin = AnnTwin(graph)
        acts = {INPUT: torch.zeros(1, *graph.input_shape)}
        for node in twin.nodes:
            acts[node.name] = node.current(acts)
    shapes = {f"{n.name}.{k}": tuple(acts[n.name].shape[1:]) for n in graph.nodes[:-1] for k in "uvs"}
    shapes[ACC] = tuple(acts[graph.nodes[-1].name].shape[1:])
    return shapes


def _export(module: torch.nn.Module, args: tuple, tmp: Path, inputs: list[str], outputs: list[str],
            metadata: dict[str, str]) -> None:
    import onnx

    axes = {name: {0: "batch"} for name in inputs + outputs}
    with torch.no_grad(), warnings.catch_warnings():
        # Spatial sizes are fixed per model (slayer neurons fix their shape), so the
        # tracer's "shape used as a constant" warnings are expected.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, args, str(tmp), opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
    proto = onnx.load(str(tmp))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(tmp))


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, *, mode: str = "step",
                input_shape: tuple[int, int, int] | None = None) -> Path:
    """Write `model` as an ONNX file (opset 17, dynamic batch axis); returns the path.

    `mode="step"`: one time step of a SpikingGraph with explicit state (module
    docstring). `mode="ann"`: the non-spiking twin, input (N, C, H, W) to
    readout (N, K, H', W'). `input_shape` (C, H, W) is needed only for a plain
    torch module that lacks an `input_shape` attribute.
    """
    path = Path(path)
    if mode not in MODES:
        raise ToolchainError(f"{path}: unknown ONNX export mode {mode!r} (choose from {', '.join(MODES)})")
    model = model.eval()
    if isinstance(model, SpikingGraph):
        input_shape = model.input_shape
    else:
        input_shape = input_shape or getattr(model, "input_shape", None)
        if mode == "step":
            raise ToolchainError(f"{path}: the ONNX step graph needs a SpikingGraph, "
                                 f"got {type(model).__name__}")
        if input_shape is None:
            raise ToolchainError(f"{path}: {type(model).__name__} has no input_shape; pass input_shape=(C, H, W)")
    x = torch.zeros(2, *input_shape)
    meta = {"toolchain.mode": mode, "toolchain.input_shape": json.dumps(list(input_shape))}

    if mode == "ann":
        module = AnnTwin(model) if isinstance(model, SpikingGraph) else _ScoresOnly(model)
        args, inputs, outputs = (x,), [INPUT], ["readout"]
    else:
        module = SpikingStep(model)
        shapes = state_shapes(model)
        inputs = [INPUT] + module.state_names
        outputs = [f"{name}.next" for name in module.state_names]
        args = (x, *(torch.zeros(2, *shapes[n]) for n in module.state_names))
        meta["toolchain.state"] = json.dumps(module.state_names)
        meta["toolchain.protocol"] = ("feed zeros as state, then each step's input with the "
                                      "previous step's '.next' outputs; readout = readout.acc / T")
    with atomic_path(path) as tmp:
        _export(module.eval(), args, tmp, inputs, outputs, meta)
    return path


def export_onnx_files(model: torch.nn.Module, path: str | os.PathLike) -> list[Path]:
    """What `toolchain export --target onnx` writes: for a SpikingGraph its
    step graph at `path` and its non-spiking twin beside it (`NAME.ann.onnx`);
    for a non-spiking model its plain graph at `path`."""
    path = Path(path)
    if not isinstance(model, SpikingGraph):
        return [export_onnx(model, path, mode="ann")]
    twin = path.with_name(f"{path.stem}.ann{path.suffix or '.onnx'}")
    return [export_onnx(model, path, mode="step"), export_onnx(model, twin, mode="ann")]


def run_onnx_step(path: str | os.PathLike, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Step an exported step graph over x (N, C, H, W, T) with onnxruntime.

    Returns (readout (N, K, H', W'), spikes per node (N, C, H, W, T)), as
    `SpikingGraph.forward` does (each node's spikes delayed by one step).
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if names[0] != INPUT or not all(n.startswith("readout.") or n[-2:] in (".u", ".v", ".s")
                                    for n in names[1:]):
        raise ToolchainError(f"{path}: not a spiking step graph (inputs {names})")
    n = x.shape[0]
    state = {i.name: np.zeros((n, *i.shape[1:]), np.float32) for i in sess.get_inputs()[1:]}
    spikes = {name[:-2]: [] for name in state if name.endswith(".s")}
    for t in range(x.shape[-1]):
        for name in spikes:
            spikes[name].append(state[f"{name}.s"])  # what consumers read at step t
        outs = sess.run(None, {INPUT: np.ascontiguousarray(x[..., t], np.float32), **state})
        state = dict(zip(state, outs))
    return state[ACC] / x.shape[-1], {k: np.stack(v, axis=-1) for k, v in spikes.items()}
