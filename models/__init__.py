"""Network definitions and the registry by name.

    build(name, in_channels, num_classes, input_hw, neuron, **kw) -> SpikingGraph
    names(), describe(name) -> parameter count
    predict(model, x, size) -> (N, K, H, W) class scores at label size
    upsample(readout, size) -> the readout at label size (the one host-side rule)
    load_checkpoint(path) -> (SpikingGraph, Config)

Presets: `spiking-deeplab` and `spiking-fcn` at paper size, the middle
`spiking-deeplab-small` (the paper's layers at 1/4 of its channel widths,
for the data's full resolution on a CPU), and `-tiny` variants that train
on two CPU cores in minutes; `spiking-deeplab-tiny-r3` reads out through a
3x3 classifier, `spiking-deeplab-tiny-decoder` adds a
DeepLabv3+-style decoder that reads out at the input's resolution. Append `-ann` to a name (or
pass `ann=True`) for the non-spiking twin of the same topology.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from toolchain.core import checkpoint
from toolchain.core.config import config_from_dict, load_config
from toolchain.core.errors import ToolchainError

from . import deeplab, fcn
from .ann import AnnGraph
from .blocks import firing_rates, fold_for_export, parameter_count, set_quantized
from .graph import NeuronParams, SpikingGraph

# name -> (builder, preset kwargs). The presets' weight scales are chosen so
# that spikes reach the readout at init (tests/test_models.py).
_REGISTRY: dict[str, tuple[Callable, dict]] = {
    "spiking-deeplab": (deeplab.spiking_deeplab, dict(layers=deeplab.PAPER, weight_scale=8.0)),
    "spiking-deeplab-small": (deeplab.spiking_deeplab, dict(layers=deeplab.PAPER, width=0.25, weight_scale=8.0)),
    "spiking-deeplab-tiny": (deeplab.spiking_deeplab, dict(layers=deeplab.TINY, weight_scale=8.0)),
    # r3: a 3x3 readout, each class score reading its neighbourhood of conv4
    "spiking-deeplab-tiny-r3": (deeplab.spiking_deeplab,
                                dict(layers=deeplab.TINY, readout_kernel=3, weight_scale=8.0)),
    "spiking-deeplab-tiny-decoder": (deeplab.spiking_deeplab,
                                     dict(layers=deeplab.TINY, decoder=deeplab.TINY_DECODER, weight_scale=8.0)),
    "spiking-fcn": (fcn.spiking_fcn, dict(**fcn.PAPER, weight_scale=8.0)),
    "spiking-fcn-tiny": (fcn.spiking_fcn, dict(**fcn.TINY, weight_scale=8.0)),
}

DESCRIBE_INPUT = dict(in_channels=2, num_classes=6, input_hw=(64, 64))


def names() -> list[str]:
    return list(_REGISTRY)


def build(name: str, in_channels: int, num_classes: int, input_hw: tuple[int, int],
          neuron: NeuronParams | None = None, *, ann: bool = False, **kw):
    """Build a registered network. `kw` overrides preset arguments
    (width, weight_scale, weight_norm, quantized, layer_thresholds, layers/blocks/head)."""
    if name.endswith("-ann"):
        name, ann = name[: -len("-ann")], True
    if name not in _REGISTRY:
        raise ToolchainError(f"model {name!r} is not registered; known: {', '.join(names())}")
    builder, preset = _REGISTRY[name]
    args = {**preset, **kw}
    graph = builder(in_channels, num_classes, tuple(input_hw), neuron or NeuronParams(), **args)
    graph.name = name
    return AnnGraph(graph) if ann else graph


def describe(name: str) -> int:
    """Parameter count of a preset for DDD17 (2 input channels, 6 classes)."""
    return parameter_count(build(name, **DESCRIBE_INPUT, weight_norm=False))


def upsample(readout: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, K, H', W') readout scores bilinearly upsampled to `size` (the paper's
    rule). It runs on the host after the spiking network, in training and after
    deployment alike: it is not part of the exported `.net`."""
    if tuple(readout.shape[-2:]) != tuple(size):
        readout = F.interpolate(readout, size=tuple(size), mode="bilinear", align_corners=False)
    return readout


def predict(model: torch.nn.Module, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """Class scores (N, K, H, W) at label size (`upsample` of the network's
    feature-resolution readout), and spikes per node."""
    readout, spikes = model(x)
    return upsample(readout, size), spikes


def from_config(cfg, in_channels: int, num_classes: int, *, ann: bool = False, quantized: bool = False):
    """Build the model a `Config` describes (neuron parameters from cfg.model, input
    size from cfg.data); the caller says whether it is the non-spiking twin and quantized."""
    m = cfg.model
    neuron = NeuronParams(threshold=m.threshold, current_decay=m.current_decay, voltage_decay=m.voltage_decay,
                          tau_grad=m.tau_grad, scale_grad=m.scale_grad)
    return build(m.name, in_channels, num_classes, (cfg.data.height, cfg.data.width), neuron,
                 ann=ann, quantized=quantized, layer_thresholds=dict(m.layer_thresholds))


MAX_CHANNELS = 4096  # input channels or classes; far above any event camera or label set


def load_checkpoint(path: str | Path, quantized: bool | None = None, data_root: str | None = None,
                    config_path: str | Path | None = None, overrides: tuple[str, ...] | list[str] = (),
                    entries: dict | None = None):
    """Rebuild the model stored in a training checkpoint: (model, Config).

    The model comes back in eval mode with its weight normalisation intact
    (call `fold_for_export` for plain weights) and quantized as trained
    unless `quantized` says otherwise. `data_root`, when given, replaces the
    config's `data.root` (the data is no longer where training read it). A
    YAML file and `section.field=value` overrides apply over the stored
    configuration before the model is built: `data.height`/`data.width` build
    the same weights at another input size (every preset is convolutional).
    `entries`: the file already read by `checkpoint.load`, for a caller that
    needs its other entries too (the file is read once)."""
    path = Path(path)
    ckpt = checkpoint.load(path) if entries is None else entries
    if not {"model", "config", "dataset"} <= set(ckpt):
        raise ToolchainError(f"{path}: not a toolchain training checkpoint (needs model, config, dataset entries)")
    ds = ckpt["dataset"]
    facts = {k: ds.get(k) if isinstance(ds, dict) else None for k in ("in_channels", "num_classes")}
    for key, value in facts.items():
        # checked before the model is built: an absurd count would allocate gigabytes of weights
        if not isinstance(value, int) or not 1 <= value <= MAX_CHANNELS:
            raise ToolchainError(f"{path}: dataset entry '{key}' = {value!r} is not a count in 1..{MAX_CHANNELS}")
    if not isinstance(ckpt["config"], dict):
        raise ToolchainError(f"{path}: config entry is not a mapping")
    cfg = config_from_dict(ckpt["config"])
    if config_path is not None or overrides:
        stored = cfg.model.name
        cfg = load_config(config_path, overrides, base=cfg)
        if cfg.model.name != stored:
            raise ToolchainError(f"{path}: holds {stored!r}; the configuration asks for {cfg.model.name!r}")
    if data_root is not None:
        cfg.data.root = data_root
    # how the stored model was trained decides what it is
    model = from_config(cfg, facts["in_channels"], facts["num_classes"], ann=cfg.train.ann, quantized=cfg.train.qat)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError, KeyError) as e:
        raise ToolchainError(f"{path}: weights do not fit model {cfg.model.name!r}: {e}".splitlines()[0]) from e
    if quantized is not None and isinstance(model, SpikingGraph):
        set_quantized(model, quantized)
    model.class_names = list(ds.get("class_names", []))
    return model.eval(), cfg


__all__ = ["build", "names", "describe", "predict", "upsample", "from_config", "load_checkpoint", "set_quantized",
           "fold_for_export", "firing_rates", "parameter_count", "NeuronParams", "SpikingGraph", "AnnGraph"]
