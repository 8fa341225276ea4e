"""`.net` files written by an earlier release still load and give the same answers.

`tests/data/*-v1.net` were exported by the release before the package was
restructured (format version 1), with the emulator's outputs on fixed input
frames saved beside them. Today's reader and emulator must reproduce those
outputs exactly: every layer's spikes at every step, the counts, the readout
voltage and the class map."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import deploy
from deploy import netfile
from tests.content import assert_has_content

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["spiking-deeplab-tiny", "spiking-fcn-tiny"])
def test_a_version_1_file_gives_the_answers_it_gave_when_written(name, tmp_path):
    expected = np.load(DATA / f"{name}-v1.expected.npz")
    net = deploy.load(DATA / f"{name}-v1.net")
    result = net.run(expected["frames"].astype(np.float32))
    assert_has_content(result.spikes, result.voltage, layers=[layer.name for layer in net.net.layers[:-1]],
                       where=f"{name}-v1")
    for layer in net.net.layers[:-1]:
        got = result.spikes[layer.name]
        want = np.unpackbits(expected[f"spikes_{layer.name}"], count=got.size).reshape(got.shape).astype(bool)
        np.testing.assert_array_equal(got, want, err_msg=layer.name)
        np.testing.assert_array_equal(result.counts[layer.name], expected[f"counts_{layer.name}"])
    assert np.count_nonzero(result.voltage) > result.voltage.size // 2
    np.testing.assert_array_equal(result.voltage, expected["voltage"])
    np.testing.assert_array_equal(result.class_map, expected["class_map"])
    # and today's writer writes back what it read
    again = netfile.read(netfile.write(tmp_path / "again.net", net.net))
    for a, b in zip(again.layers, net.net.layers, strict=True):
        assert (a.name, a.type, a.shape, a.sources, a.neuron) == (b.name, b.type, b.shape, b.sources, b.neuron)
        for sa, sb in zip(a.synapses, b.synapses, strict=True):
            np.testing.assert_array_equal(sa.weight, sb.weight)
            assert (sa.type, sa.stride, sa.padding, sa.dilation, sa.groups) == \
                (sb.type, sb.stride, sb.padding, sb.dilation, sb.groups)
