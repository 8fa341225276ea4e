"""Training checkpoints: everything needed to continue a run bit for bit.

Contents follow torchvision's reference trainer (model, optimizer,
lr_scheduler, epoch, config) plus the RNG states, the position inside an
interrupted epoch and the data set facts a reader needs to rebuild the model
(`models.load_checkpoint`). Written atomically: a crash mid-write leaves the
previous checkpoint in place.

A checkpoint holds tensors and plain values only (numbers, strings, None,
lists, tuples, dicts), the RNG states included, and is read with torch's
weights-only unpickler: a shared file cannot run code when it is opened.
Version 1 files (toolchain 0.1) hold numpy's RNG state as a pickled array;
`upgrade` rewrites them once, on request, through an allow-list that admits
those arrays and nothing that can run code.
"""
from __future__ import annotations

import io
import pickle
import random
import types
from collections import OrderedDict
from pathlib import Path
from typing import cast

import numpy as np
import torch

from .errors import ToolchainError
from .files import atomic_path

FORMAT = "toolchain-train-checkpoint"
VERSION = 2
UPGRADE = "toolchain upgrade-checkpoint"


def _plain_numpy_state(state: tuple) -> dict:
    """`np.random.get_state()`'s tuple as tensors and plain values (the key array as an int64 tensor)."""
    kind, keys, pos, has_gauss, gauss = state
    return {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}


def rng_state() -> dict:
    """Every generator's state as tensors and plain values."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": _plain_numpy_state(cast(tuple, np.random.get_state()))}  # the legacy form: a tuple
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | Path, **entries) -> None:
    _write(path, {"format": FORMAT, "version": VERSION, "rng": rng_state(), **entries})


_PLAIN = (int, float, bool, str, type(None))


def _refuse_objects(value, where: str) -> None:
    """A value torch's weights-only reader loads back: anything else would be
    written fine and then refused by `load`, leaving a run that cannot resume."""
    if type(value) in (dict, OrderedDict):
        for k, v in value.items():
            _refuse_objects(k, where)
            _refuse_objects(v, f"{where}.{k}")
    elif type(value) in (list, tuple):
        for i, v in enumerate(value):
            _refuse_objects(v, f"{where}[{i}]")
    elif not isinstance(value, (torch.Tensor, torch.Size)) and type(value) not in _PLAIN:
        # numpy's float64 is a float, a Counter a dict: both pickle as their own class
        raise TypeError(f"checkpoint entry {where} is a {type(value).__module__}.{type(value).__name__}; "
                        f"a checkpoint holds tensors and plain values only")


def _write(path: str | Path, entries: dict) -> None:
    _refuse_objects(entries, "checkpoint")
    # serialised in memory first: torch's zip writer turns a full disk into a
    # RuntimeError about stream positions, a plain write reports it as OSError
    buf = io.BytesIO()
    torch.save(entries, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


def load(path: str | Path) -> dict:
    """The one checkpoint reader: a readable file of this format and version, or a ToolchainError.

    Nothing in the file is executed: anything but tensors and plain values is refused."""
    path = Path(path)
    if not path.is_file():
        raise ToolchainError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ToolchainError(f"{path}: refused: it holds Python objects beyond tensors and plain values "
                             f"({_culprit(e)}), and opening it could run code. A checkpoint of toolchain 0.1 "
                             f"that you trust is rewritten once with `{UPGRADE} {path}`") from None
    except Exception as e:  # a damaged file raises many different kinds
        raise ToolchainError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})".splitlines()[0]) from e
    return _checked(path, ckpt, VERSION)


def _checked(path: Path, ckpt, version: int) -> dict:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ToolchainError(f"{path}: not a toolchain training checkpoint")
    if ckpt.get("version") != version:
        hint = f"; rewrite it with `{UPGRADE} {path}`" if ckpt.get("version") == 1 else ""
        raise ToolchainError(f"{path}: checkpoint version {ckpt.get('version')} (this toolchain reads {version}){hint}")
    return ckpt


def _culprit(e: pickle.UnpicklingError) -> str:
    """What torch's weights-only reader refused (a class, a global, an opcode), from its long message."""
    reason = str(e).split("WeightsUnpickler error: ")[-1].strip()
    return (reason.splitlines() or ["not weights only"])[0][:200]


# What a version 1 file may hold beyond torch's weights-only allow-list: numpy's
# RNG state, a uint32 array pickled through these (protocol 2 writes its bytes
# with _codecs.encode, which torch's later releases admit too). None runs code.
_V1_EXTRA = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
             ("numpy.core.multiarray", "scalar"), ("_codecs", "encode")}


class _V1Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        from torch._weights_only_unpickler import _get_allowed_globals

        if (module, name) in _V1_EXTRA or f"{module}.{name}" in _get_allowed_globals():
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a toolchain checkpoint")


def upgrade(path: str | Path, out: str | Path | None = None) -> Path:
    """Rewrite a version 1 checkpoint (toolchain 0.1) at `out` (default: in place)
    in the current format. Read through an allow-list of torch's tensor types
    and numpy's arrays: a file holding anything else is refused, never run."""
    path = Path(path)
    out = Path(out) if out is not None else path
    if not path.is_file():
        raise ToolchainError(f"{path}: checkpoint not found")
    allow_list = types.SimpleNamespace(Unpickler=_V1Unpickler, load=pickle.load, __name__="toolchain_v1_pickle")
    try:
        # weights_only=False only so that torch takes our unpickler, whose
        # find_class admits torch's weights-only globals and _V1_EXTRA, nothing else
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=allow_list)
    except pickle.UnpicklingError as e:
        raise ToolchainError(f"{path}: refused: {e}".splitlines()[0]) from None
    except Exception as e:
        raise ToolchainError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})".splitlines()[0]) from e
    ckpt = _checked(path, ckpt, 1)
    ckpt["rng"]["numpy"] = _plain_numpy_state(ckpt["rng"]["numpy"])
    ckpt["version"] = VERSION
    _write(out, ckpt)
    load(out)  # what was written reads back through the safe reader
    return out
