"""DDD17 semantic segmentation in the Ev-SegNet release layout.

    ROOT/events/{train,test}/rec<seq>_export_<frame>.npy   float32 (H, W, 6)
    ROOT/labels/{train,test}/rec<seq>_export_<frame>.png   uint8 0..5, 255 ignore
    ROOT/images/{train,test}/...png                        optional, not read

Event channels: ON count, OFF count, mean and std of ON timestamps, mean and
std of OFF timestamps (50 ms before the frame). The network sees either the
two histograms ("histograms", as Kim et al.) or all six ("all"), each
histogram min-max normalised to [0, 1] per sample; timestamp channels are
clipped to [0, 1].
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..core.errors import ToolchainError
from .dataset import IGNORE, BadSampleError, SegmentationDataset, log, minmax

CLASS_NAMES_DDD17 = ["flat", "construction+sky", "object", "nature", "human", "vehicle"]
NAME = re.compile(r"^rec\d+_export_\d+$")
CHANNELS = {"histograms": [0, 1], "all": [0, 1, 2, 3, 4, 5]}
SPLITS = ("train", "test")


def scan_split(root: str | Path, split: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Paired sample ids (file stems) of one split in recording order, and
    (file, problem) for every events file without a label or the reverse."""
    root = Path(root)
    if not root.is_dir():
        raise ToolchainError(f"{root}: data folder not found")
    ev_dir, lb_dir = root / "events" / split, root / "labels" / split
    for d in (ev_dir, lb_dir):
        if not d.is_dir():
            raise ToolchainError(f"{d}: folder missing (expected the DDD17 layout "
                                 f"{{events,labels}}/{{train,test}}/rec*_export_*.{{npy,png}})")
    events = {p.stem for p in ev_dir.glob("*.npy") if NAME.match(p.stem)}
    labels = {p.stem for p in lb_dir.glob("*.png") if NAME.match(p.stem)}
    problems = [(str(ev_dir / f"{n}.npy"), f"{ev_dir / (n + '.npy')}: events without a label "
                 f"({lb_dir / (n + '.png')} missing)") for n in sorted(events - labels)]
    problems += [(str(lb_dir / f"{n}.png"), f"{lb_dir / (n + '.png')}: label without events "
                  f"({ev_dir / (n + '.npy')} missing)") for n in sorted(labels - events)]
    return sorted(events & labels, key=_order), problems


def list_split(root: str | Path, split: str) -> list[str]:
    """Sample ids of one split; any unpaired file is an error."""
    names, problems = scan_split(root, split)
    if problems:
        raise BadSampleError(problems[0][1])
    if not names:
        raise ToolchainError(f"{Path(root) / 'events' / split}: no rec*_export_*.npy samples in the {split} split")
    return names


def _order(name: str):
    seq, frame = re.findall(r"\d+", name)
    return int(seq), int(frame)


def events_header(path: Path) -> tuple[int, ...]:
    """Shape of an events file from its header, checking dtype and layout."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # ValueError, EOFError, OSError, UnpicklingError: all a broken file
        raise BadSampleError(f"{path}: truncated or not a .npy array ({type(e).__name__}: {e})") from e
    if not isinstance(a, np.ndarray):
        raise BadSampleError(f"{path}: not a single .npy array")
    _check_events_meta(path, a.shape, a.dtype)
    return a.shape


def _check_events_meta(path, shape, dtype):
    if len(shape) != 3 or shape[2] != 6:
        raise BadSampleError(f"{path}: events must have shape (H, W, 6), found {tuple(shape)}")
    if dtype != np.float32:
        raise BadSampleError(f"{path}: events must be float32, found {dtype}")
    if shape[0] < 1 or shape[1] < 1:
        raise BadSampleError(f"{path}: events array is empty {tuple(shape)}")


def read_events(path: Path) -> np.ndarray:
    """A checked events array (H, W, 6) float32."""
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:
        raise BadSampleError(f"{path}: truncated or not a .npy array ({type(e).__name__}: {e})") from e
    if not isinstance(a, np.ndarray):
        raise BadSampleError(f"{path}: not a single .npy array")
    _check_events_meta(path, a.shape, a.dtype)
    if not np.isfinite(a).all():
        raise BadSampleError(f"{path}: events contain NaN or inf")
    if (a[..., :2] < 0).any():
        raise BadSampleError(f"{path}: negative event counts")
    return a


def label_header(path: Path) -> tuple[int, int]:
    """(H, W) of a label file from its header."""
    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise BadSampleError(f"{path}: not a readable PNG ({e})") from e
    if mode not in ("L", "P"):
        raise BadSampleError(f"{path}: label must be a single-channel 8-bit PNG, found mode {mode}")
    return size[1], size[0]


def read_label(path: Path, num_classes: int = len(CLASS_NAMES_DDD17)) -> np.ndarray:
    """A checked label map (H, W) uint8 with values in 0..num_classes-1 or 255."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            a = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as e:
        raise BadSampleError(f"{path}: truncated or unreadable PNG ({e})") from e
    if mode not in ("L", "P") or a.ndim != 2:
        raise BadSampleError(f"{path}: label must be a single-channel 8-bit PNG, found mode {mode}")
    bad = (a >= num_classes) & (a != IGNORE)
    if bad.any():
        vals = sorted(set(np.unique(a[bad]).tolist()))[:5]
        raise BadSampleError(f"{path}: label values {vals} outside 0..{num_classes - 1} and {IGNORE}")
    return a


class DDD17(SegmentationDataset):
    class_names = CLASS_NAMES_DDD17

    def __init__(self, cfg, split: str, encode_input: bool = True, root: str | Path | None = None):
        super().__init__(cfg, split, encode_input)
        if cfg.channels not in CHANNELS:
            raise ToolchainError(f"data.channels: unknown choice {cfg.channels!r} (histograms or all)")
        self.channels = CHANNELS[cfg.channels]
        self.in_channels = len(self.channels)
        self.root = Path(root if root is not None else cfg.root)
        if cfg.skip_bad:
            self.files, unpaired = scan_split(self.root, split)
            for name, problem in unpaired:
                self.skipped.append((name, problem))
                log.warning("skipping bad sample: %s", problem)
            self._drop_bad(lambda i: self._read_checked(i))
        else:
            # Headers only: cheap, and it catches wrong shapes, dtypes and
            # unpaired sizes here in the main process, not in a worker.
            self.files = list_split(self.root, split)
            for name in self.files:
                self._check_header(name)

    def paths(self, name: str) -> tuple[Path, Path]:
        return (self.root / "events" / self.split / f"{name}.npy",
                self.root / "labels" / self.split / f"{name}.png")

    def _check_header(self, name: str) -> None:
        ev, lb = self.paths(name)
        shape = events_header(ev)
        hw = label_header(lb)
        if hw != tuple(shape[:2]):
            raise BadSampleError(f"{lb}: label size {hw[0]}x{hw[1]} differs from its events {shape[0]}x{shape[1]}")

    def _read_checked(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        ev_path, lb_path = self.paths(self.files[index])
        ev, lb = read_events(ev_path), read_label(lb_path)
        if lb.shape != ev.shape[:2]:
            raise BadSampleError(f"{lb_path}: label size {lb.shape[0]}x{lb.shape[1]} differs from its events "
                                 f"{ev.shape[0]}x{ev.shape[1]}")
        return ev, lb

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ev, lb = self._read_checked(index)
        frame = torch.from_numpy(np.ascontiguousarray(ev[..., self.channels].transpose(2, 0, 1)))
        return frame, torch.from_numpy(lb.astype(np.int64))

    def normalise(self, frame: torch.Tensor) -> torch.Tensor:
        out = frame.clone()
        out[:2] = minmax(frame[:2])
        if frame.shape[0] > 2:
            out[2:] = frame[2:].clamp(0, 1)
        return out
