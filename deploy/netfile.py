"""The `.net` file: typed records, one writer, one validating reader.

HDF5 in netx's own layout. `layer/0` is the input (`type`, `shape` only, so
netx feeds the first synapse directly); every later `layer/<i>` is one group
of CUBA neurons with the synapse(s) feeding it:

    type                 conv | dense | pool | convT | add
    shape                output shape (C, H, W)
    sources              indices of the layers it reads (netx ignores it)
    neuron/{type, iDecay, vDecay, vThMant, refDelay, gradedSpike}
    conv:  weight (out, in/groups, kh, kw), inChannels, outChannels,
           kernelSize, stride, padding, dilation, groups   (slayer's fields)
    dense: weight (out, C*H*W of the source in C, H, W order), inFeatures,
           outFeatures
    pool:  weight (kh, kw): per-channel sum pool, kernelSize, stride, padding,
           dilation; windows past the input edge read zeros
    convT: weight (in, out/groups, kh, kw), inChannels, outChannels,
           kernelSize, stride, padding, dilation, groups
    add:   synapse/<k>/{type, ...the fields above}, one per entry of sources
    every synapse: optional delay (default 0): steps added to the connection's
           one, 0..62 (netx's field name; Lava's DelaySparse/DelayDense);
           optional weightExponent (default 0; version 3): the synapse's
           weights are weight x 2^weightExponent, 0..7 (Loihi's synapse
           weight exponent, Lava's weight_exp; netx ignores it)

Spatial pairs are (y, x), as slayer writes them. Weights are Loihi's 8-bit
synapse integers (slayer's weight x 64: even, -256..254), their mantissas where a
weightExponent scales them: in memory `Synapse.weight` holds the integers the
synapse adds, mantissa x 2^exponent, and the writer finds the exponent (the
smallest that fits, `weight_exponent`). Only a synapse Lava runs as its Conv
may have one: Lava's Dense and Sparse clip weights to 8 bits. A layer may
read one source through several synapses (their inputs add, as any two
connections into one Loihi neuron). The last layer is the
readout: a CUBA group whose neuron is the non-spiking integrator
(iDecay 4096, vDecay 0, vThMant at its 17-bit maximum), so a chain of
conv/dense layers is a network netx loads unchanged.

Root attributes: format, version, inputShape (C, H, W), encoding, timeSteps,
classNames, readoutRule, pipelineDepth (version 2).

Time (`toolchain.core.loihi`): a frame of T input steps runs T + D steps, D the
pipeline depth (connections plus delays on the longest input-to-readout path), and the
readout is the integrator's final voltage / (4096*T). Version 1 files (no
pipelineDepth) were written for frames of T + 1 steps and are still run that
way, so they give the answers they gave when written.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import h5py
import numpy as np

from toolchain.core import loihi
from toolchain.core.errors import ToolchainError
from toolchain.core.files import atomic_path
from toolchain.core.loihi import DECAY_SCALE, READOUT_NEURON, VTH_MAX, WEIGHT_MAX, WEIGHT_MIN

from .synapses import TYPES as SYNAPSE_TYPES
from .synapses import Synapse, check_shape, field_values, kind

Chw = tuple[int, int, int]  # (channels, height, width)

FORMAT = "toolchain-net"
VERSION = 2
EXPONENT_VERSION = 3  # the first with weightExponent; a net without one is still written as version 2
VERSIONS = (1, 2, 3)
LAYER_TYPES = SYNAPSE_TYPES + ("add",)
READOUT_RULE = ("final voltage of the readout integrator after T+D steps (D = pipelineDepth) / (4096*T), "
                "then bilinear upsampling to the input size; class = argmax")
MAX_NEURONS = 200_000_000  # far above paper size (about 10 M): anything larger is a corrupt file
MAX_WEIGHTS = 500_000_000
MAX_DELAY = 62  # Loihi 2 delays are 6-bit; netx clamps them to 62
MAX_WEIGHT_EXP = 7  # Loihi's synapse weight exponent is -8..7; a negative one would drop bits in Lava's integers


@dataclass
class Neuron:
    """Loihi CUBA parameters as integers (netx's names)."""

    iDecay: int
    vDecay: int
    vThMant: int
    refDelay: int = 1
    gradedSpike: bool = False

    @property
    def is_readout(self) -> bool:
        return (self.iDecay, self.vDecay, self.vThMant) == tuple(READOUT_NEURON.values())


@dataclass
class Layer:
    name: str
    type: str
    shape: Chw
    sources: list[int]
    synapses: list[Synapse]
    neuron: Neuron


@dataclass
class NetFile:
    input_shape: Chw
    time_steps: int
    layers: list[Layer]  # layer i of this list is `layer/<i+1>` in the file
    encoding: str = "poisson"
    class_names: list[str] = field(default_factory=list)
    readout_rule: str = READOUT_RULE
    version: int = VERSION

    @property
    def pipeline_depth(self) -> int:
        """D: a frame runs T + D steps (version 1 files: D = 1, their rule)."""
        return 1 if self.version == 1 else loihi.pipeline_depth([l.sources for l in self.layers],
                                                                [[s.delay for s in l.synapses] for l in self.layers])

    def frame_steps(self, time_steps: int | None = None) -> int:
        return loihi.frame_steps(self.time_steps if time_steps is None else time_steps, self.pipeline_depth)

    def spike_steps(self, time_steps: int | None = None) -> int:
        return loihi.spike_steps(self.time_steps if time_steps is None else time_steps, self.pipeline_depth)

    def shape_of(self, index: int) -> Chw:
        """Output shape of file layer `index` (0 is the input)."""
        return self.input_shape if index == 0 else self.layers[index - 1].shape

    @property
    def num_neurons(self) -> int:
        return int(sum(np.prod(l.shape) for l in self.layers))

    @property
    def num_synapses(self) -> int:
        """Synapses as Loihi stores them: shared conv kernels count once per position."""
        total = 0
        for layer in self.layers:
            for src, syn in zip(layer.sources, layer.synapses, strict=True):
                nz = int(np.count_nonzero(syn.weight))
                total += nz * kind(syn.type).positions(self.shape_of(src), layer.shape)
        return total


def weight_exponent(weight: np.ndarray) -> int | None:
    """The smallest e in 0..MAX_WEIGHT_EXP with every weight an even 8-bit
    mantissa times 2^e; None where there is none."""
    w = np.asarray(weight, dtype=np.int64)
    if not w.size:
        return 0
    for e in range(MAX_WEIGHT_EXP + 1):
        if w.min() >= WEIGHT_MIN << e and w.max() <= WEIGHT_MAX << e:
            return None if np.any(w % (2 << e)) else e
    return None


# ---------------------------------------------------------------- writing
def _put_str(g: h5py.Group, key: str, value: str) -> None:
    # netx reads `type` as a fixed-length byte string array, as slayer writes it
    g.create_dataset(key, (1,), f"S{max(10, len(value))}", [value.encode("ascii")])


def _write_synapse(g: h5py.Group, syn: Synapse) -> None:
    exp = weight_exponent(syn.weight) or 0  # validated: never None
    g.create_dataset("weight", data=(np.asarray(syn.weight) >> exp).astype(np.int16))
    if exp:
        g.create_dataset("weightExponent", data=exp)
    for key, value in field_values(syn).items():
        g.create_dataset(key, data=value)
    if syn.delay:  # optional, default 0: files without delays are unchanged
        g.create_dataset("delay", data=int(syn.delay))


def write(path: str | Path, net: NetFile) -> Path:
    """Write `net` atomically to `path` (validated first: a bad net is never written)."""
    path = Path(path)
    validate(net, str(path))
    # built in memory, written with one plain write: HDF5 writing straight to a
    # full disk crashes the process (segfault) instead of raising
    buf = io.BytesIO()
    with atomic_path(path) as tmp:
        with h5py.File(buf, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = net.version
            f.attrs["inputShape"] = np.array(net.input_shape)
            f.attrs["encoding"] = net.encoding
            f.attrs["timeSteps"] = net.time_steps
            f.attrs["classNames"] = json.dumps(list(net.class_names))
            f.attrs["readoutRule"] = net.readout_rule
            if net.version >= 2:
                f.attrs["pipelineDepth"] = net.pipeline_depth
            g0 = f.create_group("layer/0")
            _put_str(g0, "type", "input")
            g0.create_dataset("shape", data=np.array(net.input_shape))
            for i, layer in enumerate(net.layers, start=1):
                g = f.create_group(f"layer/{i}")
                _put_str(g, "type", layer.type)
                _put_str(g, "name", layer.name)
                g.create_dataset("shape", data=np.array(layer.shape))
                g.create_dataset("sources", data=np.array(layer.sources))
                n = layer.neuron
                _put_str(g, "neuron/type", "CUBA")
                for key in ("iDecay", "vDecay", "vThMant", "refDelay"):
                    g.create_dataset(f"neuron/{key}", data=int(getattr(n, key)))
                g.create_dataset("neuron/gradedSpike", data=bool(n.gradedSpike))
                if layer.type == "add":
                    for k, syn in enumerate(layer.synapses):
                        sg = g.create_group(f"synapse/{k}")
                        _put_str(sg, "type", syn.type)
                        _write_synapse(sg, syn)
                else:
                    _write_synapse(g, layer.synapses[0])
        tmp.write_bytes(buf.getbuffer())
    return path


# ---------------------------------------------------------------- reading
def _str(g: h5py.Group, key: str, where: str) -> str:
    v = _get(g, key, where)
    v = v[0] if np.ndim(v) else v
    return v.decode() if isinstance(v, bytes) else str(v)


def _get(g: h5py.Group, key: str, where: str, max_size: int = 64):
    if key not in g:
        raise ToolchainError(f"{where}: missing field '{key}'")
    try:
        d = g[key]
        if not isinstance(d, h5py.Dataset):
            raise ToolchainError(f"{where}: field '{key}' is a group, not a value")
        # the declared shape costs nothing to read; the data could be tens of GB
        if d.shape is None or int(np.prod(d.shape, dtype=np.float64)) > max_size:
            raise ToolchainError(f"{where}: field '{key}' has an absurd size {d.shape}")
        return d[()]
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ToolchainError(f"{where}: field '{key}' is unreadable ({e})") from e


def _int(g, key, where, lo=None, hi=None) -> int:
    a = np.asarray(_get(g, key, where))
    if a.size != 1 or not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
        raise ToolchainError(f"{where}: field '{key}' must be one integer, found {a.dtype} of shape {a.shape}")
    v = int(a.reshape(-1)[0])
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ToolchainError(f"{where}: field '{key}' = {v} is outside [{lo}, {hi}]")
    return v


def _pair(g, key, where) -> tuple[int, int]:
    v = np.asarray(_get(g, key, where)).reshape(-1)
    if v.size == 1:
        v = np.repeat(v, 2)
    if v.size != 2 or not np.issubdtype(v.dtype, np.integer):
        raise ToolchainError(f"{where}: field '{key}' must be one or two integers, found {v.dtype} of "
                             f"shape {v.shape}")
    return int(v[0]), int(v[1])


def _read_synapse(g: h5py.Group, typ: str, where: str) -> Synapse:
    w = np.asarray(_get(g, "weight", where, max_size=MAX_WEIGHTS))
    if not np.issubdtype(w.dtype, np.integer):
        raise ToolchainError(f"{where}: weight must be integers, found {w.dtype}")
    if w.size and (w.min() < WEIGHT_MIN or w.max() > WEIGHT_MAX or np.any(w % 2)):
        raise ToolchainError(f"{where}: weight must be even integers in [{WEIGHT_MIN}, {WEIGHT_MAX}] "
                             f"(Loihi 8-bit synapses), found range [{w.min()}, {w.max()}]")
    w = w.astype(np.int32) << (_int(g, "weightExponent", where, 0, MAX_WEIGHT_EXP) if "weightExponent" in g else 0)
    delay = _int(g, "delay", where, 0, MAX_DELAY) if "delay" in g else 0
    if typ == "dense":
        return Synapse("dense", w, delay=delay)
    syn = Synapse(typ, w, stride=_pair(g, "stride", where), padding=_pair(g, "padding", where),
                  dilation=_pair(g, "dilation", where),
                  groups=_int(g, "groups", where, 1) if typ != "pool" else 1, delay=delay)
    if _pair(g, "kernelSize", where) != syn.kernel and w.ndim >= 2:
        raise ToolchainError(f"{where}: kernelSize {_pair(g, 'kernelSize', where)} disagrees "
                             f"with weight shape {w.shape}")
    return syn


def read(path: str | Path) -> NetFile:
    """Read and fully validate a `.net` file; one ToolchainError names what is wrong."""
    try:
        return _read(Path(path))
    except ToolchainError as e:
        # Values quoted from a foreign file may hold newlines; the error stays one line.
        if "\n" in str(e):
            raise ToolchainError(" ".join(str(e).split())) from e
        raise


def _read(path: Path) -> NetFile:
    if not path.is_file():
        raise ToolchainError(f"{path}: no such .net file")
    try:
        f = h5py.File(path, "r")
    except (OSError, RuntimeError, ValueError) as e:
        raise ToolchainError(f"{path}: not a readable HDF5 .net file (truncated or corrupt: {e})") from e
    try:
        with f:
            net = _read_open(f, str(path))
    except OSError as e:  # a truncated file often opens, then fails on a dataset
        raise ToolchainError(f"{path}: truncated or corrupt ({e})") from e
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
        # attributes or fields of the wrong kind (an array where a scalar belongs, ...)
        raise ToolchainError(f"{path}: corrupt or foreign .net file ({type(e).__name__}: {e})".split("\n")[0]) from e
    validate(net, str(path))
    return net


def _int_attr(f: h5py.File, key: str, where: str) -> int:
    """A root attribute that must hold one whole number (numpy will stop
    reading a one-element array as a scalar, and refuses longer ones)."""
    a = np.asarray(f.attrs[key])
    if a.size != 1 or not np.issubdtype(a.dtype, np.number) or a.reshape(-1)[0] != int(a.reshape(-1)[0]):
        raise ToolchainError(f"{where}: root attribute '{key}' must be one whole number, found {a.dtype} "
                             f"of shape {a.shape}")
    return int(a.reshape(-1)[0])


def _read_open(f: h5py.File, where: str) -> NetFile:
    if not isinstance(f.attrs.get("format"), str) or f.attrs["format"] != FORMAT:
        raise ToolchainError(f"{where}: not a toolchain .net file (root attribute 'format' is "
                             f"{f.attrs.get('format')!r}, expected {FORMAT!r})")
    version = _int_attr(f, "version", where) if "version" in f.attrs else None
    if version not in VERSIONS:
        raise ToolchainError(f"{where}: format version {version} is not supported (this reader "
                             f"reads versions {', '.join(map(str, VERSIONS))}); re-export the model")
    for key in ("inputShape", "timeSteps", "encoding", "classNames", "readoutRule"):
        if key not in f.attrs:
            raise ToolchainError(f"{where}: missing root attribute '{key}'")
    try:
        class_names = json.loads(f.attrs["classNames"])
    except (TypeError, ValueError) as e:
        raise ToolchainError(f"{where}: root attribute 'classNames' is not a JSON list") from e
    if "layer" not in f:
        raise ToolchainError(f"{where}: missing group 'layer'")
    count = len(f["layer"])
    if sorted(f["layer"].keys(), key=lambda k: int(k) if k.isdigit() else -1) != [str(i) for i in range(count)]:
        raise ToolchainError(f"{where}: layers must be numbered 0..{count - 1}")
    g0 = f["layer/0"]
    if _str(g0, "type", f"{where}: layer 0") != "input":
        raise ToolchainError(f"{where}: layer 0 must be the input layer")
    layers = []
    for i in range(1, count):
        g = f[f"layer/{i}"]
        lw = f"{where}: layer {i}"
        typ = _str(g, "type", lw)
        if typ not in LAYER_TYPES:
            raise ToolchainError(f"{lw}: unknown layer type {typ!r} (known: {', '.join(LAYER_TYPES)})")
        name = _str(g, "name", lw) if "name" in g else f"layer{i}"
        lw = f"{where}: layer {i} ({name})"
        shape = tuple(int(s) for s in np.asarray(_get(g, "shape", lw)).reshape(-1))
        if len(shape) == 1:
            shape = (shape[0], 1, 1)
        sources = [int(s) for s in np.asarray(_get(g, "sources", lw) if "sources" in g else [i - 1]).reshape(-1)]
        if "neuron" not in g:
            raise ToolchainError(f"{lw}: missing group 'neuron'")
        ng = g["neuron"]
        if _str(ng, "type", lw + " neuron") not in ("CUBA", "LOIHI"):
            raise ToolchainError(f"{lw}: neuron type {_str(ng, 'type', lw)!r} is not CUBA")
        neuron = Neuron(iDecay=_int(ng, "iDecay", lw + " neuron", 0, DECAY_SCALE),
                        vDecay=_int(ng, "vDecay", lw + " neuron", 0, DECAY_SCALE),
                        vThMant=_int(ng, "vThMant", lw + " neuron", 0, VTH_MAX),
                        refDelay=_int(ng, "refDelay", lw + " neuron", 0),
                        gradedSpike=bool(_int(ng, "gradedSpike", lw + " neuron", 0, 1)))
        if typ == "add":
            if "synapse" not in g or len(g["synapse"]) != len(sources):
                raise ToolchainError(f"{lw}: an add layer needs one synapse/<k> group per source")
            synapses = []
            for k in range(len(sources)):
                sw = f"{lw} synapse {k}"
                if str(k) not in g["synapse"]:
                    raise ToolchainError(f"{sw}: missing")
                st = _str(g[f"synapse/{k}"], "type", sw)
                if st not in SYNAPSE_TYPES:
                    raise ToolchainError(f"{sw}: unknown synapse type {st!r}")
                synapses.append(_read_synapse(g[f"synapse/{k}"], st, sw))
        else:
            synapses = [_read_synapse(g, typ, lw)]
        # shapes of another length are read as they are and refused by validate()
        layers.append(Layer(name, typ, cast(Chw, shape), sources, synapses, neuron))
    shape_in = tuple(int(s) for s in np.asarray(f.attrs["inputShape"]).reshape(-1))
    net = NetFile(input_shape=cast(Chw, shape_in), time_steps=_int_attr(f, "timeSteps", where), layers=layers,
                  encoding=str(f.attrs["encoding"]), class_names=list(class_names),
                  readout_rule=str(f.attrs["readoutRule"]), version=version)
    if version >= 2:
        if "pipelineDepth" not in f.attrs:
            raise ToolchainError(f"{where}: missing root attribute 'pipelineDepth'")
        validate(net, where)  # the depth below is computed from valid sources only
        if _int_attr(f, "pipelineDepth", where) != net.pipeline_depth:
            raise ToolchainError(f"{where}: root attribute 'pipelineDepth' = {f.attrs['pipelineDepth']} "
                                 f"disagrees with the layers' longest path, {net.pipeline_depth}")
    return net


def _check_exponent(net: NetFile, syn: Synapse, where: str) -> None:
    """Weights past 8 bits: an exponent must say them, the version hold it and Lava's Conv run them."""
    w = np.asarray(syn.weight)
    if weight_exponent(w) is None:
        raise ToolchainError(f"{where}: weights in [{w.min()}, {w.max()}] are no even 8-bit mantissas times one "
                             f"2^0..2^{MAX_WEIGHT_EXP}")
    if net.version < EXPONENT_VERSION:
        raise ToolchainError(f"{where}: weights past 8 bits need a weight exponent, which format version "
                             f"{net.version} lacks (version {EXPONENT_VERSION} has it)")
    if syn.lava_process != "Conv":
        raise ToolchainError(f"{where}: weights past 8 bits run as Lava's {syn.lava_process}, which clips them "
                             "to 8 bits; only its Conv takes a weight exponent here")


def validate(net: NetFile, where: str = "net") -> None:
    """Everything the runners rely on, checked before anything runs."""
    if len(net.input_shape) != 3 or min(net.input_shape) < 1:
        raise ToolchainError(f"{where}: input shape {net.input_shape} must be (C, H, W), all >= 1")
    if not 1 <= net.time_steps <= 100_000:
        raise ToolchainError(f"{where}: time steps {net.time_steps} out of range")
    if not net.layers:
        raise ToolchainError(f"{where}: no layers")
    total = int(np.prod(net.input_shape))
    for i, layer in enumerate(net.layers, start=1):
        lw = f"{where}: layer {i} ({layer.name})"
        if layer.type not in LAYER_TYPES:
            raise ToolchainError(f"{lw}: unknown layer type {layer.type!r}")
        if len(layer.shape) != 3 or min(layer.shape) < 1:
            raise ToolchainError(f"{lw}: shape {layer.shape} must be (C, H, W), all >= 1")
        total += int(np.prod(layer.shape))
        if total > MAX_NEURONS:
            raise ToolchainError(f"{lw}: absurd size, more than {MAX_NEURONS} neurons in all")
        if not layer.sources or len(layer.sources) != len(layer.synapses):
            raise ToolchainError(f"{lw}: needs one synapse per source")
        if layer.type != "add" and (len(layer.synapses) != 1 or layer.synapses[0].type != layer.type):
            raise ToolchainError(f"{lw}: a {layer.type} layer holds exactly one {layer.type} synapse")
        for k, (src, syn) in enumerate(zip(layer.sources, layer.synapses, strict=True)):
            if not 0 <= src < i:
                raise ToolchainError(f"{lw}: source {src} is not an earlier layer")
            if syn.type not in SYNAPSE_TYPES:
                raise ToolchainError(f"{lw}: unknown synapse type {syn.type!r}")
            check_shape(syn, net.shape_of(src), layer.shape, f"{lw} synapse {k}")
            if not 0 <= int(syn.delay) <= MAX_DELAY:
                raise ToolchainError(f"{lw} synapse {k}: field 'delay' = {syn.delay} is outside [0, {MAX_DELAY}]")
            w = np.asarray(syn.weight)
            if w.size and (w.min() < WEIGHT_MIN or w.max() > WEIGHT_MAX):
                _check_exponent(net, syn, f"{lw} synapse {k}")
        n = layer.neuron
        if n.gradedSpike:
            raise ToolchainError(f"{lw}: graded spikes are not supported")
        if n.iDecay < 1:
            # Lava's du = iDecay - 1 is an unsigned 12-bit register
            raise ToolchainError(f"{lw}: neuron iDecay 0 (no current decay) has no Lava LIF equivalent")
        last = i == len(net.layers)
        if last and not n.is_readout:
            raise ToolchainError(f"{lw}: the last layer must be the readout integrator {READOUT_NEURON}")
    if len(net.class_names) not in (0, net.layers[-1].shape[0]):
        raise ToolchainError(f"{where}: {len(net.class_names)} class names for "
                             f"{net.layers[-1].shape[0]} readout channels")
