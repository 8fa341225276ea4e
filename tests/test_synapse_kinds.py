"""Each `.net` synapse type is one entry of `deploy.synapses`: the entry names
the Lava process it becomes (delayed or not), builds its NIR nodes (or says
NIR has none) and bounds its fan-in; an unknown type is a ToolchainError."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from deploy import netfile, synapses
from deploy.netfile import Layer, NetFile, Neuron
from deploy.synapses import Synapse
from toolchain.core.errors import ToolchainError
from toolchain.core.loihi import READOUT_NEURON

SRC = (2, 4, 4)


def _weight(*shape) -> np.ndarray:
    return 2 * np.random.default_rng(0).integers(-40, 40, shape)


# per type: one synapse from SRC and the layer shape it maps onto
EXAMPLES = {
    "conv": (Synapse("conv", _weight(4, 2, 3, 3), padding=(1, 1)), (4, 4, 4)),
    "convT": (Synapse("convT", _weight(2, 3, 2, 2), stride=(2, 2)), (3, 8, 8)),
    "pool": (Synapse("pool", np.full((2, 2), 32), (2, 2)), (2, 2, 2)),
    "dense": (Synapse("dense", _weight(5, 32)), (5, 1, 1)),
}


def test_the_examples_cover_every_registered_type():
    assert set(EXAMPLES) == set(synapses.TYPES)


@pytest.mark.lava
@pytest.mark.parametrize("name", synapses.TYPES)
def test_every_synapse_type_has_a_lava_process_a_nir_node_and_a_fan_in(name):
    from deploy.lava_compat import import_lava_runtime
    from deploy.nir_export import build_nir

    syn, out = EXAMPLES[name]
    import_lava_runtime()
    for delay in (0, 2):
        delayed = dataclasses.replace(syn, delay=delay)
        process, _ = delayed.lava(SRC, out)
        assert type(process).__name__ == delayed.lava_process

    net = NetFile(SRC, 4, [Layer("out", name, out, [0], [syn], Neuron(**READOUT_NEURON))])
    netfile.validate(net)
    if synapses.kind(name).nir is None:
        with pytest.raises(ToolchainError, match=rf"out\.syn0 \({name}\)"):
            build_nir(net)
    else:
        assert "out.syn0" in build_nir(net).nodes

    # every input spiking, through |weights|: no output exceeds the bound
    positive = dataclasses.replace(syn, weight=np.abs(syn.weight))
    worst = synapses.apply(positive, torch.ones((1, *SRC)), out)
    assert 0 < int(worst.max()) <= synapses.fan_in_bound(syn)


def test_an_unknown_synapse_type_is_a_clear_error():
    syn = Synapse("sparse", np.ones((2, 2)))
    with pytest.raises(ToolchainError, match=r"unknown synapse type 'sparse' \(known: conv, convT, pool, dense\)"):
        _ = syn.lava_process
