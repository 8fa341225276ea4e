"""PASCAL VOC 2012 segmentation in the VOCdevkit layout.

    ROOT/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    ROOT/VOCdevkit/VOC2012/SegmentationClass/<id>.png   palette PNG, 0..20, 255 ignore
    ROOT/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt

data.root may point at the folder holding VOCdevkit, at VOCdevkit, or at
VOC2012. The "test" split is VOC's val list (the test labels are not public).
RGB is scaled to [0, 1] and encoded like any frame.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..core.errors import ToolchainError
from .dataset import BadSampleError, SegmentationDataset
from .ddd17 import read_label

CLASS_NAMES_VOC = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
                   "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                   "train", "tvmonitor"]
LIST = {"train": "train", "test": "val"}


def voc_root(root: str | Path) -> Path:
    root = Path(root)
    for cand in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (cand / "ImageSets" / "Segmentation").is_dir():
            return cand
    raise ToolchainError(f"{root}: no VOC2012 folder with ImageSets/Segmentation found "
                         f"(expected VOCdevkit/VOC2012/{{JPEGImages,SegmentationClass,ImageSets}})")


class VOC(SegmentationDataset):
    class_names = CLASS_NAMES_VOC
    in_channels = 3

    def __init__(self, cfg, split: str, encode_input: bool = True):
        super().__init__(cfg, split, encode_input)
        self.root = voc_root(cfg.root)
        listing = self.root / "ImageSets" / "Segmentation" / f"{LIST[split]}.txt"
        if not listing.is_file():
            raise ToolchainError(f"{listing}: split list missing")
        self.files = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if not self.files:
            raise ToolchainError(f"{listing}: the split lists no images")
        if cfg.skip_bad:
            self._drop_bad(self.read)
        else:
            for name in self.files:
                for p in self.paths(name):
                    if not p.is_file():
                        raise BadSampleError(f"{p}: listed in {listing.name} but missing")


    def paths(self, name: str) -> tuple[Path, Path]:
        return self.root / "JPEGImages" / f"{name}.jpg", self.root / "SegmentationClass" / f"{name}.png"

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img_path, lab_path = self.paths(self.files[index])
        for p in (img_path, lab_path):
            if not p.is_file():
                raise BadSampleError(f"{p}: listed in the {self.split} split but missing")
        try:
            with Image.open(img_path) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as e:
            raise BadSampleError(f"{img_path}: truncated or unreadable image ({e})") from e
        lab = read_label(lab_path, num_classes=len(CLASS_NAMES_VOC))
        if lab.shape != rgb.shape[:2]:
            raise BadSampleError(f"{lab_path}: label size {lab.shape[0]}x{lab.shape[1]} differs from its image "
                                 f"{rgb.shape[0]}x{rgb.shape[1]}")
        return torch.from_numpy(rgb.transpose(2, 0, 1).copy()), torch.from_numpy(lab.astype(np.int64))
