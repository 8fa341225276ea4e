"""Raw event recordings: read them, cut them into windows, turn windows into frames.

Sources: AEDAT4 files from DAVIS cameras (decoded by the `aedat` package) and
plain event arrays (`.npz`, or HDF5 `.h5`/`.hdf5`) with fields x, y, t
(microseconds) and p (1/True = ON, 0/False/-1 = OFF). Every source is read as a
stream of chunks, so a long recording is never loaded whole where the format
allows it (AEDAT4 packet by packet, HDF5 slice by slice; `.npz` members are
zip entries and are read whole).

A window becomes either the DDD17 6-channel frame (`to_ddd17`, the one
implementation, also used by the scene generator) or a voxel grid whose time
bins are the network's time steps (`to_voxel`).
"""
from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import ToolchainError

WINDOW_US = 50_000  # DDD17 accumulates 50 ms before each frame
FIELDS = ("x", "y", "t", "p")
CHUNK = 1 << 20  # events read per slice from array files
AEDAT4_MAGIC = b"#!AER-DAT4.0\r\n"


@dataclass
class Events:
    """A batch of events in time order. x: column, y: row, t: microseconds,
    p: True for ON (brightness up)."""

    x: np.ndarray  # int32
    y: np.ndarray  # int32
    t: np.ndarray  # int64
    p: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.t)

    def __getitem__(self, s) -> Events:
        return Events(self.x[s], self.y[s], self.t[s], self.p[s])

    @staticmethod
    def concat(parts: list[Events]) -> Events:
        if not parts:
            return Events.empty()
        return Events(*(np.concatenate([getattr(e, f) for e in parts]) for f in FIELDS))

    @staticmethod
    def empty() -> Events:
        return Events(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, bool))


def make_events(x, y, t, p, *, where: str = "events") -> Events:
    """Check and convert four parallel arrays into `Events`."""
    arrays = {"x": np.asarray(x), "y": np.asarray(y), "t": np.asarray(t), "p": np.asarray(p)}
    n = len(arrays["t"])
    for name, a in arrays.items():
        if a.ndim != 1:
            raise ToolchainError(f"{where}: field {name!r} must be 1-D, has shape {a.shape}")
        if len(a) != n:
            raise ToolchainError(f"{where}: fields 't' and {name!r} differ in length ({n} vs {len(a)})")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ToolchainError(f"{where}: field {name!r} has non-numeric dtype {a.dtype}")
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise ToolchainError(f"{where}: field {name!r} contains NaN or inf")
    for name in ("x", "y"):
        a = arrays[name]
        if n and (a.min() < 0 or a.max() > 65535 or np.any(a != np.round(a))):
            raise ToolchainError(f"{where}: field {name!r} must hold non-negative integer pixel coordinates")
    p = arrays["p"]
    if n and not np.isin(p, (-1, 0, 1)).all():
        raise ToolchainError(f"{where}: field 'p' must be 0/1 (or -1/1), found {np.unique(p)[:5].tolist()}")
    if n and np.abs(arrays["t"]).max() > 2 ** 62:
        raise ToolchainError(f"{where}: timestamps 't' out of range")
    t = arrays["t"].astype(np.int64)
    if n > 1 and np.any(np.diff(t) < 0):
        raise ToolchainError(f"{where}: timestamps 't' are not in time order")
    return Events(arrays["x"].astype(np.int32), arrays["y"].astype(np.int32), t, p > 0)


class Recording:
    """An event file opened for streaming. `width`/`height` come from the file
    (AEDAT4 stream info, `width`/`height` entries of an array file) or, failing
    that, from `sensor_size` or the largest coordinate seen."""

    def __init__(self, path: str | Path, sensor_size: tuple[int, int] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ToolchainError(f"{self.path}: event file not found")
        suffix = self.path.suffix.lower()
        if suffix == ".aedat4":
            self._reader = _Aedat4(self.path)
        elif suffix == ".npz":
            self._reader = _Npz(self.path)
        elif suffix in (".h5", ".hdf5"):
            self._reader = _Hdf5(self.path)
        else:
            raise ToolchainError(f"{self.path}: unknown event file type {suffix!r} (use .aedat4, .npz, .h5 or .hdf5)")
        size = self._reader.size or sensor_size
        if size is None:
            size = self._reader.size_from_data()
        self.width, self.height = int(size[0]), int(size[1])
        if not (0 < self.width <= 65536 and 0 < self.height <= 65536):
            raise ToolchainError(f"{self.path}: implausible sensor size {self.width}x{self.height}")

    def chunks(self) -> Iterator[Events]:
        """Consecutive event chunks in time order, each checked."""
        last_t = None
        for ev in self._reader.chunks():
            if len(ev) == 0:
                continue
            if last_t is not None and ev.t[0] < last_t:
                raise ToolchainError(f"{self.path}: timestamps go back in time at t={int(ev.t[0])} us")
            if ev.x.max() >= self.width or ev.y.max() >= self.height:
                raise ToolchainError(
                    f"{self.path}: event at x={int(ev.x.max())}, y={int(ev.y.max())} lies outside the "
                    f"{self.width}x{self.height} sensor")
            last_t = int(ev.t[-1])
            yield ev

    def windows(self, window_us: int = WINDOW_US) -> Iterator[tuple[int, int, Events]]:
        """(t_start, t_end, events in [t_start, t_end)) for consecutive windows
        from the first event on; windows without events are yielded too, as a
        camera standing still records nothing."""
        if window_us <= 0:
            raise ToolchainError(f"window length must be positive, got {window_us} us")
        start = None
        pending: list[Events] = []
        any_events = False
        for ev in self.chunks():
            any_events = True
            if start is None:
                start = int(ev.t[0])
            pending.append(ev)
            while int(ev.t[-1]) >= start + window_us:
                buf = Events.concat(pending)
                cut = int(np.searchsorted(buf.t, start + window_us, side="left"))
                yield start, start + window_us, buf[:cut]
                pending = [buf[cut:]]
                start += window_us
        if not any_events:
            raise ToolchainError(f"{self.path}: the recording holds no events")
        yield start, start + window_us, Events.concat(pending)


def to_ddd17(ev: Events, height: int, width: int, t_start: float, t_end: float) -> np.ndarray:
    """The DDD17 (Ev-SegNet) frame of one window: float32 (H, W, 6) holding the
    ON count, OFF count, mean and std of ON timestamps, mean and std of OFF
    timestamps, timestamps normalised to [0, 1] over the window."""
    out = np.zeros((height, width, 6), np.float32)
    if len(ev) == 0:
        return out
    span = max(float(t_end - t_start), 1e-9)
    tn = np.clip((ev.t - t_start) / span, 0.0, 1.0)
    pix = ev.y.astype(np.int64) * width + ev.x
    for k, sel in enumerate((ev.p, ~ev.p)):
        idx, ts = pix[sel], tn[sel]
        count = np.bincount(idx, minlength=height * width).astype(np.float64)
        s1 = np.bincount(idx, weights=ts, minlength=height * width)
        s2 = np.bincount(idx, weights=ts * ts, minlength=height * width)
        has = count > 0
        mean = np.zeros_like(s1)
        mean[has] = s1[has] / count[has]
        var = np.zeros_like(s1)
        var[has] = np.maximum(s2[has] / count[has] - mean[has] ** 2, 0.0)
        out[..., k] = count.reshape(height, width)
        out[..., 2 + 2 * k] = mean.reshape(height, width)
        out[..., 3 + 2 * k] = np.sqrt(var).reshape(height, width)
    return out


def to_voxel(ev: Events, height: int, width: int, t_start: float, t_end: float, bins: int,
             binary: bool = False) -> np.ndarray:
    """Event counts per polarity and time bin: float32 (2, H, W, bins), slayer's
    channel-first order with the bins as time steps. `binary` clips counts to 1,
    as Loihi input spikes carry no magnitude."""
    if bins <= 0:
        raise ToolchainError(f"voxel grid needs at least one time bin, got {bins}")
    grid = np.zeros((2, height, width, bins), np.float32)
    if len(ev):
        span = max(float(t_end - t_start), 1e-9)
        b = np.clip(((ev.t - t_start) / span * bins).astype(np.int64), 0, bins - 1)
        c = (~ev.p).astype(np.int64)  # channel 0 = ON, 1 = OFF, as in the DDD17 frame
        flat = ((c * height + ev.y) * width + ev.x) * bins + b
        grid = np.bincount(flat, minlength=grid.size).astype(np.float32).reshape(grid.shape)
    if binary:
        np.minimum(grid, 1.0, out=grid)
    return grid


# ---------------------------------------------------------------- file readers

class _Npz:
    def __init__(self, path: Path):
        self.path = path
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = set(z.files)
                missing = [f for f in FIELDS if f not in keys]
                if missing:
                    raise ToolchainError(f"{path}: missing event field(s) {missing}; an event file needs x, y, t, p")
                arrays = {k: z[k] for k in (*FIELDS, "width", "height") if k in keys}
        except ToolchainError:
            raise
        except Exception as e:  # zipfile, zlib, ValueError, OSError: all mean a broken file
            raise ToolchainError(f"{path}: not a readable .npz event file ({type(e).__name__}: {e})") from e
        self.size = None
        if "width" in arrays and "height" in arrays:
            try:
                self.size = (int(arrays["width"]), int(arrays["height"]))
            except (TypeError, ValueError) as e:
                raise ToolchainError(f"{path}: width/height must be single integers") from e
        self._events = make_events(*(arrays[f] for f in FIELDS), where=str(path))

    def _all(self) -> Events:
        return self._events

    def size_from_data(self):
        ev = self._all()
        if len(ev) == 0:
            raise ToolchainError(f"{self.path}: the recording holds no events")
        return int(ev.x.max()) + 1, int(ev.y.max()) + 1

    def chunks(self):
        ev = self._all()
        for i in range(0, len(ev), CHUNK):
            yield ev[i:i + CHUNK]


class _Hdf5:
    def __init__(self, path: Path):
        self.path = path
        with self._open() as (f, d):
            lengths = {k: v.shape for k, v in d.items()}
            if len(set(lengths.values())) != 1 or len(lengths["t"]) != 1:
                raise ToolchainError(f"{path}: event datasets must be 1-D of equal length, found {lengths}")
            self.n = lengths["t"][0]
            try:
                a = f.attrs
                self.size = (int(a["width"]), int(a["height"])) if "width" in a and "height" in a else None
            except Exception as e:
                raise ToolchainError(f"{path}: unreadable width/height attributes ({type(e).__name__})") from e

    @contextlib.contextmanager
    def _open(self):
        import h5py

        try:
            f = h5py.File(self.path, "r")
        except Exception as e:
            raise ToolchainError(f"{self.path}: not a readable HDF5 event file ({type(e).__name__}: {e})") from e
        with f:
            try:
                group = f["events"] if "events" in f else f
                d = {k: group[k] for k in FIELDS if k in group}
            except Exception as e:
                raise ToolchainError(f"{self.path}: corrupt HDF5 event file ({type(e).__name__}: {e})") from e
            missing = [k for k in FIELDS if k not in d]
            if missing:
                raise ToolchainError(f"{self.path}: missing event dataset(s) {missing}; "
                                     f"an event file needs x, y, t, p")
            bad = [k for k, v in d.items() if not isinstance(v, h5py.Dataset)]
            if bad:
                raise ToolchainError(f"{self.path}: {bad[0]!r} is not a dataset")
            yield f, d

    def size_from_data(self):
        if self.n == 0:
            raise ToolchainError(f"{self.path}: the recording holds no events")
        w = h = 0
        for ev in self.chunks():
            w, h = max(w, int(ev.x.max()) + 1), max(h, int(ev.y.max()) + 1)
        return w, h

    def chunks(self):
        with self._open() as (_, d):
            for a in range(0, self.n, CHUNK):
                b = min(a + CHUNK, self.n)
                try:
                    cols = [d[k][a:b] for k in FIELDS]
                except Exception as e:
                    raise ToolchainError(f"{self.path}: event data unreadable at [{a}:{b}] "
                                         f"({type(e).__name__}: {e})") from e
                yield make_events(*cols, where=f"{self.path}[{a}:{b}]")


class _Aedat4:
    """AEDAT4 through `aedat`. The framing (magic, header, packet headers) is
    checked here first, since a corrupt header can make the decoder read out of
    bounds; the decoder then verifies each event packet itself."""

    def __init__(self, path: Path):
        self.path = path
        self._check_framing()
        import aedat

        try:
            self._decoder = aedat.Decoder(str(path))
            streams = self._decoder.id_to_stream()
        except BaseException as e:  # pyo3 panics derive from BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise ToolchainError(f"{path}: corrupt AEDAT4 file ({e})") from e
        ids = [i for i, s in streams.items() if s.get("type") == "events"]
        if not ids:
            raise ToolchainError(f"{path}: AEDAT4 file has no event stream")
        self._id = min(ids)
        s = streams[self._id]
        self.size = (int(s["width"]), int(s["height"])) if s.get("width") and s.get("height") else None

    def _check_framing(self):
        path, size = self.path, self.path.stat().st_size
        with open(path, "rb") as f:
            if f.read(len(AEDAT4_MAGIC)) != AEDAT4_MAGIC:
                raise ToolchainError(f"{path}: not an AEDAT4 file (wrong magic number)")
            raw = f.read(4)
            if len(raw) < 4:
                raise ToolchainError(f"{path}: truncated AEDAT4 file (no header)")
            (n,) = struct.unpack("<I", raw)
            header = f.read(n)
            if len(header) < n:
                raise ToolchainError(f"{path}: truncated AEDAT4 file (header of {n} bytes cut short)")
            data_end = _check_ioheader(header, path)
            pos = f.tell()
            # DV writes a file data table after the packets; the decoder stops there too.
            end = data_end if 0 <= data_end <= size else size
            while pos < end:
                f.seek(pos)
                head = f.read(8)
                if len(head) < 8:
                    raise ToolchainError(f"{path}: truncated AEDAT4 file (packet header at byte {pos} cut short)")
                _, length = struct.unpack("<iI", head)
                pos += 8 + length
                if pos > end:
                    raise ToolchainError(f"{path}: truncated AEDAT4 file (packet at byte {pos - 8 - length} "
                                         f"needs {length} bytes, the file ends first)")

    def size_from_data(self):
        raise ToolchainError(f"{self.path}: AEDAT4 event stream has no sensor size; pass one")

    def chunks(self):
        while True:
            try:
                packet = next(self._decoder)
            except StopIteration:
                return
            except BaseException as e:  # pyo3 panics derive from BaseException
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                raise ToolchainError(f"{self.path}: corrupt AEDAT4 packet ({e})") from e
            if packet.get("stream_id") != self._id or "events" not in packet:
                continue
            e = packet["events"]
            yield make_events(e["x"], e["y"], e["t"], e["on"], where=str(self.path))


def _check_ioheader(buf: bytes, path: Path) -> int:
    """Bounds-check the IOHeader flatbuffer (root table, vtable, description
    string) so the decoder never follows an offset out of the buffer. Returns
    the file data table position (-1 when absent)."""
    def u32(at):
        if at < 0 or at + 4 > len(buf):
            raise ToolchainError(f"{path}: corrupt AEDAT4 header (offset {at} outside the header)")
        return struct.unpack_from("<I", buf, at)[0]

    root = u32(0)
    if buf[4:8] != b"IOHE":
        raise ToolchainError(f"{path}: corrupt AEDAT4 header (no IOHE identifier)")
    vt = root - struct.unpack("<i", struct.pack("<I", u32(root)))[0]
    if vt < 0 or vt + 4 > len(buf):
        raise ToolchainError(f"{path}: corrupt AEDAT4 header (vtable outside the header)")
    vt_len, _ = struct.unpack_from("<HH", buf, vt)
    if vt_len < 4 or vt + vt_len > len(buf):
        raise ToolchainError(f"{path}: corrupt AEDAT4 header (bad vtable)")
    fields = struct.unpack_from(f"<{(vt_len - 4) // 2}H", buf, vt + 4)
    if len(fields) < 3 or fields[2] == 0:
        raise ToolchainError(f"{path}: AEDAT4 header has no stream description")
    for slot, width in zip(fields, (4, 8, 4), strict=False):
        if slot and root + slot + width > len(buf):
            raise ToolchainError(f"{path}: corrupt AEDAT4 header (field outside the header)")
    at = root + fields[2]
    s = at + u32(at)
    n = u32(s)
    if s + 4 + n > len(buf):
        raise ToolchainError(f"{path}: corrupt AEDAT4 header (description outside the header)")
    try:
        buf[s + 4:s + 4 + n].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ToolchainError(f"{path}: corrupt AEDAT4 header (description is not UTF-8)") from e
    return struct.unpack_from("<q", buf, root + fields[1])[0] if fields[1] else -1
