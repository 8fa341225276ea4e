"""The segmentation data set base: file checks, resizing, caching, encoding.

A concrete data set (DDD17, VOC) lists its samples and reads one sample as a
normalised frame (C, h, w) in [0, 1] plus a label (h, w); this class resizes
them, caches the small result, and encodes the frame into T steps with a
random draw fixed by (seed, epoch, index).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..core.errors import ToolchainError
from .encode import ENCODINGS, encode

log = logging.getLogger("toolchain.data")

IGNORE = 255
CACHE_BYTES = 512 << 20  # keep resized frames in memory below this size


class BadSampleError(ToolchainError):
    """A sample file that cannot be used.

    A DataLoader worker re-raises an error in the main process as
    `type(e)(text with the worker's traceback)`; this constructor takes the
    original message back out of that text, so the user sees one clean line.
    """

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def resize(frame: torch.Tensor, label: torch.Tensor | None, height: int, width: int,
           mode: str = "resize") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frame (C, h, w) float -> (C, H, W): area averaging when shrinking,
    bilinear when growing; label (h, w) -> (H, W) by nearest neighbour.
    mode "crop" first cuts the centred window of the target aspect ratio."""
    if mode not in ("resize", "crop"):
        raise ToolchainError(f"data.resize: unknown mode {mode!r} (choose resize or crop)")
    h, w = frame.shape[-2:]
    if mode == "crop":
        if w * height > h * width:  # too wide
            cw = max(1, round(h * width / height))
            x0 = (w - cw) // 2
            frame = frame[..., x0:x0 + cw]
            label = label[..., x0:x0 + cw] if label is not None else None
        else:
            ch = max(1, round(w * height / width))
            y0 = (h - ch) // 2
            frame = frame[..., y0:y0 + ch, :]
            label = label[..., y0:y0 + ch, :] if label is not None else None
        h, w = frame.shape[-2:]
    if (h, w) != (height, width):
        shrink = height <= h and width <= w
        frame = F.interpolate(frame[None], size=(height, width),
                              mode="area" if shrink else "bilinear",
                              **({} if shrink else {"align_corners": False}))[0]
        if label is not None:
            label = F.interpolate(label[None, None].float(), size=(height, width), mode="nearest")[0, 0]
    if label is not None:
        label = label.long()
    return frame, label


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-channel min-max to [0, 1] (the paper's normalisation); a constant
    channel becomes all zeros rather than dividing by zero."""
    flat = x.reshape(x.shape[0], -1)
    lo = flat.min(1).values.view(-1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), torch.zeros_like(x))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]) >> 1


def encode_sample(frame: torch.Tensor, encoding: str, time_steps: int, seed: int, epoch: int,
                  index: int) -> torch.Tensor:
    """`frame` encoded into `time_steps` steps with the random draw fixed by
    (seed, epoch, index): the one seeded encoding, so that training, evaluation,
    the studies and `predict` draw the same spikes for the same frame."""
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, index))
    return encode(frame, encoding, time_steps, g)


def draw(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples `indices` of `dataset` stacked into a batch (x, y)."""
    xs, ys = zip(*(dataset[i] for i in indices), strict=True)
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.stack([torch.as_tensor(y) for y in ys])


class SegmentationDataset(Dataset):
    """Subclasses set class_names, in_channels, files and implement `read`."""

    class_names: list[str]
    in_channels: int

    def __init__(self, cfg, split: str, encode_input: bool = True):
        if split not in ("train", "test"):
            raise ToolchainError(f"split must be 'train' or 'test', got {split!r}")
        if cfg.encoding not in ENCODINGS:
            raise ToolchainError(f"data.encoding: unknown encoding {cfg.encoding!r} "
                                 f"(choose from {', '.join(ENCODINGS)})")
        if cfg.height < 1 or cfg.width < 1:
            raise ToolchainError(f"data.height/data.width must be positive, got {cfg.height}x{cfg.width}")
        self.cfg, self.split, self.encode_input = cfg, split, encode_input
        self.epoch = 0
        self.files: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cache_ok = True

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(frame (C, h, w) float32 in [0, 1] before resizing, label (h, w))."""
        raise NotImplementedError

    def _drop_bad(self, check: Callable[[int], None]) -> None:
        """With skip_bad, read every sample now and drop the unusable ones."""
        keep = []
        for i, name in enumerate(self.files):
            try:
                check(i)
                keep.append(i)
            except ToolchainError as e:
                self.skipped.append((name, str(e)))
                log.warning("skipping bad sample: %s", e)
        self._keep(keep)
        if self.skipped:
            log.warning("%s split: skipped %d bad sample(s), %d left", self.split, len(self.skipped), len(keep))
        if not self.files:
            raise ToolchainError(f"{self.split} split: no usable samples left after skipping bad ones")

    def _keep(self, indices: list[int]) -> None:
        self.files = [self.files[i] for i in indices]

    def __len__(self) -> int:
        return len(self.files)

    def frame(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The resized, normalised frame (C, H, W) and its label (H, W)."""
        if index in self._cache:
            return self._cache[index]
        frame, label = self.read(index)
        frame, label = resize(frame, label, self.cfg.height, self.cfg.width, self.cfg.resize)
        frame, label = self.normalise(frame).float().contiguous(), label.contiguous()
        if self._cache_ok:
            size = len(self) * frame.numel() * 4 * 2
            self._cache_ok = size <= CACHE_BYTES
            if self._cache_ok:
                self._cache[index] = (frame, label)
        return frame, label

    def normalise(self, frame: torch.Tensor) -> torch.Tensor:
        return frame.clamp(0, 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        frame, label = self.frame(index)
        if not self.encode_input:
            return frame.clone(), label.clone()
        return self.encode(frame, index), label.clone()

    def encode(self, frame: torch.Tensor, index: int) -> torch.Tensor:
        """`frame` (sample `index`'s, or a corrupted copy of it) encoded with the
        draw this set gives sample `index` at the current epoch."""
        return encode_sample(frame, self.cfg.encoding, self.cfg.time_steps, self.cfg.seed, self.epoch, index)
