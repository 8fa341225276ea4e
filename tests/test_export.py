"""Export: netx reads our files, unsupported layers stop the export, random nets agree in Lava."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st
from lava.lib.dl import slayer

from deploy import emulator, lava_compat, netfile, synapses
from deploy.export import build_netfile, export
from models.graph import INPUT, NeuronParams, Node, SpikingGraph
from tests.content import assert_has_content, has_content
from tests.test_lava_equivalence import CASES, conv, emulator_vs_lava, graph, spikes, torch_vs_emulator
from toolchain.core.errors import ToolchainError


@pytest.mark.lava
@pytest.mark.slow
def test_conv_chain_loads_unchanged_in_netx_and_gives_the_same_answers(tmp_path):
    lava_compat.import_lava_runtime()
    from lava.lib.dl.netx.hdf5 import Network
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.source import RingBuffer

    spec, shape = CASES["dilated_conv"]
    path = tmp_path / "chain.net"
    net = export(graph(spec, shape), path, time_steps=5)
    x = spikes((1, *shape, 5))
    expected = emulator.run(net, x, device="cpu")

    netx = Network(net_config=str(path))
    assert [type(l).__name__ for l in netx.layers] == ["Conv", "Conv", "Conv"]
    steps = net.frame_steps(5)  # T + D: the input, then zeros while the pipeline drains
    data = np.zeros(synapses.lava_shape(shape) + (steps,), dtype=np.int32)
    data[..., :5] = lava_compat.to_lava(x[0].numpy().astype(np.int32))
    source = RingBuffer(data=data)
    source.s_out.connect(netx.inp)
    try:
        netx.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        voltage = lava_compat.from_lava(netx.layers[-1].neuron.v.get().astype(np.int64))
    finally:
        netx.stop()
    np.testing.assert_array_equal(voltage, expected.voltage[0].numpy())


class Recurrent(torch.nn.Module):
    """A synapse kind with no Lava counterpart here."""

    def forward(self, x):
        return x


def test_unsupported_synapse_stops_export_naming_the_layer(tmp_path):
    p = NeuronParams()
    model = SpikingGraph([Node("c1", [INPUT], [slayer.synapse.Conv(2, 4, 3, padding=1)], p.make()),
                          Node("odd", ["c1"], [Recurrent()], p.make()),
                          Node("out", ["odd"], [slayer.synapse.Conv(4, 3, 1)], None)], (2, 6, 6), p)
    path = tmp_path / "m.net"
    with pytest.raises(ToolchainError, match=r"layer 2 \(odd\).*Recurrent.*no Lava counterpart"):
        export(model, path, time_steps=4)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_channel_mixing_pool_is_refused(tmp_path):
    """slayer Pool pads across the stacked channel axis, which no per-channel Lava map reproduces."""
    p = NeuronParams()
    model = SpikingGraph([Node("c1", [INPUT], [slayer.synapse.Conv(2, 4, 3, padding=1)], p.make()),
                          Node("p", ["c1"], [slayer.synapse.Pool(3, stride=2, padding=1)], p.make()),
                          Node("out", ["p"], [slayer.synapse.Conv(4, 3, 1)], None)], (2, 6, 6), p)
    with pytest.raises(ToolchainError, match=r"layer 2 \(p\).*no exact Lava counterpart"):
        export(model, tmp_path / "m.net", time_steps=4)


def test_neuron_without_current_decay_is_refused(tmp_path):
    p = NeuronParams(current_decay=0.0)
    model = SpikingGraph([Node("c1", [INPUT], [slayer.synapse.Conv(2, 4, 3, padding=1)], p.make()),
                          Node("out", ["c1"], [slayer.synapse.Conv(4, 3, 1)], None)], (2, 6, 6), p)
    with pytest.raises(ToolchainError, match=r"layer 1 \(c1\).*iDecay 0"):
        export(model, tmp_path / "m.net", time_steps=4)


def test_weights_are_loihi_integers_and_thresholds_mantissas():
    spec, shape = CASES["conv"]
    net = build_netfile(graph(spec, shape), time_steps=4)
    w = net.layers[0].synapses[0].weight
    assert w.min() >= -256 and w.max() <= 254 and not np.any(w % 2)
    assert w.min() < -200 and w.max() > 200  # the fixture spans the range
    assert net.layers[0].neuron == netfile.Neuron(iDecay=1024, vDecay=123, vThMant=80)
    assert net.layers[-1].neuron.is_readout


# ---------------------------------------------------------------- property tests
KINDS = ("conv", "pool", "convT", "add", "dense")


def _out_shape(make, shape):
    """The (C, H, W) a synapse gives on a (C, H, W) input, as torch computes it."""
    with torch.no_grad():
        return tuple(make()(torch.zeros(1, *shape, 1)).shape[1:4])


@st.composite
def random_graphs(draw, every_kind: bool = False):
    """Random small stacks of every synapse type: conv (kernel, stride, padding,
    dilation, groups), pool, convT (stride, padding, dilation, groups), add
    (two synapses into one group, one of them a skip), dense, and a readout
    that may add a skip too. `every_kind`: each graph draws all five (a pool
    or convT that does not fit the layer before it falls back to a conv)."""
    c_in = draw(st.integers(1, 3))
    h = draw(st.integers(5, 9))
    w = draw(st.integers(5, 9))
    neuron = NeuronParams(threshold=draw(st.sampled_from([0.5, 1.0, 2.0, 3.984375])),
                          current_decay=draw(st.sampled_from([1.0, 0.5, 0.1, 1 / 4096])),
                          voltage_decay=draw(st.sampled_from([0.0, 0.01, 0.25, 1.0])))
    shapes = {INPUT: (c_in, h, w)}
    if every_kind:
        kinds = list(draw(st.permutations(["conv", "pool", "convT", "add"])))
        kinds = kinds + draw(st.lists(st.sampled_from(["conv", "add"]), max_size=1)) + ["dense"]
    else:
        kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3))
    spec = []
    for i, kind in enumerate(kinds):
        name = f"n{i}"
        spatial = [n for n, sh in shapes.items() if n != INPUT and sh[1] * sh[2] > 1] or [INPUT]
        src = spatial[-1] if every_kind else draw(st.sampled_from(spatial))
        c, hh, ww = shapes[src]
        if kind == "pool" and hh >= 2 and ww >= 2:
            makers = [lambda: slayer.synapse.Pool(2, stride=2, weight_scale=1.0)]
            sources = [src]
        elif kind == "convT" and hh * ww <= 81:
            g = draw(st.sampled_from([g for g in (1, 2) if c % g == 0]))
            co = g * draw(st.integers(1, 2))
            k, s, d = draw(st.integers(2, 4)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
            p = draw(st.integers(0, min(1, (d * (k - 1)) // 2)))
            makers = [lambda c=c, co=co, k=k, s=s, p=p, d=d, g=g:
                      slayer.synapse.ConvTranspose(c, co, k, stride=s, padding=p, dilation=d, groups=g)]
            sources = [src]
        elif kind == "dense":
            co = draw(st.integers(2, 8))
            # slayer orders a Dense input as (W, H, C)
            makers = [lambda c=c, hh=hh, ww=ww, co=co: slayer.synapse.Dense((ww, hh, c), co)]
            sources = [src]
        elif kind == "add":
            # a same-size conv of src plus a 1x1 skip from a layer (or the input) of the same size
            co = draw(st.integers(1, 4))
            skip = draw(st.sampled_from([n for n in shapes if shapes[n][1:] == (hh, ww)]))
            makers = [conv(c, co, 3, padding=1), conv(shapes[skip][0], co, 1)]
            sources = [src, skip]
        else:
            g = draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
            co = g * draw(st.integers(1, 2))
            k, s, d = draw(st.sampled_from([1, 2, 3])), draw(st.integers(1, 2)), draw(st.integers(1, 2))
            p = draw(st.integers(0, d * (k // 2) + 1))
            if (min(hh, ww) + 2 * p - d * (k - 1) - 1) // s + 1 < 1:
                p = d * (k // 2)
            makers = [conv(c, co, k, stride=s, padding=p, dilation=d, groups=g)]
            sources = [src]
        spec.append((name, sources, makers, True))
        shapes[name] = _out_shape(makers[0], shapes[src])
    last = spec[-1][0]
    # readout: from the last layer plus, when shapes allow, an additive skip
    sources, makers = [last], [conv(shapes[last][0], 2, 1)]
    skip = [n for n in shapes if n != last and shapes[n][1:] == shapes[last][1:]]
    if skip and draw(st.booleans()):
        sources.append(skip[0])
        makers.append(conv(shapes[skip[0]][0], 2, 1))
    spec.append(("out", sources, makers, False))
    return spec, (c_in, h, w), draw(st.integers(0, 10_000)), neuron


def kinds_in(spec) -> set[str]:
    """The synapse types of a spec as the .net names them (a node of two synapses is an add)."""
    out = set()
    for _, _, makers, _ in spec:
        syns = [m() for m in makers]
        out |= {"add"} if len(syns) > 1 else set()
        for syn in syns:
            out.add({slayer.synapse.Pool: "pool", slayer.synapse.ConvTranspose: "convT",
                     slayer.synapse.Dense: "dense"}.get(type(syn), "conv"))
    return out


def nontrivial_example(spec, shape, seed, neuron, rate, t_steps):
    """(net, input, emulator output) after torch == emulator, or `assume` fails
    when a layer is silent or the readout constant: such an example compares nothing."""
    # weights leaning excitatory, so that deep layers spike often enough to keep
    # most examples; full 8-bit range still
    model = graph(spec, shape, seed=seed, neuron=neuron, low=-96)
    x = spikes((2, *shape, t_steps), rate=rate, seed=seed)
    net, out = torch_vs_emulator(model, x, content=False)
    assume(has_content(out.counts, out.voltage))
    assert_has_content(out.counts, out.voltage, layers=out.spikes, where="torch vs emulator")
    return net, x, out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
@given(case=random_graphs(), rate=st.floats(0.15, 0.8))
def test_emulator_equals_quantized_torch_on_random_nets(case, rate):
    spec, shape, seed, neuron = case
    for kind in kinds_in(spec):
        event(kind)
    nontrivial_example(spec, shape, seed, neuron, rate, 6)


@pytest.mark.lava
@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
@given(case=random_graphs(every_kind=True), rate=st.floats(0.2, 0.8))
def test_torch_emulator_and_lava_agree_on_random_nets_of_every_synapse_type(case, rate):
    """Fewer, richer examples than the torch-only test (each Lava run costs seconds):
    every graph holds conv, pool, convT, add and dense, run with T above its
    pipeline depth so that the deepest layers carry spikes."""
    spec, shape, seed, neuron = case
    assume(kinds_in(spec) == set(KINDS))  # a layer too small to pool falls back to a conv
    model = graph(spec, shape, seed=seed, neuron=neuron)
    net, x, out = nontrivial_example(spec, shape, seed, neuron, rate, model.pipeline_depth + 2)
    emulator_vs_lava(net, x, out)


def test_quantized_copy_of_a_weight_norm_preset_after_a_forward_pass():
    import models
    from deploy.export import quantized_copy
    from models.graph import NeuronParams

    model = models.build("spiking-deeplab-tiny", 2, 6, (16, 16), NeuronParams())
    x = (torch.rand(1, 2, 16, 16, 4) < 0.3).float()
    model(x)  # weight norm leaves a computed weight tensor behind
    q = quantized_copy(model)
    with torch.no_grad():
        a, _ = q(x)
        models.set_quantized(model, True)
        b, _ = model.eval()(x)
    assert torch.equal(a, b)
