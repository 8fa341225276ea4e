"""Property-based fuzzing: every loader, fed truncated or corrupted files,
either reads them or raises the clear ToolchainError; nothing else, no hang."""
import io

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import aedat4_bytes
from toolchain.core.errors import ToolchainError
from toolchain.data.ddd17 import events_header, label_header, read_events, read_label
from toolchain.data.events import Recording

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _events():
    rng = np.random.default_rng(1)
    n = 120
    return dict(x=rng.integers(0, 16, n), y=rng.integers(0, 12, n),
                t=np.sort(rng.integers(0, 200_000, n)).astype(np.int64), p=rng.integers(0, 2, n))


def _npy():
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).poisson(1.0, (12, 16, 6)).astype(np.float32))
    return buf.getvalue()


def _png():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 6, (12, 16)).astype(np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def _npz():
    buf = io.BytesIO()
    np.savez(buf, **_events(), width=16, height=12)
    return buf.getvalue()


def _h5():
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for k, v in _events().items():
            f[k] = v
        f.attrs["width"], f.attrs["height"] = 16, 12
    return buf.getvalue()


def _aedat4():
    e = _events()
    return aedat4_bytes(e["x"], e["y"], e["t"], e["p"], per_packet=40)


def _read_npy(p):
    events_header(p)
    read_events(p)


def _read_png(p):
    label_header(p)
    read_label(p)


def _read_recording(p):
    for _ in Recording(p, sensor_size=(16, 12)).windows():
        pass


LOADERS = {
    "npy": (_npy, _read_npy),
    "png": (_png, _read_png),
    "npz": (_npz, _read_recording),
    "h5": (_h5, _read_recording),
    "aedat4": (_aedat4, _read_recording),
}


@st.composite
def corruptions(draw, size):
    if draw(st.booleans()):
        return ("truncate", draw(st.integers(0, size - 1)))
    edits = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=8))
    return ("edit", edits)


def corrupt(data: bytes, how) -> bytes:
    kind, arg = how
    if kind == "truncate":
        return data[:arg]
    b = bytearray(data)
    for at, val in arg:
        b[at] = val
    return bytes(b)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_corrupted_files_give_toolchain_error_or_load(kind, tmp_path):
    make, read = LOADERS[kind]
    original = make()
    path = tmp_path / f"sample.{kind}"
    path.write_bytes(original)
    read(path)  # the intact file loads

    @FUZZ
    @given(how=corruptions(len(original)))
    def check(how):
        path.write_bytes(corrupt(original, how))
        try:
            read(path)
        except ToolchainError as e:
            assert str(path) in str(e) and "\n" not in str(e)

    check()
