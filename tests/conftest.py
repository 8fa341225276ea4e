"""Shared fixtures (small generated DDD17-format data, a data config) and the hypothesis profiles."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from toolchain.core.config import DataConfig

# "ci" (the default, and what `make test` names): the same examples on every
# run and machine, no example database, a failure printed with the blob that
# reproduces it (`@reproduce_failure`), so a run passes or fails on the code
# alone. "explore": new random examples each run, remembered in .hypothesis/;
#   pytest --hypothesis-profile=explore --hypothesis-seed=N
# Keep what it finds as an `@example` on the test.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def tiny_ddd17(tmp_path_factory) -> Path:
    """A small generated set in the DDD17 layout: 6 train + 3 test frames of
    48x80, raw events included. Read-only: copy it before corrupting files."""
    from toolchain.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("ddd17") / "data", 6, 3, 48, 80, seed=3, raw_events=True,
                      progress=False)


@pytest.fixture
def data_cfg(tiny_ddd17) -> DataConfig:
    return DataConfig(root=str(tiny_ddd17), height=24, width=40, time_steps=8, encoding="poisson", seed=1)


def aedat4_bytes(x, y, t, p, width: int = 16, height: int = 12, per_packet: int = 50) -> bytes:
    """An uncompressed AEDAT4 file with one event stream, built by hand from
    the format (magic, size-prefixed IOHeader flatbuffer, then packets of
    stream id, size and a size-prefixed EventPacket flatbuffer), as the
    `aedat` package can read but not write."""
    import flatbuffers

    description = (
        '<dv version="2.0"><node name="outInfo" path="/mainloop/Recorder/outInfo/">'
        '<node name="0" path="/mainloop/Recorder/outInfo/0/">'
        '<attr key="compression" type="string">NONE</attr>'
        '<attr key="originalModuleName" type="string">capture</attr>'
        '<attr key="originalOutputName" type="string">events</attr>'
        '<attr key="typeDescription" type="string">Array of events (polarity ON/OFF).</attr>'
        '<attr key="typeIdentifier" type="string">EVTS</attr>'
        f'<node name="info" path="/mainloop/Recorder/outInfo/0/info/">'
        f'<attr key="sizeX" type="int">{width}</attr><attr key="sizeY" type="int">{height}</attr>'
        '<attr key="source" type="string">DAVIS346</attr></node></node></node></dv>')
    b = flatbuffers.Builder(1024)
    desc = b.CreateString(description)
    b.StartObject(3)
    b.PrependUOffsetTRelativeSlot(2, desc, 0)
    b.PrependInt64Slot(1, -1, -1)
    b.PrependInt32Slot(0, 0, 0)
    b.FinishSizePrefixed(b.EndObject(), b"IOHE")
    out = [b"#!AER-DAT4.0\r\n", bytes(b.Output())]
    for i in range(0, len(t), per_packet):
        b = flatbuffers.Builder(1024)
        sl = slice(i, i + per_packet)
        xs, ys, ts, ps = x[sl], y[sl], t[sl], p[sl]
        b.StartVector(16, len(ts), 8)
        for k in reversed(range(len(ts))):  # struct Event {int64 t; int16 x; int16 y; bool on} = 16 bytes
            b.Prep(8, 16)
            b.Pad(3)
            b.PrependBool(bool(ps[k]))
            b.PrependInt16(int(ys[k]))
            b.PrependInt16(int(xs[k]))
            b.PrependInt64(int(ts[k]))
        vec = b.EndVector()
        b.StartObject(1)
        b.PrependUOffsetTRelativeSlot(0, vec, 0)
        b.FinishSizePrefixed(b.EndObject(), b"EVTS")
        payload = bytes(b.Output())
        out.append(struct.pack("<iI", 0, len(payload)) + payload)
    return b"".join(out)


@pytest.fixture
def small_events():
    """300 events over 120 ms on a 16x12 sensor, in time order."""
    rng = np.random.default_rng(7)
    n = 300
    t = np.sort(rng.integers(1_000_000, 1_120_000, n)).astype(np.int64)
    return dict(x=rng.integers(0, 16, n), y=rng.integers(0, 12, n), t=t, p=rng.integers(0, 2, n))
