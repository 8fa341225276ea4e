"""Keep freed CPU memory inside the process.

A CPU training step of a spiking net allocates and frees tensors of hundreds
of megabytes (batch x T frames of every layer). glibc serves blocks that large
with fresh `mmap`s, unmaps them and trims its heap on free, so every step
faults all their pages in again: at the paper-size Spiking DeepLab (64x64,
batch 8, T=8, 6 channels) 3.4 M page faults and 14 s of kernel time in a
warm-up step and one timed step, 0.45 samples/s. With mmap off, trimming and
padding raised before torch loads, 0.83 M faults, 5 s and 0.61 samples/s. The
process keeps its peak resident size, which each step reaches anyway. Set
before torch loads (`toolchain.cli.main`): the heap's layout then suits it
best; later calls still help. The emulator and the Lava processes `toolchain`
forks gain as well (docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

# the environment variables glibc reads for the same settings: a user's own choice wins
_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory for reuse; True when applied (Linux with
    glibc, and none of the MALLOC_* variables above set)."""
    if not sys.platform.startswith("linux") or any(v in os.environ for v in _ENV):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(M_TOP_PAD, 256 << 20))
