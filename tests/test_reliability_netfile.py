"""Corrupt or foreign `.net` files: the reader answers every one with a single
ToolchainError naming the file, before any large allocation; never a crash,
a hang or another exception. Extends tests/test_netfile.py with fuzzing."""
from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy import netfile
from deploy.export import build_netfile
from tests.test_lava_equivalence import CASES, graph
from toolchain.core.errors import ToolchainError

MANY = settings(max_examples=1500, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def net_bytes(tmp_path_factory) -> bytes:
    spec, shape = CASES["skip_add"]
    path = tmp_path_factory.mktemp("net") / "m.net"
    netfile.write(path, build_netfile(graph(spec, shape), time_steps=4, class_names=["a", "b", "c"]))
    return path.read_bytes()


def _read_or_clear_error(path):
    try:
        netfile.read(path)
    except ToolchainError as e:
        assert str(path) in str(e) and "\n" not in str(e)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fuzzed_bytes_and_truncation_give_one_clear_error(net_bytes, tmp_path):
    path = tmp_path / "f.net"
    n = len(net_bytes)

    @MANY
    @given(cut=st.integers(0, n), flips=st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)),
                                                   max_size=8))
    def check(cut, flips):
        b = bytearray(net_bytes)
        for at, v in flips:
            b[at] = v
        path.write_bytes(bytes(b[:cut]) if cut < n else bytes(b))
        _read_or_clear_error(path)

    check()


def _datasets(f: h5py.File) -> list[str]:
    names = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


VALUES = st.one_of(
    st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True), st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=8), st.booleans(),
    st.lists(st.integers(-10**6, 10**6), min_size=0, max_size=6).map(np.array),
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=6).map(np.array),
    st.just(np.zeros((2, 2, 2))),
)
ROOT_ATTRS = ["format", "version", "inputShape", "timeSteps", "encoding", "classNames", "readoutRule",
              "pipelineDepth"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fuzzed_fields_and_attributes_give_one_clear_error(net_bytes, tmp_path):
    """Wrong versions, missing layers, values of the wrong kind or shape."""
    path = tmp_path / "f.net"
    path.write_bytes(net_bytes)
    with h5py.File(path, "r") as f:
        names = _datasets(f)
    groups = sorted({n.rsplit("/", 1)[0] for n in names if "/" in n})

    @MANY
    @given(edits=st.lists(st.one_of(
        st.tuples(st.just("attr"), st.sampled_from(ROOT_ATTRS), VALUES),
        st.tuples(st.just("delattr"), st.sampled_from(ROOT_ATTRS), st.none()),
        st.tuples(st.just("field"), st.sampled_from(names), VALUES),
        st.tuples(st.just("delete"), st.sampled_from(names + groups), st.none()),
    ), min_size=1, max_size=3))
    def check(edits):
        path.write_bytes(net_bytes)
        with h5py.File(path, "r+") as f:
            for kind, key, value in edits:
                if kind == "attr":
                    f.attrs[key] = value
                elif kind == "delattr" and key in f.attrs:
                    del f.attrs[key]
                elif key in f:
                    del f[key]
                    if kind == "field":
                        f[key] = value
        _read_or_clear_error(path)

    check()


SCRIPT = """
import sys, h5py, resource
from deploy import netfile
from toolchain.core.errors import ToolchainError
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
path, key, shape = sys.argv[1], sys.argv[2], tuple(int(s) for s in sys.argv[3].split(","))
with h5py.File(path, "r+") as f:
    dtype = f[key].dtype
    del f[key]
    f.create_dataset(key, shape=shape, dtype=dtype, chunks=True)  # declared, never stored
try:
    netfile.read(path)
except ToolchainError as e:
    print("ERROR", e)
"""


@pytest.mark.parametrize("key,shape", [
    ("layer/1/weight", "100000,100000,3,3"),   # 720 GB of weights
    ("layer/4/shape", "4000000000"),            # a 32 GB shape vector
    ("layer/2/sources", "2000000000"),
])
def test_absurd_declared_sizes_are_refused_before_allocation(net_bytes, tmp_path, key, shape):
    """Run under a 3 GB address-space limit: reading the data would die with
    MemoryError; the reader must refuse from the declared shape alone."""
    path = tmp_path / "big.net"
    path.write_bytes(net_bytes)
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(path), key, shape], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("ERROR") and "absurd size" in p.stdout and str(path) in p.stdout


def test_layer_sizes_that_disagree_name_the_layer(net_bytes, tmp_path):
    path = tmp_path / "m.net"
    path.write_bytes(net_bytes)
    with h5py.File(path, "r+") as f:
        w = f["layer/1/weight"][()]
        del f["layer/1/weight"]
        f["layer/1/weight"] = w[:, :1]  # in-channels no longer match the input
    with pytest.raises(ToolchainError, match=r"layer 1 \(c1\)"):
        netfile.read(path)


def test_error_quoting_a_multiline_attribute_stays_one_line(net_bytes, tmp_path):
    path = tmp_path / "f.net"
    path.write_bytes(net_bytes)
    with h5py.File(path, "r+") as f:
        f.attrs["format"] = "foreign\nformat"
    with pytest.raises(ToolchainError) as e:
        netfile.read(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
