"""The portable NIR graph (`deploy.nir_export`, the default of `toolchain
export --target nir`) runs in two consumer frameworks, norse
(`norse.torch.from_nir`) and snntorch (`snntorch.import_nir.import_from_nir`),
and their class maps agree with the bit-exact emulator's.

Both consumers compute in float32, not Loihi's truncating integers; the
parameter mapping (`deploy.nir_export`'s docstring) makes the float dynamics
the same recurrence, so they differ from the emulator only where a truncated
state sits at the threshold. Measured at the sizes below: 100% of pixels and
>= 99.99% of each layer's spikes agree, in both consumers.
"""
from __future__ import annotations

import logging

import nir
import norse.torch
import numpy as np
import pytest
import snntorch.utils
import torch
from snntorch.import_nir import import_from_nir

import models
from deploy import emulator
from deploy.export import build_netfile
from deploy.nir_export import export_nir
from tests.content import assert_has_content
from toolchain.core.loihi import readout_value

H, W, T, N = 24, 32, 12, 3  # H != W catches a transposed axis


def run_consumer(module: torch.nn.Module, graph: nir.NIRGraph, x: torch.Tensor, layers: list[str], *,
                 stateful: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run `module` over the graph's run_steps (x's T steps, then zeros): the
    readout (the output summed over the steps / T) and each layer's spikes
    (N, C, H, W, run_steps), caught by forward hooks on the layer modules.
    `stateful`: the module takes and returns its state (norse); else it keeps
    it inside (snntorch's init_hidden neurons)."""
    got: dict[str, list[torch.Tensor]] = {k: [] for k in layers}

    def hook(name):
        def keep(_module, _inp, out):
            got[name].append((out[0] if isinstance(out, tuple) else out).detach().clone())
        return keep

    hooks = [getattr(module, k).register_forward_hook(hook(k)) for k in layers]
    total, state = torch.zeros(()), None
    try:
        with torch.no_grad():
            for t in range(graph.metadata["run_steps"]):
                xt = x[..., t] if t < x.shape[-1] else torch.zeros_like(x[..., 0])
                if stateful:
                    out, state = module(xt, state)
                else:
                    out = module(xt)
                    out = out[0] if isinstance(out, tuple) else out
                total = total + out.double()
    finally:
        for h in hooks:
            h.remove()
    return total / graph.metadata["time_steps"], {k: torch.stack(v, -1).bool() for k, v in got.items()}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    torch.manual_seed(0)
    net = build_netfile(models.build("spiking-deeplab-tiny", 2, 6, (H, W), quantized=True), time_steps=T)
    graph = nir.read(export_nir(net, tmp_path_factory.mktemp("nir") / "deeplab.nir"))
    x = (torch.rand(N, *net.input_shape, T, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    ref = emulator.run(net, x, device="cpu")
    layers = [layer.name for layer in net.layers[:-1]]
    assert_has_content(ref.counts, ref.voltage, layers=layers, where="emulator")
    return net, graph, x, ref, layers


def test_portable_deeplab_graph_is_a_chain_without_delays(case):
    net, graph, *_ = case
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    assert kinds == {"Input", "Output", "Conv2d", "CubaLIF"}
    assert graph.metadata["lag"] == net.pipeline_depth and graph.metadata["run_steps"] == T
    assert graph.metadata["delay_nodes"] == ""


def load_norse(graph):
    logging.getLogger().setLevel(logging.ERROR)  # norse warns on r != 1 of IF/LIF only; keep the log clean
    return norse.torch.from_nir(graph, dt=graph.metadata["dt"]), True


def load_snntorch(graph):
    module = import_from_nir(graph)  # snntorch assumes dt = 1e-4, the portable graph's dt
    snntorch.utils.reset(module)
    return module, False


@pytest.mark.slow
@pytest.mark.parametrize("load", [load_norse, load_snntorch], ids=["norse", "snntorch"])
def test_consumer_class_maps_agree_with_the_emulator(case, load, capsys):
    net, graph, x, ref, layers = case
    module, stateful = load(graph)
    readout, spikes = run_consumer(module, graph, x, layers, stateful=stateful)
    expected = torch.as_tensor(readout_value(ref.voltage.numpy().astype(np.float64), T))
    assert readout.shape == expected.shape

    lags = graph.metadata["layer_lags"]
    per_layer = {}
    for name in layers:  # NIR step t of layer L is Lava step t + lag(L)
        lava = ref.spikes[name][..., lags[name]:lags[name] + spikes[name].shape[-1]]
        per_layer[name] = float((spikes[name][..., :lava.shape[-1]].reshape(lava.shape) == lava).float().mean())
    mine = models.upsample(readout.float(), (H, W)).argmax(1)
    theirs = models.upsample(expected.float(), (H, W)).argmax(1)
    pixels = float((mine == theirs).float().mean())
    with capsys.disabled():
        print(f"\n{load.__name__[5:]}: pixel agreement {pixels:.4%}, readout max |diff| "
              f"{float((readout - expected).abs().max()):.4g} (max |readout| {float(expected.abs().max()):.3g}); "
              "spike agreement per layer " + ", ".join(f"{k} {v:.4%}" for k, v in per_layer.items()))
    assert pixels >= 0.99
    assert all(v >= 0.99 for v in per_layer.values()), per_layer
