"""ONNX export of a `.net` file as one Loihi time step with explicit state,
computing exactly what the emulator (and so Lava) computes; and of the
non-spiking twin (`models.ann.AnnGraph`) as a plain feed-forward graph.

Step graph (`export_onnx(net, path)`). Inputs: `input`, the spikes of step t
(N, C, H, W) as float32 0/1, then the state after step t-1; outputs: `X.next`,
the state after step t, for every state `X` in the same order (metadata
`toolchain.state`):
- `input.s`, `<layer>.s` (float32 0/1): what the input and each spiking layer
  sent one step earlier. Lava's connection processes deliver at step t what
  they received at step t-1, so every synapse reads these, never this step's;
- `<layer>.s@j` (float32 0/1), only for a layer that feeds a synapse with a
  delay: what it sent j steps before `<layer>.s` (a delay-d synapse reads `@d`);
- `<layer>.u`, `<layer>.v` (int64, state units): each spiking layer's current
  and voltage;
- `<readout>.v` (int64): the readout integrator's voltage (metadata
  `toolchain.readout`). Its current is not state: with iDecay 4096 it is the
  step's input alone.
Protocol, as Lava runs a `.net` file: start from zeros, feed the input of
steps 0..T-1 and zeros after, T + D steps in all (D the pipeline depth,
metadata `toolchain.pipeline_depth`). `<layer>.s.next` after step t is the
layer's spikes at step t, `run(frames).spikes[layer][..., t]`; the readout
voltage after the last step is `run(frames).voltage`, and / (4096 T)
(`toolchain.core.loihi.readout_value`) the network output `run(frames).readout`.

Arithmetic: every synapse is `deploy.emulator.synapse_op` (float32
convolutions of integers, exact while partial sums stay below 2^24), rounded
to int64, Lava Conv's outputs clamped to signed 24 bits; every neuron is
`toolchain.core.loihi.cuba_step` on int64 tensors, whose ops (integer Div, Mod,
Clip, Where) onnxruntime runs on int64 as torch does.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from toolchain.core.errors import ToolchainError
from toolchain.core.files import atomic_path
from toolchain.core.loihi import DECAY_SCALE, U_MAX, cuba_step, frame_steps, spike_steps

from .emulator import synapse_op
from .netfile import NetFile

OPSET = 17
INPUT = "input"
PROTOCOL = ("start from zeros; run T+D steps (D = toolchain.pipeline_depth) feeding input spikes at "
            "steps 0..T-1 and zeros after, each step's '.next' outputs as the next step's state; '<layer>.s.next' after "
            "step t = the layer's spikes at step t; readout = readout voltage / (4096*T)")


class _NetStep(torch.nn.Module):
    """forward(input, *state) -> next state, in `state_names` order."""

    def __init__(self, net: NetFile):
        super().__init__()
        self.net = net
        self.names = [INPUT] + [layer.name for layer in net.layers]  # by .net layer index
        spiking = self.names[1:-1]
        self.readout = f"{self.names[-1]}.v"
        # a synapse with delay d reads what its source sent d steps before the last:
        # '<source>.s@j' holds the source's spikes of j steps before its '.s'
        self.history: dict[int, int] = {}
        for layer in net.layers:
            for src, syn in zip(layer.sources, layer.synapses, strict=True):
                self.history[src] = max(self.history.get(src, 0), int(syn.delay))
        delayed = [f"{self.names[src]}.s@{j}" for src, d in sorted(self.history.items()) for j in range(1, d + 1)]
        self.state_names = [f"{INPUT}.s"] + [f"{n}.{k}" for n in spiking for k in "uvs"] + delayed + [self.readout]

    def _input(self, layer, sent: dict[int, torch.Tensor], prev: dict) -> torch.Tensor:
        """The layer's summed synaptic input this step, int64 synapse units."""
        total = None
        for src, syn in zip(layer.sources, layer.synapses, strict=True):
            x = sent[src] if not syn.delay else prev[f"{self.names[src]}.s@{syn.delay}"]
            z = synapse_op(syn, x, layer.shape)  # rounded to int64
            if syn.clamps24:
                z = z.clamp(-U_MAX, U_MAX - 1)
            total = z if total is None else total + z
        assert total is not None  # every layer past the input has a source
        return total

    def forward(self, x, *state):
        prev = dict(zip(self.state_names, state, strict=True))
        sent = {i: prev[f"{name}.s"] for i, name in enumerate(self.names[:-1])}
        nxt = {f"{INPUT}.s": x}
        for layer in self.net.layers[:-1]:
            n, name = layer.neuron, layer.name
            u, v, s = cuba_step(self._input(layer, sent, prev), prev[f"{name}.u"], prev[f"{name}.v"],
                                i_decay=n.iDecay, v_decay=n.vDecay, v_th_mant=n.vThMant)
            nxt.update({f"{name}.u": u, f"{name}.v": v, f"{name}.s": s.to(x.dtype)})
        n, v = self.net.layers[-1].neuron, prev[self.readout]
        for src, d in self.history.items():
            name = self.names[src]
            for j in range(1, d + 1):
                nxt[f"{name}.s@{j}"] = prev[f"{name}.s"] if j == 1 else prev[f"{name}.s@{j - 1}"]
        _, nxt[self.readout], _ = cuba_step(self._input(self.net.layers[-1], sent, prev), torch.zeros_like(v), v,
                                            i_decay=n.iDecay, v_decay=n.vDecay, v_th_mant=n.vThMant)
        return tuple(nxt[name] for name in self.state_names)


def _check_net(net: NetFile, path: Path) -> None:
    if not isinstance(net, NetFile):
        raise ToolchainError(f"{path}: the ONNX step graph is built from a .net file (deploy.netfile.read "
                             f"or deploy.export.build_netfile), got {type(net).__name__}")
    names = [INPUT] + [layer.name for layer in net.layers]
    if len(set(names)) != len(names):
        raise ToolchainError(f"{path}: layer names must be unique and not {INPUT!r} (they name the "
                             f"ONNX state), got {names[1:]}")
    if net.layers[-1].neuron.iDecay != DECAY_SCALE:
        raise ToolchainError(f"{path}: the last layer ({net.layers[-1].name}) is not the readout integrator")
    for i, layer in enumerate(net.layers, start=1):
        for k, (src, syn) in enumerate(zip(layer.sources, layer.synapses, strict=True)):
            probe = synapse_op(syn, torch.zeros(1, *net.shape_of(src)), layer.shape, exact=False)
            if probe.dtype != torch.float32:
                # onnxruntime's Conv has no float64 kernel, and float32 would round
                raise ToolchainError(f"{path}: layer {i} ({layer.name}) synapse {k}: fan-in too large "
                                     "for exact float32 arithmetic (partial sums reach 2^22)")


def export_onnx(net: NetFile, path: str | os.PathLike) -> Path:
    """Write the step graph of `net` (module docstring) as ONNX, opset 17 with a
    dynamic batch axis; returns the path. Nothing is written on error."""
    path = Path(path)
    _check_net(net, path)
    module = _NetStep(net).eval()
    batch = 2
    state = {f"{INPUT}.s": torch.zeros(batch, *net.input_shape)}
    for layer in net.layers[:-1]:
        for k in "uv":
            state[f"{layer.name}.{k}"] = torch.zeros(batch, *layer.shape, dtype=torch.int64)
        state[f"{layer.name}.s"] = torch.zeros(batch, *layer.shape)
    for src, d in module.history.items():
        for j in range(1, d + 1):
            state[f"{module.names[src]}.s@{j}"] = torch.zeros(batch, *net.shape_of(src))
    state[module.readout] = torch.zeros(batch, *net.layers[-1].shape, dtype=torch.int64)
    args = (torch.zeros(batch, *net.input_shape), *(state[n] for n in module.state_names))
    meta = {"toolchain.mode": "step", "toolchain.input_shape": json.dumps(list(net.input_shape)),
            "toolchain.state": json.dumps(module.state_names), "toolchain.readout": module.readout,
            "toolchain.time_steps": str(net.time_steps), "toolchain.protocol": PROTOCOL,
            "toolchain.pipeline_depth": str(net.pipeline_depth),
            "toolchain.class_names": json.dumps(list(net.class_names))}
    with atomic_path(path) as tmp:
        _export(module, args, tmp, [INPUT] + module.state_names,
                [f"{n}.next" for n in module.state_names], meta)
    return path


class _ScoresOnly(torch.nn.Module):
    """`models.AnnGraph` returns (scores, activations); ONNX gets the scores."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def export_ann_onnx(model: torch.nn.Module, path: str | os.PathLike,
                    input_shape: tuple[int, int, int] | None = None) -> Path:
    """Write a non-spiking model (the twin `train --ann` trains) as a plain ONNX
    graph, input (N, C, H, W) -> scores (N, K, H', W'); returns the path.
    `input_shape` (C, H, W) is needed only for a model without `input_shape`."""
    from models.graph import SpikingGraph

    path = Path(path)
    if isinstance(model, SpikingGraph):
        raise ToolchainError(f"{path}: {type(model).__name__} is spiking; export its .net instead: "
                             "export_onnx(build_netfile(model, time_steps=T), path)")
    input_shape = input_shape or getattr(model, "input_shape", None)
    if input_shape is None:
        raise ToolchainError(f"{path}: {type(model).__name__} has no input_shape; pass input_shape=(C, H, W)")
    meta = {"toolchain.mode": "ann", "toolchain.input_shape": json.dumps(list(input_shape))}
    with atomic_path(path) as tmp:
        _export(_ScoresOnly(model.eval()), (torch.zeros(2, *input_shape),), tmp, [INPUT], ["scores"], meta)
    return path


def _export(module: torch.nn.Module, args: tuple, tmp: Path, inputs: list[str], outputs: list[str],
            metadata: dict[str, str]) -> None:
    import onnx

    axes = {name: {0: "batch"} for name in inputs + outputs}
    with torch.no_grad(), warnings.catch_warnings():
        # Spatial sizes are fixed per net, so the tracer's "shape used as a
        # constant" warnings are expected.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the pool's crop to the output size is a strided Slice torch cannot fold; onnxruntime runs it
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(module, args, str(tmp), opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
    proto = onnx.load(str(tmp))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(tmp))


_NUMPY = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def run_onnx_step(path: str | os.PathLike, frames) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run frames (N, C, H, W, T) of 0/1 spikes through a step graph with
    onnxruntime, by the protocol of the module docstring.

    Returns (readout voltage (N, K, H', W') int64, {layer: spikes (N, C, H, W, T)
    bool}), as `deploy.emulator.run` gives them (`.voltage`, `.spikes`);
    `toolchain.core.loihi.readout_value(voltage, T)` is the network output.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ToolchainError(f"{path}: no such ONNX file")
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ToolchainError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0]})") from e
    meta = sess.get_modelmeta().custom_metadata_map
    if meta.get("toolchain.mode") != "step":
        raise ToolchainError(f"{path}: not a spiking step graph (toolchain.mode is "
                             f"{meta.get('toolchain.mode')!r}, expected 'step')")
    names, readout = json.loads(meta["toolchain.state"]), meta["toolchain.readout"]
    frames = np.asarray(frames, dtype=np.float32)
    shape = tuple(json.loads(meta["toolchain.input_shape"]))
    if frames.ndim != 5 or frames.shape[1:4] != shape:
        raise ToolchainError(f"{path}: frames of shape {frames.shape}; expected (N, {', '.join(map(str, shape))}, T)")
    n, time_steps = frames.shape[0], frames.shape[-1]
    depth = int(meta.get("toolchain.pipeline_depth", 1))
    steps, kept = frame_steps(time_steps, depth), spike_steps(time_steps, depth)
    inputs = {i.name: i for i in sess.get_inputs()}
    state = {k: np.zeros((n, *inputs[k].shape[1:]), _NUMPY[inputs[k].type]) for k in names}
    layers = [k[:-2] for k in names[1:] if k.endswith(".s")]
    spikes = {k: np.zeros((n, *inputs[f"{k}.s"].shape[1:], kept), bool) for k in layers}
    for t in range(steps):
        x = frames[..., t] if t < time_steps else np.zeros_like(frames[..., 0])
        state = dict(zip(names, sess.run(None, {INPUT: np.ascontiguousarray(x), **state}), strict=True))
        if t < kept:
            for k in layers:
                spikes[k][..., t] = state[f"{k}.s"] > 0
    return state[readout], spikes
