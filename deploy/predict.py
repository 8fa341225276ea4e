"""`toolchain predict`: segment a raw event recording window by window.

A recording (AEDAT4 from a DAVIS camera, or an `.npz`/HDF5 event array) is cut
into windows; each window becomes exactly the frame training saw:

1. `to_ddd17` at the sensor's resolution (the DDD17 6-channel frame);
2. sensor crop: a DAVIS346 recording (346x260) keeps its top 200 rows, the
   crop of the DDD17 release (which drops the car's bonnet), so the frame has
   the geometry the network was trained on; other sensors are used whole;
3. channels: from a `.net`, which records only the input shape, 2 input
   channels mean the two histograms and 6 mean all six (any other count is
   refused); from a checkpoint, its `data.channels`;
4. `resize` to the model's input with the mode given by `--resize` (a `.net`
   does not record it; default `resize`, the training default) or, from a
   checkpoint, its `data.resize`;
5. the DDD17 data set's own normalisation, then `encode` with the net's
   encoding and T; a poisson draw is seeded per window from (seed, window).

Windows run in small batches and every window's outputs are written as soon
as its batch is done, and the GIF is written frame by frame, so memory does
not grow with the recording's length.

Backends for a `.net`: `emulator` (default; the bit-exact fixed-point
emulator, each batch a fresh run) or `lava` (Lava's fixed_pt CPU simulator,
the reference). With `lava` the whole recording streams through ONE Lava
runtime: one `deploy.lava.Network` between the host file adapters of
`lava_host.LavaNetwork` is built on the first batch, and each batch's encoded
windows go into `lava_procs.FileSource`'s memory-mapped input slots (as many
slots as `--batch`), then one `RunSteps` of batch x (T + D) steps continues
the same runtime. Windows follow the `.net` timing rule back to back (T input
steps then D zero steps while the deepest path drains, every layer restarting
as a window reaches it: `deploy.lava`), so
window k gives what the emulator gives for it alone: the same class map,
readout voltage and spike counts. Only one batch of windows is ever encoded
in memory. A net whose skips are not delay-aligned (`Network.aligned`) is
exact in Lava only one frame per network, and is refused.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch
from PIL import GifImagePlugin, Image
from tqdm import tqdm

from toolchain.core.errors import ToolchainError
from toolchain.core.files import atomic_path, write_text
from toolchain.data.dataset import encode_sample, resize
from toolchain.data.ddd17 import CHANNELS, DDD17
from toolchain.data.events import WINDOW_US, Events, Recording, to_ddd17

from .runner import PALETTE

if TYPE_CHECKING:
    from .lava_host import LavaNetwork

DAVIS346 = (346, 260)  # (width, height)
DDD17_ROWS = 200  # the release's crops are the top 200 rows of the DAVIS346
RESIZE_MODES = ("resize", "crop")
GIF_SIDE = 128  # longest side of a GIF frame


@dataclass(frozen=True)
class Geometry:
    """How a window of a `sensor` (width, height) recording becomes a model input."""

    sensor: tuple[int, int]
    rows: int  # sensor rows kept from the top
    channels: tuple[int, ...]  # indices into the DDD17 6-channel frame
    input_shape: tuple[int, int, int]  # (C, H, W)
    resize: str


def geometry(sensor: tuple[int, int], input_shape, *, channels: str | None = None,
             resize_mode: str = "resize", sensor_crop: bool | None = None, where: str = "model") -> Geometry:
    """The documented rule (module docstring); `sensor_crop` None crops a DAVIS346 only,
    True demands one, False never crops."""
    c, h, w = (int(v) for v in input_shape)
    if channels is None:
        by_count = {len(v): k for k, v in CHANNELS.items()}
        if c not in by_count:
            raise ToolchainError(f"{where}: input has {c} channels; an event model takes 2 (the ON/OFF "
                                 f"histograms) or 6 (the whole DDD17 frame)")
        channels = by_count[c]
    if channels not in CHANNELS:
        raise ToolchainError(f"{where}: unknown channel choice {channels!r} (histograms or all)")
    if len(CHANNELS[channels]) != c:
        raise ToolchainError(f"{where}: channel choice {channels!r} gives {len(CHANNELS[channels])} channels, "
                             f"the model takes {c}")
    if resize_mode not in RESIZE_MODES:
        raise ToolchainError(f"{where}: unknown resize mode {resize_mode!r} (choose resize or crop)")
    is_davis = tuple(sensor) == DAVIS346
    if sensor_crop and not is_davis:
        raise ToolchainError(f"{where}: the DDD17 sensor crop needs a DAVIS346 recording (346x260), "
                             f"this one is {sensor[0]}x{sensor[1]}")
    crop = is_davis if sensor_crop is None else sensor_crop
    return Geometry((int(sensor[0]), int(sensor[1])), DDD17_ROWS if crop else int(sensor[1]), tuple(CHANNELS[channels]),
                    (c, h, w), resize_mode)


def window_frame(ev: Events, t_start: int, t_end: int, geo: Geometry) -> torch.Tensor:
    """One window as the normalised frame (C, H, W) in [0, 1] that training reads."""
    width, height = geo.sensor
    fr = to_ddd17(ev, height, width, t_start, t_end)[:geo.rows]
    frame = torch.from_numpy(np.ascontiguousarray(fr[..., list(geo.channels)].transpose(2, 0, 1)))
    frame, _ = resize(frame, None, geo.input_shape[1], geo.input_shape[2], geo.resize)
    return _DDD17.normalise(frame).float().contiguous()


# DDD17.normalise reads no instance state; an uninitialised instance lets predict
# call the very method the training set uses.
_DDD17 = DDD17.__new__(DDD17)


# ---------------------------------------------------------------- models
class _Net:
    """A `.net` on the emulator, or streamed window by window through one Lava
    runtime (built on the first batch, stopped by `close`)."""

    def __init__(self, path, backend: str, batch_size: int):
        import deploy

        if backend not in deploy.BACKENDS:
            raise ToolchainError(f"unknown backend {backend!r} (choose from {', '.join(deploy.BACKENDS)})")
        self.path = str(path)
        self.deployed = deploy.load(path)
        self.backend = backend
        net = self.deployed.net
        self.input_shape, self.time_steps, self.encoding = net.input_shape, net.time_steps, net.encoding
        self.class_names = list(net.class_names)
        self.channels, self.resize = None, None
        self.batch_size = batch_size
        self._lava: LavaNetwork | None = None  # built when the first batch runs
        self._windows = 0  # windows run so far, to name the one Lava failed at
        if backend == "lava":
            from .lava import arrivals

            if not arrivals(net)[1]:
                raise ToolchainError(f"{path}: its skips are not delay-aligned, so Lava is exact for it only "
                                     f"with a network per frame, and a recording streams through one Lava "
                                     f"runtime (use --backend emulator, or re-export the net)")

    def class_maps(self, x: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
        """Class maps (N, H, W), spikes per layer per frame {name: (N,)} and the
        readout's integer voltage (N, K, H', W')."""
        if self.backend == "emulator":
            r = self.deployed.run(x, backend="emulator", keep_spikes=False)
            return r.class_map, r.counts, r.voltage
        from . import lava_host

        if not bool(((x == 0) | (x == 1)).all()):
            raise ToolchainError(f"{self.path}: input must be 0/1 spikes (Loihi inputs are binary); "
                                 f"encoding {self.encoding!r} gave other values")
        if self._lava is None:
            # one network and runtime for the whole recording; a slot per window of a batch
            self._lava = lava_host.LavaNetwork(self.deployed.net, self.time_steps, capacity=self.batch_size,
                                               keep_spikes=False)
        try:
            _, counts, voltage = self._lava.run(x.numpy())
        except lava_host.LavaRunError as e:
            raise ToolchainError(f"{self.path}: Lava failed at window {self._windows + e.frame}: {e.what}") from e
        self._windows += len(x)
        r = self.deployed._result({}, counts, voltage, x.shape[-1])
        return r.class_map, r.counts, r.voltage

    def close(self) -> None:
        if self._lava is not None:
            self._lava.close()
            self._lava = None


class _Checkpoint:
    """A training checkpoint run as the torch model."""

    def __init__(self, path):
        import models

        self.model, cfg = models.load_checkpoint(path)
        d = cfg.data
        self.input_shape = (len(CHANNELS.get(d.channels, ())), d.height, d.width)
        self.time_steps, self.encoding = d.time_steps, d.encoding
        self.class_names = list(getattr(self.model, "class_names", []))
        self.channels, self.resize = d.channels, d.resize
        self.backend = "torch"

    def class_maps(self, x: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
        import models

        with torch.no_grad():
            scores, _ = models.predict(self.model, x, tuple(self.input_shape[1:]))
        return scores.argmax(1).numpy().astype(np.uint8), {}, None

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- images
def overlay(frame: torch.Tensor, class_map: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Class colours blended over the window's events (white: events in either histogram)."""
    events = frame[:2].amax(0).numpy() if frame.shape[0] >= 2 else frame[0].numpy()
    base = np.repeat((np.clip(events, 0, 1) * 255)[..., None], 3, axis=2)
    colour = PALETTE[class_map % len(PALETTE)].astype(np.float32)
    rgb = (alpha * colour + (1 - alpha) * base).round().astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    scale = max(1, 256 // max(img.size))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img


class GifWriter:
    """An animated GIF written frame by frame (Pillow's own `getheader`/`getdata`
    encoders), so a long recording never holds its frames in memory. Every frame
    is quantised to the fixed web palette, which the header carries once."""

    def __init__(self, path: Path, frame_ms: int, side: int = GIF_SIDE):
        self.path, self.frame_ms, self.side = Path(path), max(int(frame_ms), 20), side
        self._ctx = atomic_path(self.path)
        self._file: BinaryIO | None = None
        self.frames = 0

    def _prepare(self, img: Image.Image) -> Image.Image:
        img = img.copy()
        img.thumbnail((self.side, self.side), Image.Resampling.NEAREST)
        return img.convert("P", palette=Image.Palette.WEB, dither=Image.Dither.NONE)

    def add(self, img: Image.Image) -> None:
        frame = self._prepare(img)
        if self._file is None:
            tmp = self._ctx.__enter__()
            self._file = open(tmp, "wb")
            header, _ = GifImagePlugin.getheader(frame.copy(), info={"loop": 0, "duration": self.frame_ms})
            self._file.write(b"".join(header))
            self.size = frame.size
        out = self._file
        for chunk in GifImagePlugin.getdata(frame, duration=self.frame_ms):
            out.write(chunk)
        self.frames += 1

    def close(self, ok: bool = True) -> None:
        if self._file is None:
            return
        self._file.write(b";")
        self._file.close()
        self._file = None
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(ToolchainError, ToolchainError("aborted"), None)


# ---------------------------------------------------------------- the run
def _batches(rec: Recording, window_us: int, batch: int) -> Iterator[list[tuple[int, int, Events]]]:
    out = []
    for w in rec.windows(window_us):
        out.append(w)
        if len(out) == batch:
            yield out
            out = []
    if out:
        yield out


def predict(source, out_dir, *, net: str | None = None, checkpoint: str | None = None,
            window_ms: float = WINDOW_US / 1000, backend: str = "emulator", batch_size: int = 8,
            resize_mode: str | None = None, sensor_crop: bool | None = None,
            sensor_size: tuple[int, int] | None = None, seed: int = 0, gif: bool = True,
            progress: bool = True) -> dict:
    """Segment every window of `source`; write, under `out_dir`,
    `maps/window_NNNNNN.npz` (class_map (H, W) uint8, t_start, t_end in us and,
    for a `.net`, spikes_<layer>: the window's spike count in each layer, and
    voltage (K, H', W') int64: the readout's integer voltage, whose
    `toolchain.core.loihi.readout_value` is the class score),
    `overlays/window_NNNNNN.png`, `recording.gif` and `summary.json`.
    Returns the summary."""
    if (net is None) == (checkpoint is None):
        raise ToolchainError("predict needs exactly one model: --net MODEL.net or --checkpoint CKPT")
    if batch_size < 1:
        raise ToolchainError(f"--batch must be at least 1, got {batch_size}")
    window_us = int(round(window_ms * 1000))
    if window_us <= 0:
        raise ToolchainError(f"--window-ms must be positive, got {window_ms}")
    if checkpoint is not None and backend != "emulator":
        raise ToolchainError(f"--backend {backend} runs a .net file; a checkpoint runs as the torch model")
    model = _Net(net, backend, batch_size) if net is not None else _Checkpoint(checkpoint)
    where = str(net or checkpoint)
    rec = Recording(source, sensor_size)
    mode = resize_mode or model.resize or "resize"
    geo = geometry((rec.width, rec.height), model.input_shape, channels=model.channels,
                   resize_mode=mode, sensor_crop=sensor_crop, where=where)
    out = Path(out_dir)
    maps_dir, png_dir = out / "maps", out / "overlays"
    for d in (maps_dir, png_dir):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ToolchainError(f"{d}: cannot create the output folder ({e.strerror or e})") from e
    writer = GifWriter(out / "recording.gif", window_us // 1000) if gif else None
    counts = np.zeros(max(len(model.class_names), 1), np.int64)
    index, t_first, t_last = 0, None, None
    started = time.perf_counter()
    ok = False
    try:
        bar = tqdm(desc="predict", unit="window", disable=not progress)
        for batch in _batches(rec, window_us, batch_size):
            frames = [window_frame(ev, a, b, geo) for a, b, ev in batch]
            x = torch.stack([encode_sample(f, model.encoding, model.time_steps, seed, 0, index + i)
                             for i, f in enumerate(frames)])
            maps, spikes, voltage = model.class_maps(x)
            for j, ((a, b, _), frame, cm) in enumerate(zip(batch, frames, maps, strict=True)):
                name = f"window_{index:06d}"
                extra: dict[str, np.ndarray] = {f"spikes_{k}": np.asarray(v[j], np.int64) for k, v in spikes.items()}
                if voltage is not None:
                    extra["voltage"] = np.asarray(voltage[j], np.int64)
                with atomic_path(maps_dir / f"{name}.npz") as tmp:
                    with open(tmp, "wb") as f:
                        np.savez_compressed(f, class_map=cm, t_start=np.int64(a), t_end=np.int64(b), **extra)
                img = overlay(frame, cm)
                with atomic_path(png_dir / f"{name}.png") as tmp:
                    img.save(tmp, format="PNG")
                if writer is not None:
                    writer.add(img)
                if len(counts) <= cm.max():
                    counts = np.pad(counts, (0, int(cm.max()) + 1 - len(counts)))
                counts += np.bincount(cm.ravel(), minlength=len(counts))
                t_first = a if t_first is None else t_first
                t_last = b
                index += 1
            bar.update(len(batch))
        bar.close()
        ok = True
    finally:
        model.close()  # the Lava runtime, when one was started
        if writer is not None:
            writer.close(ok)
    seconds = time.perf_counter() - started
    names = model.class_names or [str(k) for k in range(len(counts))]
    summary = dict(
        source=str(source), model=where, backend=model.backend, windows=index, window_ms=window_us / 1000,
        t_start_us=t_first, t_end_us=t_last, sensor=list(geo.sensor), sensor_rows=geo.rows,
        channels=list(geo.channels), input_shape=list(geo.input_shape), resize=geo.resize,
        encoding=model.encoding, time_steps=model.time_steps, seed=seed, seconds=round(seconds, 3),
        windows_per_second=round(index / seconds, 2) if seconds > 0 else None,
        class_fraction={names[k] if k < len(names) else str(k): round(float(c) / max(counts.sum(), 1), 4)
                        for k, c in enumerate(counts)},
        gif=str(out / "recording.gif") if gif else None)
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary
