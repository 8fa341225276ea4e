"""Whether two backends' runs of one net agree, and whether that proves anything.

They agree when every output they both kept is equal on every frame they
both ran (`differences`); the agreement means something only when every
layer spikes on those frames (`silent_layers`), since two silent networks
agree whatever their arithmetic. The bench, the report and the demo's check
all judge runs by these two functions.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Outputs:
    """What one backend gave, each output per frame: a sequence by frame index
    or a mapping by frame name (class-map files). None: not kept by that run."""

    class_maps: Sequence | Mapping | None = None
    readout: Sequence | None = None
    counts: Mapping[str, Sequence] | None = None  # layer -> spikes per frame
    trains: Mapping[str, Sequence] | None = None  # layer -> spike train (or its digest) per frame


@dataclass(frozen=True)
class Difference:
    output: str  # "layers" (the two report different ones), "class maps", "readout", "spike counts", "spike trains"
    layer: str | None = None
    frame: int | str | None = None


def _differ(output: str, a, b, frames: int | None, layer: str | None = None) -> list[Difference]:
    short = []
    if isinstance(a, Mapping):  # named frames: those both wrote
        common: list = sorted(a.keys() & b.keys())
    else:  # indexed frames: the first `frames`, else as many as both ran
        n = min(len(a), len(b)) if frames is None else frames
        common = list(range(min(len(a), len(b), n)))
        if len(a[:n]) != len(b[:n]):  # one run lacks a frame the other has: they differ there
            short = [Difference(output, layer, len(common))]
    return [Difference(output, layer, f) for f in common
            if not np.array_equal(np.asarray(a[f]), np.asarray(b[f]))] + short


def differences(a: Outputs, b: Outputs, frames: int | None = None) -> list[Difference]:
    """Every difference between two runs, in the order they are checked: the
    layers they report, class maps, readout, then layer by layer (in `b`'s
    order) spike counts and spike trains. Empty when they agree."""
    layered = [(name, x, y) for name, x, y in (("spike counts", a.counts, b.counts), ("spike trains", a.trains, b.trains))
               if x is not None and y is not None]
    out = [Difference("layers")] if any(set(x) != set(y) for _, x, y in layered) else []
    for name, x, y in (("class maps", a.class_maps, b.class_maps), ("readout", a.readout, b.readout)):
        if x is not None and y is not None:
            out += _differ(name, x, y, frames)
    for layer in layered[0][2] if layered else ():
        out += [d for name, x, y in layered if layer in x and layer in y
                for d in _differ(name, x[layer], y[layer], frames, layer)]
    return out


def silent_layers(counts: Mapping[str, Sequence], frames: int | None = None) -> list[str]:
    """The layers without a spike on the first `frames` frames (all when None)."""
    return [layer for layer, c in counts.items() if not np.any(np.asarray(c[:frames]) != 0)]


def read_class_maps(folder: str | Path, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Class-map images by file name, as pixels: runs agree on what the maps
    show, not on how the file encoder wrote them."""
    from PIL import Image

    return {n: np.asarray(Image.open(Path(folder) / n)) for n in names}
