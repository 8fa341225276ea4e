"""Data: DDD17 (Ev-SegNet layout) and PASCAL VOC readers, raw event
recordings, generated DDD17-format scenes, and input encoders.

    build_dataset(cfg.data, "train")  -> torch Dataset of (x (C, H, W, T), label (H, W))
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import ToolchainError
from .dataset import SegmentationDataset
from .ddd17 import CLASS_NAMES_DDD17, DDD17
from .encode import ENCODINGS, encode
from .synth import ensure_default_data

__all__ = ["build_dataset", "ensure_default_data", "encode", "CLASS_NAMES_DDD17", "ENCODINGS"]


def build_dataset(cfg, split: str, *, encode_input: bool = True) -> SegmentationDataset:
    """The data set `cfg.dataset` names, for split "train" or "test".

    Items are (x, label): x float32 (C, H, W, T) in slayer order, encoded with
    `cfg.encoding` (or the frame (C, H, W) in [0, 1] with encode_input=False),
    label int64 (H, W) with 255 = ignore. With cfg.root None, the generated
    DDD17-format default set is made (once) and used.
    """
    if cfg.dataset == "ddd17":
        root = Path(cfg.root) if cfg.root is not None else ensure_default_data(cfg)
        return DDD17(cfg, split, encode_input, root=root)
    if cfg.dataset == "voc":
        from .voc import VOC

        if cfg.root is None:
            raise ToolchainError("data.root: the voc data set needs data.root=PATH/VOCdevkit (not downloadable here)")
        return VOC(cfg, split, encode_input)
    raise ToolchainError(f"data.dataset: unknown data set {cfg.dataset!r} (choose ddd17 or voc)")
