"""The check that makes a speed worth reporting: every backend gave the
reference's readout and spike trains, and those frames have content."""
from __future__ import annotations

import numpy as np

from deploy.agreement import Outputs, differences, silent_layers

from ..core.errors import ToolchainError


def _content(name: str, ref: dict, frames: int) -> dict[str, int]:
    """Spikes per layer over the compared frames, after checking that every layer
    spikes and the readout is neither zero nor constant there."""
    totals = {layer: int(sum(c[:frames])) for layer, c in ref["counts"].items()}
    silent = silent_layers(ref["counts"], frames)
    v = np.asarray(ref["voltage"][:frames])
    if silent or not np.any(v != 0) or v.min() == v.max():
        raise ToolchainError(f"bench: {name}: on the {frames} compared frame(s) "
                             + (f"layers {silent} never spike" if silent else "the readout is constant")
                             + f" ({ref['backend']}), so comparing the backends proves nothing; use more time "
                               f"steps (T above the pipeline depth) or a trained net")
    return totals


def _outputs(row: dict) -> Outputs:
    return Outputs(readout=row["voltage"], counts=row["counts"], trains=row["trains"])


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
        diff = differences(_outputs(r), _outputs(reference), frames=k)
        if diff:
            d, pair = diff[0], f"bench: {name}: {label} and {reference['backend']}"
            raise ToolchainError(f"{pair} report different layers" if d.output == "layers" else
                                 f"{pair} readouts differ" if d.output == "readout" else
                                 f"{pair} spike counts differ in layer {d.layer}" if d.output == "spike counts" else
                                 f"{pair} spike trains differ in layer {d.layer}, frame {d.frame}")
        compared[label] = k
    # content on the frames every row was compared on (frame 0 at least)
    k = min(compared.values())
    v = np.asarray(reference["voltage"][:k])
    return dict(reference=reference["backend"], frames_compared=compared,
                compared_spikes=_content(name, reference, k), compared_readout=[int(v.min()), int(v.max())])
