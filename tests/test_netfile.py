"""The `.net` reader rejects every broken file with one clear error, before anything runs."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import deploy
from deploy import netfile
from deploy.export import build_netfile
from tests.test_lava_equivalence import CASES, graph, spikes
from toolchain.core.errors import ToolchainError


@pytest.fixture
def net_path(tmp_path):
    spec, shape = CASES["skip_add"]
    path = tmp_path / "m.net"
    netfile.write(path, build_netfile(graph(spec, shape), time_steps=4, class_names=["a", "b", "c"]))
    return path


def test_round_trip_keeps_every_field(net_path):
    spec, shape = CASES["skip_add"]
    original = build_netfile(graph(spec, shape), time_steps=4, class_names=["a", "b", "c"])
    back = netfile.read(net_path)
    assert back.input_shape == original.input_shape and back.time_steps == 4
    assert back.class_names == ["a", "b", "c"] and back.encoding == "poisson"
    for a, b in zip(original.layers, back.layers, strict=True):
        assert (a.name, a.type, a.shape, a.sources, a.neuron) == (b.name, b.type, b.shape, b.sources, b.neuron)
        for sa, sb in zip(a.synapses, b.synapses, strict=True):
            np.testing.assert_array_equal(sa.weight, sb.weight)
            assert (sa.type, sa.stride, sa.padding, sa.dilation, sa.groups) == \
                (sb.type, sb.stride, sb.padding, sb.dilation, sb.groups)


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


def _replace(f, key, value):
    del f[key]
    f[key] = value


BROKEN = {
    "unknown layer type": (lambda f: (_replace(f, "layer/2/type", np.array([b"rnn"]))), "unknown layer type 'rnn'"),
    "missing field": (lambda f: f.__delitem__("layer/1/neuron/vThMant"), "missing field 'vThMant'"),
    "other version": (lambda f: f.attrs.__setitem__("version", 7), "format version 7"),
    "wrong shape": (lambda f: _replace(f, "layer/2/shape", np.array([4, 5, 6])), "layer 2"),
    "weight out of range": (lambda f: _replace(f, "layer/1/weight", np.full((4, 2, 3, 3), 300)), "even integers"),
    "bad source": (lambda f: _replace(f, "layer/2/sources", np.array([5])), "not an earlier layer"),
    "absurd size": (lambda f: _replace(f, "layer/4/shape", np.array([3, 100000, 100000])), "layer 4"),
    "not a net": (lambda f: f.attrs.__setitem__("format", "other"), "not a toolchain .net file"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_file_gives_one_clear_error(net_path, case):
    fn, message = BROKEN[case]
    _edit(net_path, fn)
    with pytest.raises(ToolchainError) as e:
        deploy.load(net_path)
    assert message in str(e.value) and str(net_path) in str(e.value)


def test_truncated_file_is_reported(net_path):
    data = net_path.read_bytes()
    net_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ToolchainError, match="truncated or corrupt"):
        deploy.load(net_path)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ToolchainError, match="no such .net file"):
        deploy.load(tmp_path / "nothing.net")


def test_run_refuses_frames_of_another_shape(net_path):
    with pytest.raises(ToolchainError, match="expected"):
        deploy.load(net_path).run(torch.zeros((1, 3, 6, 6, 4)))


def test_loaded_net_runs_and_gives_class_maps_at_input_size(net_path):
    net = deploy.load(net_path)
    r = net.run(spikes((2, 2, 6, 6, 4)))
    assert r.class_map.shape == (2, 6, 6) and r.readout.shape == (2, 3, 6, 6)
    # spikes of every step that reaches the readout: T + D - 1
    assert net.net.pipeline_depth == 4 and net.net.frame_steps(4) == 8
    assert set(r.spikes) == {"c1", "c2", "sum"} and r.spikes["c1"].shape == (2, 4, 6, 6, 7)
    np.testing.assert_array_equal(r.counts["c1"], r.spikes["c1"].sum(axis=(1, 2, 3, 4)))
