"""`toolchain import --nir` (`deploy.nir_import`): NIR graphs back to `.net`.

- Round trip: the toolchain's portable export of the tiny DeepLab imports to a
  `.net` whose emulator run equals the original's bit for bit (weights and
  thresholds already lie on Loihi's grid, so the scale is 1 and the decays
  round back to the same integers).
- A conv SNN built and exported by snntorch imports, runs identically in the
  emulator and in Lava, and agrees with snntorch's own float run, measured on
  24 frames of 10 steps (1152 readout pixels, 368640 first-layer and 92160
  second-layer spike values): 98.87% of the readout pixels' classes (13
  differ; snntorch picks class b on 1080 of them), 99.885% of the first
  layer's spikes, 98.27% of the second's. Below the 99% asked for, and not a
  bug of the import: the same figures hold against this module's own float64
  reference (`nir_import.simulate`), and switching each fixed-point effect on
  alone puts almost all of it on the 8-bit weights (`deploy.nir_import`'s
  docstring). Over 8 weight draws of this net and 3 input draws the readout
  agrees on 97.97% (97.0..99.7% per weight draw); plain-rounded 10-bit
  weights would give 99.3%. Keeping each output's weight sum in the rounding
  (`round_to_grid`) cut the disagreeing spikes by 20 to 30% there (readout
  97.54% -> 97.97%, first layer 99.82% -> 99.87%, second 98.53% -> 98.85%);
  on this draw the readout moved from 10 to 13 differing pixels of 1152 while
  both layers improved, within the spread between draws. The asserts below
  hold the measured figures with a small margin.
- The same graph imported with split weights (`precision="split"`, each
  weight two synapses: 8-bit mantissas at weight exponents e and 0) agrees
  with snntorch on 99.91% of the readout pixels (1 of 1152 differs), 99.998%
  of the first layer's spikes and 99.914% of the second's, for twice the
  synapses and synaptic operations; over 8 weight x 3 input draws 99.81% of
  the readout (worst draw 99.39%) against 97.86% with 8-bit weights
  (`deploy.nir_import`'s docstring). It runs identically in the emulator and
  in Lava, and its `.net` holds the mantissas and each synapse's exponent.
- Unsupported nodes are refused in one line naming the file and the node.
"""
from __future__ import annotations

import h5py
import nir
import numpy as np
import pytest
import snntorch as snn
import snntorch.utils
import torch
from click.testing import CliRunner
from snntorch.export_nir import export_to_nir

import models
from deploy import emulator, netfile
from deploy.export import build_netfile
from deploy.nir_export import export_nir
from deploy.nir_import import agreement, import_nir, round_to_grid
from deploy.synapses import Synapse
from tests.content import assert_has_content
from toolchain.cli import cli
from toolchain.core.errors import ToolchainError
from toolchain.core.loihi import DECAY_SCALE, INPUT_SHIFT, U_MAX, readout_value

T = 10


def spikes_in(shape, n=4, t=T, rate=0.3, seed=1):
    return (torch.rand(n, *shape, t, generator=torch.Generator().manual_seed(seed)) < rate).float()


# ---------------------------------------------------------------- round trip
def test_portable_deeplab_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    net = build_netfile(models.build("spiking-deeplab-tiny", 2, 6, (24, 32), quantized=True), time_steps=T,
                        class_names=list("abcdef"))
    path = export_nir(net, tmp_path / "deeplab.nir")
    result = CliRunner().invoke(cli, ["import", "--nir", str(path), "--out", str(tmp_path / "back.net"),
                                      "--classes", "a,b,c,d,e,f", "--frames", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "w max rel" in result.output and "spike agreement" in result.output
    back = netfile.read(tmp_path / "back.net")
    assert back.class_names == list("abcdef") and back.time_steps == T
    assert [layer.name for layer in back.layers[:-1]] == [layer.name for layer in net.layers[:-1]]
    assert back.pipeline_depth == net.pipeline_depth
    x = spikes_in(net.input_shape, n=3)
    a, b = emulator.run(net, x, device="cpu"), emulator.run(back, x, device="cpu")
    assert_has_content(a.counts, a.voltage, where="original")
    assert torch.equal(a.voltage, b.voltage)
    for name, s in a.spikes.items():
        assert torch.equal(s, b.spikes[name]), name
    maps = [models.upsample(readout_value(o.voltage.double(), T).float(), (24, 32)).argmax(1) for o in (a, b)]
    assert torch.equal(*maps)
    report = import_nir(path)
    assert all(r.scale == 1 and r.max_rel == 0 for r in report.layers)


# ---------------------------------------------------------------- snntorch
def _snntorch_net(seed=0):
    torch.manual_seed(seed)

    def full(v, shape):
        return torch.full(shape, float(v))  # full-shaped parameters: nir's type inference needs them

    conv1 = torch.nn.Conv2d(2, 8, 3, padding=1, bias=False)
    conv2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
    head = torch.nn.Conv2d(8, 3, 1, bias=False)
    with torch.no_grad():
        conv1.weight.mul_(3.0)
        conv2.weight.mul_(2.0)
    hard = dict(init_hidden=True, reset_mechanism="zero", reset_delay=False)  # NIR's (and Loihi's) reset
    return torch.nn.Sequential(
        conv1, snn.Leaky(beta=full(0.9, (8, 12, 16)), threshold=full(1.0, (8, 12, 16)), **hard),
        conv2, snn.Synaptic(alpha=full(0.75, (8, 6, 8)), beta=full(0.875, (8, 6, 8)),
                            threshold=full(1.0, (8, 6, 8)), **hard),
        head).eval()


def _run_snntorch(module, x):
    """snntorch's own run: (readout = output summed over T / T, {layer index: spikes (N, C, H, W, T)})."""
    got: dict[str, list[torch.Tensor]] = {"1": [], "3": []}
    hooks = [module[int(k)].register_forward_hook(lambda _m, _i, out, k=k: got[k].append(
        (out[0] if isinstance(out, tuple) else out).detach().clone())) for k in got]
    snn.utils.reset(module)
    total = 0.0
    try:
        with torch.no_grad():
            for t in range(x.shape[-1]):
                total = total + module(x[..., t]).double()
    finally:
        for h in hooks:
            h.remove()
    return total / x.shape[-1], {k: torch.stack(v, -1).bool() for k, v in got.items()}


@pytest.fixture(scope="module")
def snntorch_nir(tmp_path_factory):
    module = _snntorch_net()
    path = tmp_path_factory.mktemp("nir") / "snntorch.nir"
    nir.write(path, export_to_nir(module, torch.zeros(1, 2, 12, 16), ignore_dims=[0]))
    return module, path


def _snntorch_import(snntorch_nir, precision):
    module, path = snntorch_nir
    out = path.with_name(f"snntorch-{precision}.net")
    result = import_nir(path, out, time_steps=T, class_names=["a", "b", "c"], precision=precision)
    x = spikes_in((2, 12, 16), n=24)
    emu = emulator.run(result.net, x, device="cpu")
    return module, result, netfile.read(out), x, emu


@pytest.fixture(scope="module")
def snntorch_case(snntorch_nir):
    return _snntorch_import(snntorch_nir, "8bit")


@pytest.fixture(scope="module")
def snntorch_split_case(snntorch_nir):
    return _snntorch_import(snntorch_nir, "split")


CASES = {"8bit": "snntorch_case", "split": "snntorch_split_case"}
# the measured figures (module docstring) with a small margin: readout pixels, first and second layer's spikes
BARS = {"8bit": (0.98, 0.998, 0.98), "split": (0.99, 0.9995, 0.998)}


@pytest.mark.parametrize("precision", list(CASES))
def test_snntorch_graph_imports_and_agrees_with_snntorch(precision, request, capsys):
    module, result, net, x, emu = request.getfixturevalue(CASES[precision])
    split = precision == "split"
    assert [(layer.type, layer.neuron.iDecay, layer.neuron.vDecay) for layer in net.layers] == [
        ("add" if split else "conv", 4096, 410), ("add" if split else "conv", 1024, 512),
        ("add" if split else "conv", 4096, 0)]
    # 8-bit grid at full range: under 1% of the largest weight; split: at least 8 + 2 bits, under 0.25%
    assert all(r.max_rel < (0.0025 if split else 0.01) for r in result.layers)
    assert_has_content(emu.counts, emu.voltage, layers=["1", "3"], where="emulator")
    readout, spikes = _run_snntorch(module, x)
    per_layer = {}
    for name, s in spikes.items():
        lag = result.lags[name]
        per_layer[name] = float((emu.spikes[name][..., lag:lag + T] == s).double().mean())
    mine = readout_value(emu.voltage.double(), T) / result.readout_scale
    pixels = float((mine.argmax(1) == readout.argmax(1)).double().mean())
    ours = agreement(result, x, emulated=emu)
    with capsys.disabled():
        print(f"\n{precision}: snntorch vs emulator: classes {pixels:.3%}, spikes "
              + ", ".join(f"{k} {v:.3%}" for k, v in per_layer.items())
              + f"; readout max |diff| {float((mine - readout).abs().max() / readout.abs().max()):.3%} of max; "
              f"own float reference: classes {ours['classes']:.3%}, spikes {ours['layers']}")
    assert all(int(s.sum()) for s in spikes.values()), "snntorch: a compared layer never spikes"
    assert len(torch.unique(readout.argmax(1))) > 1, "snntorch's readout picks one class everywhere"
    bar_pixels, bar_1, bar_3 = BARS[precision]
    assert pixels >= bar_pixels  # measured 8-bit: 98.87% of 1152, split: 99.91% (module docstring)
    assert per_layer["1"] >= bar_1 and per_layer["3"] >= bar_3, per_layer  # 8-bit 99.885%, 98.27%; split 99.998%, 99.914%
    assert ours["classes"] == pytest.approx(pixels) and ours["layers"] == pytest.approx(per_layer)


def test_snntorch_split_weights_sum_to_a_finer_grid(snntorch_case, snntorch_split_case, snntorch_nir, tmp_path):
    """Each path is two synapses from one source with one delay: the coarse one
    8-bit mantissas at the reported exponent e, the fine one 8-bit at exponent 0
    with |fine| <= 2^e; their sum lies within one fine step (2) of the float weight
    times s, each output's sum within half a step; s and vThMant are 2^e times
    the 8-bit import's; the worst-case current stays within 24 bits. The file
    holds the mantissas and the exponent; the report shows the split."""
    module, result, net, _, _ = snntorch_split_case
    _, plain, _, _, _ = snntorch_case
    convs = [m for m in module if isinstance(m, torch.nn.Conv2d)]
    assert [r.exponent for r in result.layers] == [6, 2, 3] and not result.notes
    assert net.version == netfile.EXPONENT_VERSION and plain.net.version == netfile.VERSION
    assert net.num_synapses > 1.8 * plain.net.num_synapses
    for layer, rep, rep8, conv in zip(net.layers, result.layers, plain.layers, convs, strict=True):
        e = rep.exponent
        coarse, fine = layer.synapses
        assert layer.sources[0] == layer.sources[1] and coarse.delay == fine.delay == 0
        assert (coarse.type, coarse.stride, coarse.padding) == (fine.type, fine.stride, fine.padding)
        assert netfile.weight_exponent(coarse.weight) == e and netfile.weight_exponent(fine.weight) == 0
        assert np.abs(fine.weight).max() <= 2 ** e
        assert rep.scale == pytest.approx(rep8.scale * 2 ** e)
        if not layer.neuron.is_readout:
            assert layer.neuron.vThMant == round(rep.threshold * rep.scale * 64)
            assert abs(layer.neuron.vThMant - rep8.v_th_mant * 2 ** e) <= 2 ** (e - 1)
        w = conv.weight.detach().double().numpy() * rep.scale * 64  # synapse units
        q = coarse.weight.astype(np.int64) + fine.weight
        assert np.abs(q - w).max() < 2, layer.name
        assert np.abs(q.sum((1, 2, 3)) - w.sum((1, 2, 3))).max() <= 1 + 1e-9, layer.name
        assert rep.max_rel == pytest.approx(np.abs(q - w).max() / np.abs(w).max())
        assert rep.max_rel < rep8.max_rel / 2 ** (e - 1)
        rows = q.reshape(len(q), -1)
        worst = max(rows.clip(min=0).sum(1).max(), -rows.clip(max=0).sum(1).min())
        gain = DECAY_SCALE / layer.neuron.iDecay if not layer.neuron.is_readout else net.frame_steps()
        assert worst * (1 << INPUT_SHIFT) * gain <= U_MAX, layer.name
    path = tmp_path / "split.net"
    netfile.write(path, net)
    with h5py.File(path) as f:
        assert f.attrs["version"] == netfile.EXPONENT_VERSION
        assert f["layer/1/synapse/0/weightExponent"][()] == 6 and "weightExponent" not in f["layer/1/synapse/1"]
        assert np.abs(f["layer/1/synapse/0/weight"][()]).max() <= 256
    back = netfile.read(path)
    for a, b in zip(net.layers, back.layers, strict=True):
        assert all(np.array_equal(x.weight, y.weight) for x, y in zip(a.synapses, b.synapses, strict=True))
    out = CliRunner().invoke(cli, ["import", "--nir", str(snntorch_nir[1]), "--out", str(tmp_path / "cli.net"),
                                   "--time-steps", str(T), "--weight-split", "--frames", "2"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert f"{net.num_synapses} synapses" in out.output and "w exp" in out.output
    rows = {line.split()[0]: line.split() for line in out.output.splitlines() if line.split()}
    assert [rows[name][3] for name in ("1", "3", "readout")] == ["6+0", "2+0", "3+0"]
    assert rows["1"][2] == "conv" and "split weights" in out.output


def test_weight_exponent_in_the_net_file_is_checked():
    """Weights past 8 bits need mantissas times one 2^0..2^7, format version 3
    and a synapse Lava runs as its Conv (its Dense and Sparse clip to 8 bits)."""
    def net_with(syn, version=netfile.EXPONENT_VERSION, shape=(2, 4, 4)):
        readout = netfile.Neuron(DECAY_SCALE, 0, (1 << 17) - 1)
        return netfile.NetFile((1, 4, 4), T, [netfile.Layer("readout", syn.type, shape, [0], [syn], readout)],
                               version=version)

    conv = Synapse("conv", np.array([254 << 7, -2 << 7]).reshape(2, 1, 1, 1))
    assert netfile.weight_exponent(conv.weight) == 7 and netfile.weight_exponent(np.array([254, 4])) == 0
    assert netfile.weight_exponent(np.array([256 << 7])) is None  # beyond 2^7 x 254
    assert netfile.weight_exponent(np.array([512, 2])) is None  # 512 needs 2^1, which 2 is no multiple of
    netfile.validate(net_with(conv))
    for bad, msg in [(net_with(conv, version=2), "format version 2"),
                     (net_with(Synapse("conv", np.array([[[[258]]], [[[2]]]]))), "no even 8-bit mantissas"),
                     (net_with(Synapse("conv", conv.weight, delay=1)), "DelaySparse"),
                     (net_with(Synapse("dense", np.full((2, 16), 512)), shape=(2, 1, 1)), "Dense")]:
        with pytest.raises(ToolchainError, match=msg):
            netfile.validate(bad)


def test_snntorch_weights_keep_each_outputs_sum(snntorch_case):
    """Every imported weight lies within one grid step of the float weight times s,
    and each output's weight sum within half a step; the scale uses the full range."""
    module, result, net, _, _ = snntorch_case
    convs = [m for m in module if isinstance(m, torch.nn.Conv2d)]
    for layer, rep, conv in zip(net.layers, result.layers, convs, strict=True):
        w = conv.weight.detach().double().numpy() * rep.scale * 32  # in grid steps (2/64)
        q = layer.synapses[0].weight / 2
        assert np.abs(q - w).max() < 1, layer.name
        assert np.abs(q.sum((1, 2, 3)) - w.sum((1, 2, 3))).max() <= 0.5 + 1e-9, layer.name
        assert max(q.max() / 127, q.min() / -128) == pytest.approx(1), layer.name
        assert rep.max_rel == pytest.approx(np.abs(q - w).max() / np.abs(w).max())


def test_round_to_grid_is_nearest_with_kept_sums():
    r = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)).double().numpy() * 40
    r[0, :3] = [200.0, -200.0, 126.7]  # clamped, and one that may not move up past 127
    q = round_to_grid(r)
    assert np.array_equal(q, np.round(q)) and q.min() >= -128 and q.max() <= 127
    inside = np.abs(r).max(1) < 127  # rows with no clamped entry
    assert 0 < inside.sum() < len(r)
    assert np.abs(q - r)[inside].max() < 1
    assert np.abs(q.sum(1) - r.sum(1))[inside].max() <= 0.5 + 1e-9
    moved = q != np.round(r)
    assert moved.any() and not moved.all()
    # the moved entries of a row went one way, and came nearer a tie that way than any it left
    res = r - np.round(r)
    for row in np.flatnonzero(moved.any(1) & inside):
        step = q[row] - np.round(r[row])
        way = np.unique(step[moved[row]])
        assert len(way) == 1, row
        assert (way * res[row])[moved[row]].min() >= (way * res[row])[~moved[row]].max(), row
    on_grid = np.round(r)  # the toolchain's own weights: unchanged, but for the clamped
    assert np.array_equal(round_to_grid(on_grid), on_grid.clip(-128, 127))


@pytest.mark.lava
@pytest.mark.slow
@pytest.mark.parametrize("precision", list(CASES))
def test_snntorch_import_runs_identically_in_lava(precision, request):
    from deploy.lava_host import LavaNetwork

    _, _, net, x, emu = request.getfixturevalue(CASES[precision])
    assert_has_content(emu.counts, emu.voltage, layers=["1", "3"], where=f"{precision}: emulator")
    # split, on 2 frames: Lava's own Conv model too (slow), whose weights now pass 8 bits
    for stock, n in ((False, len(x)),) + (((True, 2),) if precision == "split" else ()):
        with LavaNetwork(net, T, capacity=n, stock_conv=stock) as lava:
            spikes, _, voltage = lava.run(x[:n].numpy())
        where = f"{precision}: emulator vs Lava{' (stock Conv)' if stock else ''}"
        assert set(spikes) == {"1", "3"}
        for name, s in spikes.items():
            np.testing.assert_array_equal(s, emu.spikes[name][:n].numpy(), err_msg=f"{where}: layer {name}")
        np.testing.assert_array_equal(voltage, emu.voltage[:n].numpy(), err_msg=where)
        assert_has_content(spikes, voltage, layers=["1", "3"], where=where)


# ---------------------------------------------------------------- refusals
def _graph_with(extra_name, extra):
    w = np.ones((4, 2, 3, 3), np.float32) / 8
    return nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": np.array([2, 8, 8])}),
               "conv": nir.Conv2d(input_shape=(8, 8), weight=w, stride=1, padding=1, dilation=1, groups=1,
                                  bias=np.zeros(4, np.float32)),
               extra_name: extra,
               "head": nir.Conv2d(input_shape=(8, 8), weight=np.ones((3, 4, 1, 1), np.float32), stride=1,
                                  padding=0, dilation=1, groups=1, bias=np.zeros(3, np.float32)),
               "output": nir.Output(output_type={"output": np.array([3, 8, 8])})},
        edges=[("input", "conv"), ("conv", extra_name), (extra_name, "head"), ("head", "output")])


@pytest.mark.parametrize("node", [nir.Threshold(threshold=np.ones((4, 8, 8), np.float32)),
                                  nir.Delay(delay=np.ones((4, 8, 8), np.float32))], ids=["Threshold", "Delay"])
def test_unsupported_node_is_refused_in_one_line(tmp_path, node):
    path = tmp_path / "bad.nir"
    nir.write(path, _graph_with("weird", node))
    with pytest.raises(ToolchainError) as e:
        import_nir(path, tmp_path / "bad.net", time_steps=4)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "'weird'" in msg and type(node).__name__ in msg
    assert not (tmp_path / "bad.net").exists()
    result = CliRunner().invoke(cli, ["import", "--nir", str(path), "--out", str(tmp_path / "bad.net"),
                                      "--time-steps", "4"])
    assert isinstance(result.exception, ToolchainError) and "'weird'" in str(result.exception)


def test_lif_graph_imports_with_given_time_steps_and_shape(tmp_path):
    """A LIF layer (snntorch's Leaky convention: r = tau/dt); NIR carries no T: --time-steps gives it."""
    graph = _graph_with("lif", nir.LIF(tau=np.full((4, 8, 8), 1e-3), r=np.full((4, 8, 8), 10.0),
                                       v_leak=np.zeros((4, 8, 8)), v_threshold=np.full((4, 8, 8), 0.5)))
    path = tmp_path / "lif.nir"
    nir.write(path, graph)
    with pytest.raises(ToolchainError, match="--input-shape"):
        import_nir(path, time_steps=4, input_shape=(3, 8, 8))
    with pytest.raises(ToolchainError, match="--time-steps"):
        import_nir(path, input_shape=(2, 8, 8))
    result = import_nir(path, tmp_path / "lif.net", time_steps=4, input_shape=(2, 8, 8))
    net = netfile.read(tmp_path / "lif.net")
    assert net.input_shape == (2, 8, 8) and net.layers[0].neuron.vDecay == 410
    x = spikes_in((2, 8, 8), n=2, t=4)
    assert min(agreement(result, x)["layers"].values()) >= 0.99
