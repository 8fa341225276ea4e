"""Quantized slayer (torch), the emulator and Lava agree spike for spike.

One small network per layer type, weights spanning the whole 8-bit range,
random input spikes. Pipeline alignment (documented in `deploy.emulator`):
Lava's spikes at step t equal the torch node's output at step t (slayer's
one-step axon delay matches Lava's one-step connection delay); a frame runs
T + D Lava steps (D the pipeline depth) and torch pads its input with D - 1
zero steps, so every layer's spikes are compared over T + D - 1 steps.
Every comparison asserts that each compared layer spikes and that the
readout is non-zero and not constant: a comparison of zeros proves nothing.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from lava.lib.dl import slayer

from deploy import emulator, lava_host
from deploy.export import build_netfile, quantized_copy
from models.graph import INPUT, NeuronParams, Node, SpikingGraph
from tests.content import assert_has_content, assert_output_has_content

T = 5
NEURON = NeuronParams(threshold=1.25, current_decay=0.25, voltage_decay=0.03)


def full_range(syn, gen, low=-128):
    """Weights drawn over every 8-bit synapse value, -256..254 (x 1/64); a
    `low` above -128 leans them excitatory."""
    w = torch.randint(low, 128, syn.weight.shape, generator=gen) * 2 / 64
    syn.weight.data = w.float()
    return syn


def graph(spec, input_shape, seed=0, neuron=NEURON, low=-128):
    """spec: [(name, [sources], [synapse factories], spiking)]."""
    gen = torch.Generator().manual_seed(seed)
    nodes = []
    for name, sources, makers, spiking in spec:
        syns = [full_range(m(), gen, low) if not isinstance(m(), slayer.synapse.Pool) else m()
                for m in makers]
        nodes.append(Node(name, sources, syns, neuron.make() if spiking else None))
    return SpikingGraph(nodes, input_shape, neuron)


def spikes(shape, rate=0.4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < rate).float()


def torch_vs_emulator(model, x, *, content=True):
    """Returns the NetFile after asserting quantized torch == emulator on every
    layer, every layer spiking and the readout neither zero nor constant."""
    net = build_netfile(model, time_steps=x.shape[-1])
    with torch.no_grad():
        readout, torch_spikes = quantized_copy(model)(x)
    out = emulator.run(net, x, device="cpu")
    assert set(torch_spikes) == set(out.spikes) == {layer.name for layer in net.layers[:-1]}
    for name, s in torch_spikes.items():
        assert torch.equal(s.bool(), out.spikes[name]), f"layer {name}: torch and emulator differ"
    # torch's readout is the mean synaptic input; Lava holds 4096*T times it as an integer
    assert torch.equal((readout.double() * 4096 * x.shape[-1]).round().long(), out.voltage)
    if content:
        assert_output_has_content(out, layers=torch_spikes, where="torch vs emulator")
    return net, out


def emulator_vs_lava(net, x, out):
    """Every frame of `x`, streamed through one Lava network, equals the
    emulator's run on every layer and the readout; content is required on
    exactly the frames compared."""
    with lava_host.LavaNetwork(net, x.shape[-1], capacity=len(x)) as lava:
        lava_spikes, _, lava_v = lava.run(x.numpy())
    assert set(lava_spikes) == {layer.name for layer in net.layers[:-1]}
    for name, s in lava_spikes.items():
        np.testing.assert_array_equal(s, out.spikes[name].numpy(), err_msg=f"layer {name}")
    np.testing.assert_array_equal(lava_v, out.voltage.numpy())
    assert_has_content(lava_spikes, lava_v, layers=out.spikes, where="emulator vs Lava")


def three_way(model, x):
    net, out = torch_vs_emulator(model, x)
    emulator_vs_lava(net, x, out)


def conv(cin, cout, k=3, **kw):
    return lambda: slayer.synapse.Conv(cin, cout, k, **kw)


CASES = {
    "conv": ([("c1", [INPUT], [conv(2, 4, 3, padding=1)], True),
              ("out", ["c1"], [conv(4, 3, 1)], False)], (2, 8, 8)),
    "strided_conv": ([("c1", [INPUT], [conv(2, 4, 3, stride=2, padding=1)], True),
                      ("out", ["c1"], [conv(4, 3, 3, stride=(2, 1))], False)], (2, 9, 8)),
    "dilated_conv": ([("c1", [INPUT], [conv(2, 4, 3, padding=2, dilation=2)], True),
                      ("c2", ["c1"], [conv(4, 4, 3, padding=3, dilation=3)], True),
                      ("out", ["c2"], [conv(4, 3, 1)], False)], (2, 8, 8)),
    "pooling": ([("c1", [INPUT], [conv(2, 4, 3, padding=1)], True),
                 ("p1", ["c1"], [lambda: slayer.synapse.Pool(2, stride=2, weight_scale=0.75)], True),
                 ("out", ["p1"], [conv(4, 3, 1)], False)], (2, 8, 8)),
    "transposed_conv": ([("c1", [INPUT], [conv(2, 4, 3, stride=2, padding=1)], True),
                         ("up", ["c1"], [lambda: slayer.synapse.ConvTranspose(4, 3, 4, stride=2, padding=1)], True),
                         ("out", ["up"], [conv(3, 3, 1)], False)], (2, 8, 8)),
    "skip_add": ([("c1", [INPUT], [conv(2, 4, 3, padding=1)], True),
                  ("c2", ["c1"], [conv(4, 4, 3, padding=1)], True),
                  ("sum", ["c2", "c1", INPUT], [conv(4, 4, 3, padding=1), conv(4, 4, 1), conv(2, 4, 1)], True),
                  ("out", ["sum"], [conv(4, 3, 1)], False)], (2, 6, 6)),
    "dense": ([("c1", [INPUT], [conv(2, 4, 3, padding=1)], True),
               ("d1", ["c1"], [lambda: slayer.synapse.Dense((4, 4, 4), 6)], True),
               ("out", ["d1"], [lambda: slayer.synapse.Dense(6, 3)], False)], (2, 4, 4)),
    "readout_from_two_layers": ([("c1", [INPUT], [conv(2, 4, 3, padding=1)], True),
                                 ("c2", ["c1"], [conv(4, 4, 3, padding=1)], True),
                                 ("out", ["c2", "c1"], [conv(4, 3, 3, padding=1), conv(4, 3, 1)], False)],
                                (2, 6, 6)),
}


@pytest.mark.lava
@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_emulator_and_lava_agree_per_layer_type(case):
    spec, shape = CASES[case]
    model = graph(spec, shape)
    three_way(model, spikes((2, *shape, T)))


@pytest.mark.lava
@pytest.mark.slow
def test_layers_that_spike_on_the_second_frame_only_are_compared_in_lava():
    """The case that once failed CI by chance: every layer silent on frame 0
    and spiking on frame 1. Lava must run both frames and find the content
    where the emulator found it, not compare frame 0 alone."""
    spec, shape = CASES["skip_add"]
    x = spikes((2, *shape, T), rate=0.5)
    x[0] = 0
    net, out = torch_vs_emulator(graph(spec, shape), x)
    assert not any(s[0].any() for s in out.spikes.values())
    emulator_vs_lava(net, x, out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_emulator_equals_quantized_torch_on_many_inputs(case):
    spec, shape = CASES[case]
    for seed in range(4):
        model = graph(spec, shape, seed=seed)
        torch_vs_emulator(model, spikes((3, *shape, 8), rate=0.2 + 0.15 * seed, seed=seed))


def test_lava_spikes_align_with_torch_node_outputs():
    """The first layer cannot spike at step 0 in either execution (one-step delay)."""
    spec, shape = CASES["conv"]
    x = torch.ones((1, *shape, T))
    net, out = torch_vs_emulator(graph(spec, shape), x)
    assert not out.spikes["c1"][..., 0].any()
    assert out.spikes["c1"][..., 1:].any()


@pytest.mark.lava
@pytest.mark.slow
@pytest.mark.parametrize("name", ["spiking-deeplab-tiny", "spiking-fcn-tiny", "spiking-deeplab-tiny-decoder",
                                  "spiking-deeplab-tiny-r3"])
@pytest.mark.parametrize("t_vs_depth", [-3, 0, 3])
def test_whole_tiny_presets_agree_spike_for_spike_in_torch_emulator_and_lava(name, t_vs_depth):
    """Both segmenters end to end (pooling, dilation, transposed conv, skips,
    a 1x1 and a 3x3 readout) at a small resolution, with T below, at and above the pipeline
    depth: identical spikes in every layer at every step, identical readout,
    and every layer, the deepest included, spikes."""
    import models

    torch.manual_seed(0)
    model = models.build(name, 2, 6, (16, 16), NeuronParams())
    t_steps = model.pipeline_depth + t_vs_depth
    three_way(model, spikes((1, 2, 16, 16, t_steps), rate=0.3))


@pytest.mark.lava
@pytest.mark.slow
def test_a_converted_net_with_a_threshold_per_layer_agrees_in_torch_emulator_and_lava():
    """A conversion gives each layer its own threshold: each reaches the .net
    and runs in the emulator and in Lava as in quantized torch, spike for spike."""
    import models
    from toolchain.data import encode
    from toolchain.studies import convert

    torch.manual_seed(0)
    ann = models.build("spiking-deeplab-tiny", 2, 6, (16, 16), ann=True)
    frames = torch.rand(2, 2, 16, 16)
    shell = models.build("spiking-deeplab-tiny", 2, 6, (16, 16))
    info = convert.convert(ann, shell, convert.activation_stats(ann, [frames], "layer"), scale=0.5)
    snn = models.build("spiking-deeplab-tiny", 2, 6, (16, 16), NeuronParams(voltage_decay=0.0),
                       layer_thresholds=info["layer_thresholds"])
    snn.load_state_dict(shell.state_dict())
    x = encode(frames, "rate", 12)
    net, out = torch_vs_emulator(snn, x)
    assert {layer.name: layer.neuron.vThMant for layer in net.layers[:-1]} == {
        k: round(v * 64) for k, v in info["layer_thresholds"].items()}
    assert len({layer.neuron.vThMant for layer in net.layers[:-1]}) >= 4
    emulator_vs_lava(net, x, out)
