"""A comparison of zeros proves nothing.

Every equivalence, parity and bench comparison in the suite calls
`assert_has_content` on what it compared: each compared layer must spike on
the compared frames (a silent layer agrees with any silent layer), and the
readout must be non-zero and not constant (an all-zero or flat readout agrees
with any other that is). Summing spikes over all layers is not enough: a net
whose first layer spikes and whose deeper layers are silent passes that.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


def _total(x) -> int:
    return int(np.asarray(x.cpu() if hasattr(x, "cpu") else x, dtype=np.int64).sum())


def layer_totals(counts: Mapping) -> dict[str, int]:
    """Spikes per layer from per-frame counts (N,) or spike trains (N, ..., T)."""
    return {name: _total(c) for name, c in counts.items()}


def has_content(counts: Mapping, voltage) -> bool:
    """Whether `assert_has_content` would pass (for hypothesis' `assume`)."""
    v = np.asarray(voltage.cpu() if hasattr(voltage, "cpu") else voltage)
    return all(n > 0 for n in layer_totals(counts).values()) and v.size > 0 and bool(v.min() != v.max()) \
        and bool(np.any(v != 0))


def assert_has_content(counts: Mapping, voltage, *, layers: Iterable[str] | None = None,
                       where: str = "") -> dict[str, int]:
    """Fail unless every layer in `counts` (and every name in `layers`, when
    given) spikes at least once on the compared frames, and the readout
    `voltage` is non-zero and not constant. Returns the spikes per layer."""
    prefix = f"{where}: " if where else ""
    totals = layer_totals(counts)
    missing = sorted(set(layers or ()) - set(totals))
    assert not missing, f"{prefix}layers {missing} were not compared"
    silent = [name for name, n in totals.items() if n == 0]
    assert not silent, f"{prefix}layers {silent} never spike: comparing them proves nothing ({totals})"
    v = np.asarray(voltage.cpu() if hasattr(voltage, "cpu") else voltage)
    assert v.size and np.any(v != 0), f"{prefix}the readout is all zero: comparing it proves nothing"
    assert v.min() != v.max(), f"{prefix}the readout is constant ({v.flat[0]}): comparing it proves nothing"
    print(f"content {where or ''}: spikes per layer {totals}; readout {v.min()}..{v.max()}")
    return totals


def assert_output_has_content(out, *, layers: Iterable[str] | None = None, where: str = "") -> dict[str, int]:
    """`assert_has_content` on anything with `counts` and `voltage` (emulator output, `deploy.Result`)."""
    return assert_has_content(out.counts, out.voltage, layers=layers, where=where)
