"""Typed configuration shared by every subcommand.

A run's configuration is the dataclass defaults (the paper's choices), merged
with an optional YAML file, merged with `section.field=value` overrides from
the command line. The resolved result is saved next to every output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import cast

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ToolchainError
from .files import write_text


@dataclass
class DataConfig:
    dataset: str = "ddd17"  # ddd17 | voc
    root: str | None = None  # None: the generated DDD17-format default set
    channels: str = "histograms"  # histograms (the paper's 2) | all (6)
    height: int = 64  # the paper resizes to 64x64
    width: int = 64
    resize: str = "resize"  # resize | crop (center crop, then resize)
    encoding: str = "poisson"  # poisson (the paper) | rate | direct
    time_steps: int = 20
    seed: int = 0
    skip_bad: bool = False
    # The generated default set, made on first use when root is None.
    synth_n_train: int = 256
    synth_n_test: int = 64
    synth_height: int = 100
    synth_width: int = 173


@dataclass
class ModelConfig:
    name: str = "spiking-deeplab-tiny"
    threshold: float = 1.0
    current_decay: float = 1.0  # the paper's LIF has no current state
    voltage_decay: float = 0.01  # leak 0.99 per step, as in the paper
    tau_grad: float = 1.0
    scale_grad: float = 1.0
    # the threshold of named spiking layers instead (model.layer_thresholds.conv2=12.5):
    # a conversion gives each layer its own, so that its 8-bit weights span the range
    layer_thresholds: dict[str, float] = field(default_factory=dict)


# what a neuron computes (not how its gradient is shaped): weights trained
# under one setting of these mean something else under another
NEURON_FIELDS = ("threshold", "layer_thresholds", "current_decay", "voltage_decay")


@dataclass
class TrainConfig:
    epochs: int = 60
    batch_size: int = 16
    optimizer: str = "sgd"  # sgd (the paper) | adamw
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"  # step (x0.1 at 50% and 80%) | cosine
    augment: bool = True  # horizontal flip and random crop
    seed: int = 0
    workers: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision, used on GPU only
    qat: bool = False  # quantization-aware training
    # auto: the fused CPU neuron on the CPU, slayer's CUDA kernels on a GPU;
    # slayer: slayer's reference path everywhere (bit-identical spikes, slower on the CPU)
    neuron: str = "auto"  # auto | fused | slayer
    ann: bool = False  # train the non-spiking twin
    # twin only: clip each layer's activations at this percentile of their
    # values on the training frames, measured when the run starts (from
    # train.init, a trained twin); a spiking neuron carries activations only up
    # to a rate of one spike a step, so a twin tuned under the clip converts
    # without losing what it kept in its largest activations (people, poles)
    ann_clip: float | None = None
    # the percentile for named layers instead (train.ann_clip_layers.conv1=99.9):
    # the first layer's clip costs the people most
    ann_clip_layers: dict[str, float] = field(default_factory=dict)
    # twin only: a `toolchain convert` checkpoint; each hidden layer's ReLU
    # becomes level x the spike rate that conversion's neurons reach (its
    # measured transfer), so the twin learns what its conversion computes
    # (start from train.init, the twin converted; convert the result again)
    ann_transfer: str | None = None
    # with ann_transfer: Gaussian noise on each activation while tuning, this
    # many times the spike rates' measured scatter about the curve (0: none;
    # 1: as measured), so the twin learns to bear what its conversion adds
    ann_transfer_noise: float = 0.0
    # none | inverse-sqrt: cross-entropy weights 1/sqrt(pixel frequency) from
    # the training labels, mean 1 over the classes present (thin classes count)
    class_weights: str = "none"
    # + dice_weight x soft Dice loss (0: cross-entropy alone); helps thin classes
    dice_weight: float = 0.0
    # label-boundary pixels weigh 1 + boundary_weight in the cross-entropy (0: off);
    # thin objects are all boundary
    boundary_weight: float = 0.0
    # the loss sees the class scores x logit_scale: a converted net's readout
    # scores in smaller units than its twin's (`toolchain convert` measures the
    # factor); too flat a softmax makes the loss sharpen every score and the
    # thin classes go first
    logit_scale: float = 1.0
    # a training checkpoint whose model weights this run starts from (fine-tuning:
    # optimiser, schedule and epochs start afresh); the same model and data shapes
    init: str | None = None
    # a training checkpoint (typically the ANN twin) whose class scores this run
    # also learns to match: + distill_weight x the per-pixel KL divergence from
    # its softmax at distill_temperature (knowledge distillation); same data shapes
    teacher: str | None = None
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    # spiking runs, with a teacher tuned under its conversion's curves
    # (train.ann_transfer): + distill_layers x how far each hidden layer's
    # spike rates fall from the teacher's activations over its levels (squared
    # error over the teacher's, mean over the layers): every layer learns what
    # its twin computes, not only the scores
    distill_layers: float = 0.0
    # SynOps per frame to train under (counted as `toolchain energy` counts
    # them); above it the loss grows by synops_weight x the excess fraction
    synops_budget: float | None = None
    synops_weight: float = 1.0


@dataclass
class RunConfig:
    backend: str = "emulator"  # emulator | lava
    split: str = "test"
    frames: int | None = None  # None: the whole split
    workers: int = 1
    batch_size: int = 16


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _shipped_dir() -> Traversable:
    # package data beside this module: the same in a checkout and an installed wheel
    return resources.files("toolchain.core").joinpath("configs")


def shipped_configs() -> list[str]:
    """Names of the configurations shipped inside the package: the files of
    examples/, copied (tests/test_wheel.py keeps the two identical)."""
    return sorted(p.name for p in _shipped_dir().iterdir() if p.name.endswith(".yaml"))


def shipped_config(name: str) -> Path:
    """The file of a shipped configuration by name (`ddd17-tiny` or
    `ddd17-tiny.yaml`), found through importlib.resources."""
    name = name if name.endswith(".yaml") else f"{name}.yaml"
    if name not in shipped_configs():
        raise ToolchainError(f"{name}: no such shipped configuration (shipped: {', '.join(shipped_configs())})")
    # a wheel installs as plain files (never zipped: torch and Lava are not), so this is a path
    return Path(str(_shipped_dir().joinpath(name)))


def resolve_config_path(path: str | Path) -> Path:
    """`path` when it is a file; else, for a bare name or `examples/NAME.yaml`
    naming a shipped configuration, that configuration, so the documented
    `--config examples/ddd17-tiny.yaml` works outside a checkout too."""
    path = Path(path)
    if path.is_file():
        return path
    name = path.name if path.name.endswith(".yaml") else f"{path.name}.yaml"
    if path.parent.name in ("", "examples") and name in shipped_configs():
        return shipped_config(name)
    raise ToolchainError(f"{path}: config file not found "
                         f"(shipped configurations, by name: {', '.join(shipped_configs())})")


def load_config(path: str | Path | None = None, overrides: tuple[str, ...] | list[str] = (),
                base: Config | None = None) -> Config:
    """Defaults (or `base`, e.g. a checkpoint's configuration), then the YAML
    file at `path` (or the shipped configuration it names), then
    `section.field=value` overrides."""
    merged = OmegaConf.structured(base if base is not None else Config)
    try:
        if path is not None:
            path = resolve_config_path(path)
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ToolchainError(f"override {bad[0]!r} is not of the form section.field=value")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        where = f"{path}: " if path is not None else ""
        raise ToolchainError(f"{where}bad configuration: {e}".splitlines()[0]) from e
    return cast(Config, OmegaConf.to_object(merged))


def config_from_dict(d: dict) -> Config:
    """Rebuild a Config from its saved dict form (checkpoints, run folders)."""
    try:
        return cast(Config, OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), d)))
    except OmegaConfBaseException as e:
        raise ToolchainError(f"bad saved configuration: {e}".splitlines()[0]) from e


def to_dict(cfg: Config) -> dict:
    return cast(dict, OmegaConf.to_container(OmegaConf.structured(cfg)))


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved configuration beside an output."""
    path = Path(out_dir) / name
    write_text(path, to_yaml(cfg))
    return path
