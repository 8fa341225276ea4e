"""Training checkpoints: everything needed to continue a run bit for bit.

Contents follow torchvision's reference trainer (model, optimizer,
lr_scheduler, epoch, config) plus the RNG states, the position inside an
interrupted epoch and the data set facts a reader needs to rebuild the model
(`models.load_checkpoint`). Written atomically: a crash mid-write leaves the
previous checkpoint in place.
"""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from .errors import ToolchainError
from .files import atomic_path

FORMAT = "toolchain-train-checkpoint"
VERSION = 1


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | Path, **entries) -> None:
    entries = {"format": FORMAT, "version": VERSION, "rng": rng_state(), **entries}
    # serialised in memory first: torch's zip writer turns a full disk into a
    # RuntimeError about stream positions, a plain write reports it as OSError
    buf = io.BytesIO()
    torch.save(entries, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


def load(path: str | Path) -> dict:
    """The one checkpoint reader: a readable file of this format and version, or a ToolchainError."""
    path = Path(path)
    if not path.is_file():
        raise ToolchainError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a damaged file raises many different kinds
        raise ToolchainError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})".splitlines()[0]) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ToolchainError(f"{path}: not a toolchain training checkpoint")
    if ckpt.get("version") != VERSION:
        raise ToolchainError(f"{path}: checkpoint version {ckpt.get('version')} (this toolchain reads {VERSION})")
    return ckpt
