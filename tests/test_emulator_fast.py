"""The emulator's CPU path (int8 convolutions, compiled neurons, frame-major
chunks) equals its plain-torch reference (`emulator.run_reference`: float
convolutions and `toolchain.core.loihi.cuba_run`) bit for bit: every layer's
spikes at every step, the spike counts and the readout, on every synapse kind,
at low and high input density, one frame and a batch in chunks. Every
comparison asserts that each compared layer spikes and that the readout
varies: a comparison of zeros proves nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deploy import emulator, netfile, synapses
from deploy.netfile import Layer, NetFile, Neuron, validate
from deploy.synapses import Synapse
from tests.content import assert_output_has_content
from toolchain.core.loihi import READOUT_NEURON, U_MAX

T = 6
NEURON = Neuron(iDecay=1024, vDecay=128, vThMant=60)
READOUT = Neuron(**READOUT_NEURON)


def _w(rng, *shape, low=-40, high=100):
    """Even 8-bit weights leaning excitatory, so that layers fed few spikes spike."""
    return 2 * rng.integers(low, high, shape)


def _net(name: str) -> NetFile:
    """One small net per case; every synapse kind, delays and multi-source layers."""
    rng = np.random.default_rng(len(name))
    if name == "conv":  # strided, dilated, grouped, 1x1
        layers = [Layer("c1", "conv", (6, 9, 8), [0], [Synapse("conv", _w(rng, 6, 2, 3, 3), padding=(1, 1))], NEURON),
                  Layer("c2", "conv", (6, 5, 8), [1], [Synapse("conv", _w(rng, 6, 3, 3, 3), (2, 1), (1, 2), (1, 2),
                                                               groups=2)], NEURON),
                  Layer("out", "conv", (3, 5, 8), [2], [Synapse("conv", _w(rng, 3, 6, 1, 1))], READOUT)]
        return NetFile((2, 9, 8), T, layers)
    if name == "pool":  # windows inside the input (a depthwise conv) and past its edge
        layers = [Layer("c1", "conv", (4, 9, 9), [0], [Synapse("conv", _w(rng, 4, 2, 3, 3), padding=(1, 1))], NEURON),
                  Layer("p1", "pool", (4, 4, 4), [1], [Synapse("pool", np.full((2, 2), 48), (2, 2))], NEURON),
                  Layer("p2", "pool", (4, 5, 5), [1], [Synapse("pool", np.full((2, 2), 40), (2, 2))], NEURON),
                  Layer("out", "add", (3, 4, 4), [2, 3],
                        [Synapse("conv", _w(rng, 3, 4, 1, 1)), Synapse("conv", _w(rng, 3, 4, 2, 2))], READOUT)]
        return NetFile((2, 9, 9), T, layers)
    if name == "convT":
        layers = [Layer("c1", "conv", (4, 4, 4), [0], [Synapse("conv", _w(rng, 4, 2, 3, 3), (2, 2), (1, 1))],
                        NEURON),
                  Layer("up", "convT", (3, 8, 8), [1], [Synapse("convT", _w(rng, 4, 3, 4, 4), (2, 2), (1, 1))],
                        NEURON),
                  Layer("out", "conv", (3, 8, 8), [2], [Synapse("conv", _w(rng, 3, 3, 1, 1))], READOUT)]
        return NetFile((2, 8, 8), T, layers)
    if name == "dense":
        layers = [Layer("c1", "conv", (4, 4, 4), [0], [Synapse("conv", _w(rng, 4, 2, 3, 3), padding=(1, 1))], NEURON),
                  Layer("d1", "dense", (6, 1, 1), [1], [Synapse("dense", _w(rng, 6, 64, low=-20))], NEURON),
                  Layer("out", "dense", (3, 1, 1), [2], [Synapse("dense", _w(rng, 3, 6))], READOUT)]
        return NetFile((2, 4, 4), T, layers)
    if name == "add_with_delays":  # three kinds into one layer, two of them delayed
        layers = [Layer("c1", "conv", (4, 6, 6), [0], [Synapse("conv", _w(rng, 4, 2, 3, 3), padding=(1, 1))], NEURON),
                  Layer("p1", "pool", (4, 3, 3), [1], [Synapse("pool", np.full((2, 2), 64), (2, 2))], NEURON),
                  Layer("sum", "add", (4, 6, 6), [1, 2, 0],
                        [Synapse("conv", _w(rng, 4, 4, 3, 3), padding=(1, 1), delay=2),
                         Synapse("convT", _w(rng, 4, 4, 2, 2), (2, 2)),
                         Synapse("conv", _w(rng, 4, 2, 1, 1), delay=1)], NEURON),
                  Layer("out", "conv", (3, 6, 6), [3], [Synapse("conv", _w(rng, 3, 4, 1, 1))], READOUT)]
        return NetFile((2, 6, 6), T, layers)
    if name == "odd_weights":  # odd weights past int8: the float map; odd int8 weights: int8 times 1
        layers = [Layer("c1", "conv", (4, 6, 6), [0], [Synapse("conv", _w(rng, 4, 2, 3, 3) + 1, padding=(1, 1))],
                        NEURON),
                  Layer("out", "conv", (3, 6, 6), [1], [Synapse("conv", _w(rng, 3, 4, 1, 1, low=-60, high=60) - 1)],
                        READOUT)]
        return NetFile((2, 6, 6), T, layers)
    if name == "weight_exponent":  # 8-bit mantissas times 2^3 and 2^7 (a `.net` weight exponent)
        layers = [Layer("c1", "conv", (4, 6, 6), [0], [Synapse("conv", _w(rng, 4, 2, 3, 3) << 3, padding=(1, 1))],
                        Neuron(iDecay=1024, vDecay=128, vThMant=60 << 3)),
                  Layer("out", "conv", (3, 6, 6), [1], [Synapse("conv", _w(rng, 3, 4, 1, 1) << 7)], READOUT)]
        return NetFile((2, 6, 6), T, layers, version=max(netfile.VERSIONS))  # the version that has exponents
    raise KeyError(name)


def _clamping_net(channels: int) -> NetFile:
    """A fan-in of channels x 9 weights of 254: 2^23 (Lava Conv's clamp) within
    reach at high density; above 2^24 (channels 8192) the sums leave float32.
    The current barely decays (iDecay 1), so it wraps past int32 a step later
    when clamped: spikes differ wherever a clamp is missed."""
    slow = Neuron(iDecay=1, vDecay=4096, vThMant=100_000)
    layers = [Layer("big", "conv", (2, 3, 3), [0], [Synapse("conv", np.full((2, channels, 3, 3), 254), padding=(1, 1))],
                    slow),
              Layer("big2", "add", (2, 3, 3), [0, 0],
                    [Synapse("conv", np.full((2, channels, 3, 3), 254), padding=(1, 1)),
                     Synapse("conv", np.full((2, channels, 1, 1), -254), delay=1)], slow),
              Layer("out", "add", (3, 3, 3), [1, 2], [Synapse("conv", np.array([64, -32, 16]).reshape(3, 1, 1, 1)
                                                                      .repeat(2, axis=1)),
                                                      Synapse("conv", np.full((3, 2, 1, 1), 2))], READOUT)]
    return NetFile((channels, 3, 3), T, layers)


CASES = ("conv", "pool", "convT", "dense", "add_with_delays", "odd_weights", "weight_exponent")


def _frames(net: NetFile, n: int, rate: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((n, *net.input_shape, T), generator=gen) < rate).float()


def assert_same(fast: emulator.EmulatorOutput, ref: emulator.EmulatorOutput, where: str) -> None:
    assert set(fast.spikes) == set(ref.spikes) == set(fast.counts)
    for name, s in ref.spikes.items():
        assert fast.spikes[name].dtype == torch.bool and fast.spikes[name].shape == s.shape, (where, name)
        assert torch.equal(fast.spikes[name], s), f"{where}: layer {name} differs"
        assert torch.equal(fast.counts[name], ref.counts[name]), f"{where}: counts of {name} differ"
    assert fast.voltage.dtype == torch.int64 and torch.equal(fast.voltage, ref.voltage), f"{where}: readout differs"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("rate", [0.08, 0.6])
@pytest.mark.parametrize("n", [1, 3])
def test_fast_path_equals_reference_on_every_synapse_kind(case, rate, n):
    net = _net(case)
    validate(net)
    x = _frames(net, n, rate, seed=n)
    ref = emulator.run_reference(net, x)
    assert_output_has_content(ref, layers=[layer.name for layer in net.layers[:-1]], where=f"{case} reference")
    assert_same(emulator.run(net, x, device="cpu"), ref, f"{case} at rate {rate}, {n} frame(s)")


def test_the_cases_cover_every_synapse_kind_and_both_maps():
    syns = [(syn, net.shape_of(src), layer.shape) for net in map(_net, CASES)
            for layer in net.layers for src, syn in zip(layer.sources, layer.synapses, strict=True)]
    assert {syn.type for syn, _, _ in syns} == set(synapses.TYPES)
    int8 = {emulator._as_conv(syn, src, out) is not None and emulator._int8_ok(emulator._as_conv(syn, src, out)[0])
            for syn, src, out in syns}
    assert int8 == {True, False}
    shifts = {emulator._int8_shift(syn.weight) for syn, _, _ in syns}
    assert {0, 1, 4, 7, None} <= shifts  # odd int8, even 8-bit, exponents 3 and 7, past int8


@pytest.mark.parametrize("channels", [4096, 8192])
def test_fast_path_clamps_like_lava_conv_where_the_sums_reach_24_bits(channels):
    """A single conv clamped in the neuron kernel (int8 sums below 2^24, float64
    above) and an add layer summing clamped convs in int64."""
    net = _clamping_net(channels)
    validate(net)
    x = _frames(net, 2, 0.97, seed=channels)
    ref = emulator.run_reference(net, x)
    fast = emulator.run(net, x, device="cpu")
    assert_same(fast, ref, f"clamping, {channels} channels")
    assert_output_has_content(ref, layers=["big", "big2"], where="clamping")
    bound = synapses.fan_in_bound(net.layers[0].synapses[0])
    assert bound >= U_MAX and (bound >= emulator.FLOAT32_EXACT) == (channels == 8192)


def test_batches_in_chunks_equal_each_frame_alone(monkeypatch):
    """One frame per chunk, two frames per chunk, the whole batch in one: the
    same answers as each frame alone, written at its place in the batch."""
    net = _net("add_with_delays")
    x = _frames(net, 5, 0.3, seed=7)
    alone = [emulator.run(net, f[None], device="cpu") for f in x]
    per_frame = 4 * net.frame_steps(T) * max(int(np.prod(layer.shape)) for layer in net.layers)
    for frames_per_chunk in (1, 2, 5):
        monkeypatch.setattr(emulator, "CPU_CHUNK_BYTES", frames_per_chunk * per_frame)
        assert len(emulator.chunks(net, 5, net.frame_steps(T))) == -(-5 // frames_per_chunk)
        out = emulator.run(net, x, device="cpu")
        for k, one in enumerate(alone):
            assert_same(emulator.EmulatorOutput({n: s[k:k + 1] for n, s in out.spikes.items()},
                                                {n: c[k:k + 1] for n, c in out.counts.items()}, out.voltage[k:k + 1]),
                        one, f"{frames_per_chunk} frame(s) per chunk, frame {k}")
    assert_output_has_content(out, layers=[layer.name for layer in net.layers[:-1]], where="chunks")


@pytest.mark.parametrize("split", [True, False])
def test_one_frame_split_over_threads_or_on_one_equals_reference(monkeypatch, split):
    """A single chunk runs split over the threads inside each layer, or on one
    worker thread, as the measurement decides; both give the reference's answers,
    and the caller's thread count stays as it was."""
    net = _net("add_with_delays")
    x = _frames(net, 1, 0.3, seed=5)
    ref = emulator.run_reference(net, x)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(emulator, "_threads_pay", lambda pool: split)
        assert_same(emulator.run(net, x, device="cpu"), ref, "split" if split else "one thread")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert_output_has_content(ref, layers=[layer.name for layer in net.layers[:-1]], where="threads")


@pytest.mark.parametrize("case", ["add_with_delays", "pool", "conv"])
def test_convolutions_into_the_reused_workspace_equal_reference(monkeypatch, case):
    """Large outputs go into one buffer reused layer after layer and synapse
    after synapse (here every output, however small): each is read before the
    next convolution overwrites it."""
    if not emulator._int8_exact():
        pytest.skip("this machine's int8 convolutions are not exact: no convolution goes into the workspace")
    monkeypatch.setattr(emulator._Workspace, "FROM_BYTES", 0)
    monkeypatch.setattr(emulator, "CPU_CHUNK_BYTES", 1)  # one frame per chunk: a thread reuses its buffer
    zeros, used = emulator._Workspace.zeros, []
    monkeypatch.setattr(emulator._Workspace, "zeros", lambda self, *shape: used.append(shape) or zeros(self, *shape))
    net = _net(case)
    x = _frames(net, 3, 0.3, seed=13)
    ref = emulator.run_reference(net, x)
    assert_same(emulator.run(net, x, device="cpu"), ref, f"{case} through the workspace")
    assert len(used) >= 3 * 2
    assert_output_has_content(ref, layers=[layer.name for layer in net.layers[:-1]], where="workspace")


def test_float_maps_where_int8_is_not_exact(monkeypatch):
    """On a machine whose int8 convolution is not exact, every synapse takes
    its float map, with the same answers."""
    net = _net("pool")
    x = _frames(net, 2, 0.3, seed=3)
    ref = emulator.run_reference(net, x)
    monkeypatch.setattr(emulator, "_int8_exact", lambda: False)
    monkeypatch.setattr(emulator, "_MAPS", {})
    assert_same(emulator.run(net, x, device="cpu"), ref, "float maps")
    assert_output_has_content(ref, layers=["c1", "p1", "p2"], where="float maps")


def test_whole_tiny_preset_equals_reference():
    """The tiny DeepLab preset (pooling, dilations, readout) end to end."""
    import models
    from deploy.export import build_netfile

    torch.manual_seed(0)
    net = build_netfile(models.build("spiking-deeplab-tiny", 2, 6, (16, 16), quantized=True).eval(), time_steps=T)
    x = _frames(net, 2, 0.3, seed=11)
    ref = emulator.run_reference(net, x)
    assert_same(emulator.run(net, x, device="cpu"), ref, "tiny preset")
    assert_output_has_content(ref, layers=[layer.name for layer in net.layers[:-1]], where="tiny preset")


def test_compiled_lif_equals_cuba_run_with_wrap_around():
    """Inputs below 2^24 can still drive the current past int32 (iDecay 1 keeps
    it): the kernel wraps as Lava's model does."""
    from toolchain.core.loihi import cuba_run

    a = torch.full((9, 4), (1 << 24) - 1, dtype=torch.int64)
    a[:, 1] = -a[:, 1]
    a[:, 2] = 300
    s, v = emulator.lif_steps(a, 1, 7, 1000)
    s_ref, v_ref = cuba_run(a, 1, 7, 1000, wrap=True)
    assert torch.equal(s, s_ref) and torch.equal(v, v_ref)
    assert s.any() and not s.all()


@pytest.mark.parametrize(("i_decay", "v_decay"), [(4096, 0), (4096, 41), (1024, 128), (1, 4096)])
def test_compiled_lif_equals_cuba_run_for_each_neuron_loop(i_decay, v_decay):
    """The kernel's loops for no current state and no leak (converted nets),
    no current state (the paper's LIF) and any decays: each equals Lava's
    model step for step, spiking and not, on inputs of both signs."""
    from toolchain.core.loihi import cuba_run

    gen = torch.Generator().manual_seed(i_decay + v_decay)
    a = torch.randint(-3000, 9000, (12, 4096), generator=gen)
    a[:, :8] = torch.tensor([(1 << 24) - 1, -(1 << 24) + 1, 0, 1, -1, 2500, -2500, 64])
    s, v = emulator.lif_steps(a, i_decay, v_decay, 6000)
    s_ref, v_ref = cuba_run(a, i_decay, v_decay, 6000, wrap=True)
    assert torch.equal(s, s_ref) and torch.equal(v, v_ref)
    assert 0.05 < float(s.float().mean()) < 0.95 and bool((v < 0).any())
