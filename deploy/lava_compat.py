"""What meeting Lava takes, without importing Lava: the one conversion between
slayer's data order and Lava's, and a safe import of Lava's runtime."""
from __future__ import annotations

import numpy as np


def to_lava(x: np.ndarray) -> np.ndarray:
    """slayer (C, H, W[, T]) -> Lava (x, y, channel[, T]) = (W, H, C[, T]).

    The one place the two orders meet; `from_lava` is its inverse.
    """
    return np.ascontiguousarray(x.transpose((2, 1, 0) + tuple(range(3, x.ndim))))


def from_lava(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose((2, 1, 0) + tuple(range(3, x.ndim))))


def import_lava_runtime() -> None:
    """Import Lava's runtime safely: its module calls `set_start_method('fork')`
    on import and fails if anything in this process chose a start method first."""
    import multiprocessing as mp
    import sys

    name = "lava.magma.runtime.message_infrastructure.multiprocessing"
    if name not in sys.modules and mp.get_start_method(allow_none=True) is not None:
        mp.set_start_method(None, force=True)
    __import__(name)
