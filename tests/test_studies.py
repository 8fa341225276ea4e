"""The studies: synaptic-operation counts against hand-computed numbers,
energy and Loihi 2 resources, ANN-to-SNN conversion, corruptions, report."""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch

import models
from deploy import synapses
from deploy.netfile import Layer, NetFile, Neuron
from deploy.synapses import Synapse
from toolchain.core.config import Config, save_config, to_dict
from toolchain.core.errors import ToolchainError
from toolchain.core.loihi import READOUT_NEURON
from toolchain.studies import convert, energy, report, robustness

LIF = Neuron(iDecay=4096, vDecay=0, vThMant=64)  # fires when one max weight (254 > 64 << 6 / 64) arrives


@pytest.fixture
def toy_net() -> NetFile:
    """input (1, 4, 4) -> conv 3x3 pad 1, 2 channels -> 2x2 sum pool -> 1x1 conv readout, 3 classes."""
    conv = Synapse("conv", np.full((2, 1, 3, 3), 254, dtype=np.int64), padding=(1, 1))
    pool = Synapse("pool", np.full((2, 2), 64, dtype=np.int64), stride=(2, 2))
    read = Synapse("conv", np.full((3, 2, 1, 1), 6, dtype=np.int64))
    layers = [Layer("conv1", "conv", (2, 4, 4), [0], [conv], LIF),
              Layer("pool1", "pool", (2, 2, 2), [1], [pool], LIF),
              Layer("readout", "conv", (3, 2, 2), [2], [read], Neuron(**READOUT_NEURON))]
    return NetFile(input_shape=(1, 4, 4), time_steps=3, layers=layers)


def test_fanout_of_padded_3x3_conv_counts_borders_exactly():
    syn = Synapse("conv", np.ones((2, 1, 3, 3), dtype=np.int64), padding=(1, 1))
    fmap = synapses.kind(syn.type).fanout(syn, (1, 4, 4), (2, 4, 4))
    # corners reach 4 output positions, edges 6, the inside 9
    assert fmap.tolist() == [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]
    assert synapses.connections(syn, (1, 4, 4), (2, 4, 4)) == (4 * 4 + 8 * 6 + 4 * 9) * 2  # 200, not 4*4*9*2
    counts = np.zeros((1, 4, 4))
    counts[0, 0, 0] = 1  # one spike in the corner: 4 positions x 2 channels
    counts[0, 1, 2] = 3  # three inside: 3 x 9 x 2
    assert synapses.synops(syn, counts, (2, 4, 4)) == 4 * 2 + 3 * 9 * 2


def test_fanout_of_transposed_conv_and_pool():
    up = Synapse("convT", np.ones((1, 5, 4, 4), dtype=np.int64), stride=(2, 2), padding=(1, 1))
    # k4 s2 p1 from 2 to 4: each input reaches 3 outputs per axis
    assert synapses.kind(up.type).fanout(up, (1, 2, 2), (5, 4, 4)).tolist() == [[9, 9], [9, 9]]
    assert synapses.connections(up, (1, 2, 2), (5, 4, 4)) == 4 * 9 * 5
    pool = Synapse("pool", np.ones((2, 2), dtype=np.int64), stride=(2, 2))
    # an odd size: the last column's windows read zeros past the edge, every pixel still feeds one
    assert synapses.kind(pool.type).fanout(pool, (3, 4, 5), (3, 2, 3)).tolist() == [[1] * 5] * 4
    assert synapses.connections(pool, (3, 4, 5), (3, 2, 3)) == 3 * 20


def test_counts_from_emulator_run_match_hand_numbers(toy_net):
    frames = torch.zeros((2, 1, 4, 4, 3))
    frames[0, 0, 0, 0, 0] = 1  # frame 0: one corner spike
    frames[1, 0, 1, 1, :] = 1  # frame 1: an inside pixel on all 3 steps
    c = energy.count_run(toy_net, frames)
    conv1, pool1, readout = c["layers"]
    assert c["input_spikes"] == (1 + 3) / 2
    assert conv1["synops"] == (4 * 2 + 3 * 9 * 2) / 2
    # a 2x2 pool of the conv's spikes: one operation per spike
    assert pool1["synops"] == conv1["spikes"] > 0
    assert readout["synops"] == pool1["spikes"] * 3
    assert [l["macs"] for l in c["layers"]] == [200, 2 * 16, 3 * 2 * 4]
    # every neuron updates on every step of the frame: T = 3 and depth D = 3, so 6 steps (no free steps)
    assert c["frame_steps"] == toy_net.frame_steps(3) == 6
    assert [l["neuron_updates"] for l in c["layers"]] == [32 * 6, 8 * 6, 12 * 6]
    e = energy.energy(c, energy.EnergyModel(e_ac_pj=1.0, e_mac_pj=5.0, loihi_synop_pj=10.0, loihi_neuron_pj=2.0))
    syn = conv1["synops"] + pool1["synops"] + readout["synops"]
    assert e["synops_per_frame"] == syn
    assert e["ann_snn_ratio"] == pytest.approx((200 + 32 + 24) * 5.0 / syn)
    assert e["loihi_uj"] == pytest.approx((syn * 10.0 + (192 + 48 + 72) * 2.0) * 1e-6)


def test_loihi_resources_use_exported_bit_widths_and_core_limits(toy_net):
    r = energy.resources(toy_net, energy.CoreModel(neurons_per_core=16, synaptic_memory_kib=1))
    conv1, pool1, readout = r["layers"]
    assert (conv1["weight_bits"], pool1["weight_bits"], readout["weight_bits"]) == (8, 7, 3)  # 127, 32, 3 stored
    assert conv1["synaptic_memory_kib"] == 200 * 8 / 8192
    assert conv1["cores"] == 2  # 32 neurons at 16 per core
    assert r["cores"] == 2 + 1 + 1 and r["neurons"] == 32 + 8 + 12


@pytest.fixture
def ann_ckpt(tmp_path, data_cfg):
    from toolchain.core import checkpoint

    cfg = Config(data=data_cfg)
    cfg.model.name = "spiking-deeplab-tiny"
    cfg.train.ann = True
    torch.manual_seed(0)
    ann = models.from_config(cfg, 2, 6, ann=True)
    path = tmp_path / "ann" / "checkpoint.pt"
    checkpoint.save(path, model=ann.state_dict(), config=to_dict(cfg),
                    dataset=dict(in_channels=2, num_classes=6, class_names=[f"c{k}" for k in range(6)]))
    return path


def test_a_converted_pool_passes_full_rate_and_needs_all_its_inputs():
    """Loihi fires on voltage > threshold: a pool weight of exactly (or, rounded
    down, under) threshold / k^2 halves the rate of a pool whose inputs all spike."""
    from toolchain.core.loihi import W_SCALE, cuba_run

    for mant in range(24, 512):
        threshold = mant / W_SCALE
        for k2 in (4, 9):
            w = round(convert.pool_weight(threshold, k2) * W_SCALE)
            assert w % 2 == 0  # on slayer's 8-bit grid, so the export keeps it
            # one input short waits a step, where the 2/64 grid is fine enough to tell them apart
            short = [(k2 - 1, [False, True] * 3)] if mant >= 2 * k2 * (k2 - 1) else []
            for inputs, fires in [(k2, [True] * 6)] + short:
                a = torch.full((6, 1), float(inputs * w), dtype=torch.float64)
                spikes, _ = cuba_run(a.long(), 4096, 0, mant)
                assert spikes[:, 0].tolist() == fires, (threshold, k2, inputs)


def test_a_pool_with_its_own_threshold_passes_full_rate_and_needs_all_its_inputs():
    """thresholds="layer": a pool's synapses weigh POOL_SYNAPSE and its threshold
    is one 1/64 step under their sum: all k2 inputs fire it every step, k2 - 1
    every other step."""
    from toolchain.core.loihi import W_SCALE, cuba_run

    w = round(convert.POOL_SYNAPSE * W_SCALE)
    for k2 in (4, 9):
        mant = round(convert.pool_threshold(k2) * W_SCALE)
        for inputs, fires in [(k2, [True] * 6), (k2 - 1, [False, True] * 3)]:
            spikes, _ = cuba_run(torch.full((6, 1), inputs * w, dtype=torch.int64), 4096, 0, mant)
            assert spikes[:, 0].tolist() == fires, (k2, inputs)


def test_each_converted_layer_gets_its_own_threshold_and_spans_the_8bit_range():
    """thresholds="layer" scales each layer's weights and threshold together
    until its largest weight fills Loihi's 8 bits; with one threshold for the
    net the layer with the largest weights decides and the others keep a
    fraction of the range (in a random net its spikes differ from the float
    net's as much either way; on a trained one, docs/results.md, the 8-bit net
    scores where its float net does). No step's input may overflow Loihi's
    24-bit current: a wide layer's threshold stops below that."""
    from lava.lib.dl import slayer

    from toolchain.data import encode

    torch.manual_seed(2)
    ann = models.build("spiking-deeplab-tiny", 2, 4, (16, 16), ann=True)
    frames = torch.rand(4, 2, 16, 16)
    stats = convert.activation_stats(ann, [frames], "layer")
    x = encode(frames, "rate", 16)
    span = {}
    for mode in convert.THRESHOLDS:
        shell = models.build("spiking-deeplab-tiny", 2, 4, (16, 16))
        info = convert.convert(ann, shell, stats, scale=0.5, thresholds=mode)
        snn = models.build("spiking-deeplab-tiny", 2, 4, (16, 16), models.NeuronParams(voltage_decay=0.0),
                           layer_thresholds=info["layer_thresholds"])
        snn.load_state_dict(shell.state_dict())
        net = convert_export(snn, 16)
        span[mode] = {layer.name: int(np.abs(layer.synapses[0].weight).max()) for layer in net.layers[:-1]
                      if layer.type == "conv"}
        with torch.no_grad():
            _, spikes = models.set_quantized(snn, True).eval()(x)
        assert all(float(s.mean()) > 0.001 for s in spikes.values()), mode
        if mode == "net":
            assert set(info["layer_thresholds"].values()) == {info["threshold"]}
        else:
            assert len(set(info["layer_thresholds"].values())) >= 4
    assert min(span["layer"].values()) >= 0.98 * 254 - 2, span
    assert min(span["net"].values()) < 0.5 * 254, span
    wide = slayer.synapse.Conv(1024, 1, 3)
    w = torch.full((1, 1024, 3, 3, 1), 0.01, dtype=torch.float64)
    theta = convert.layer_threshold([(wide, w)])
    assert theta * float(w.sum()) <= convert.INPUT_MAX and theta * 0.01 < 0.1 * convert.W_MAX


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["layer", "channel"])
def test_converted_net_approaches_its_ann_twin_with_many_steps(norm):
    torch.manual_seed(1)
    ann = models.build("spiking-deeplab-tiny", 2, 4, (16, 16), ann=True)
    frames = torch.rand(6, 2, 16, 16) * 0.8
    stats = convert.activation_stats(ann, [frames[:3]], norm)
    snn_shell = models.build("spiking-deeplab-tiny", 2, 4, (16, 16))
    info = convert.convert(ann, snn_shell, stats, scale=0.9)
    snn = models.build("spiking-deeplab-tiny", 2, 4, (16, 16), models.NeuronParams(voltage_decay=0.0),
                       layer_thresholds=info["layer_thresholds"])
    snn.load_state_dict(snn_shell.state_dict())
    net = convert_export(snn, 300)
    for layer in net.layers:  # every weight fits Loihi's 8 bits without clamping
        for syn in layer.synapses:
            assert np.abs(syn.weight).max() <= 254
    from deploy import Deployed
    from deploy.evaluation import NetPredictor
    from toolchain.data import encode

    x = encode(frames, "rate", 300)
    with torch.no_grad():
        ref = models.predict(ann, frames, (16, 16))[0].argmax(1)
    agree = float((NetPredictor(Deployed(net))(x) == ref).float().mean())
    short = float((NetPredictor(Deployed(convert_export(snn, 3)))(encode(frames, "rate", 3)) == ref).float().mean())
    assert agree > 0.9 and agree > short


def test_a_twin_under_its_conversions_measured_transfer_tracks_the_spike_rates_closer():
    """recording_transfer: every hidden node's curve starts at 0, rises, stays
    in [0, 1] and bends below the ReLU's line (Loihi's neuron resets to zero,
    losing what it integrated past the threshold), and its spread at a knot
    is the standard deviation of the rates there; the twin that takes the
    curves (set_transfer) predicts every layer's spike rates, x its lambda,
    closer than the ReLU twin clipped at the lambdas does."""
    from models.ann import TRANSFER_KNOTS, TRANSFER_STEP
    from toolchain.data import encode

    torch.manual_seed(3)
    ann = models.build("spiking-deeplab-tiny", 2, 4, (24, 24), ann=True)
    frames = torch.rand(4, 2, 24, 24)
    stats = convert.activation_stats(ann, [frames], "layer")
    shell = models.build("spiking-deeplab-tiny", 2, 4, (24, 24))
    info = convert.convert(ann, shell, stats, scale=0.5)
    snn = models.build("spiking-deeplab-tiny", 2, 4, (24, 24), models.NeuronParams(voltage_decay=0.0),
                       layer_thresholds=info["layer_thresholds"])
    snn.load_state_dict(shell.state_dict())
    x = encode(frames, "rate", 32)
    with torch.no_grad(), convert.recording_transfer(snn, 32) as recorder:
        _, spikes = snn(x)
    curves, spreads = recorder.curves(), recorder.spreads()
    names = [n.name for n in snn.nodes[:-1]]
    assert sorted(curves) == sorted(names) == sorted(spreads) and all(spikes[n].sum() > 0 for n in names)
    r = np.arange(TRANSFER_KNOTS) * TRANSFER_STEP
    for name, rates in curves.items():
        rates = np.array(rates)
        assert rates[0] == 0 and (np.diff(rates) >= 0).all() and rates.max() <= 1, name
        assert (rates[1:20] < r[1:20]).all(), name  # below the line up to r = 1
        assert spreads[name][0] == 0 and 0 <= min(spreads[name]) and max(spreads[name]) <= 0.5, name
    # the spread at a knot conv1 reached often: the standard deviation of its neurons' rates there
    with torch.no_grad():
        knot = torch.round(snn.nodes[0].current([x]).sum(-1) / (32 * info["layer_thresholds"]["conv1"]) / TRANSFER_STEP)
    rate = spikes["conv1"].sum(-1) / 32
    k = int(torch.mode(knot[knot > 0]).values)
    at = rate[knot == k].double()
    assert at.numel() >= convert.MIN_SAMPLES and float(at.std()) > 0.01
    assert spreads["conv1"][k] == pytest.approx(float(at.std(unbiased=False)), rel=1e-4)
    levels = {k: max(v) for k, v in info["lambdas"].items()}
    rates = {n: spikes[n].sum(-1) / 32 * levels[n] for n in names}
    twin, clipped = copy.deepcopy(ann), copy.deepcopy(ann)
    twin.set_transfer(levels, curves)
    clipped.clip_at(levels)
    with torch.no_grad():
        _, relu = clipped(x)
        _, tuned = twin(x)
    for n in names:
        assert (tuned[n] - rates[n]).abs().mean() < (relu[n] - rates[n]).abs().mean(), n


def convert_export(snn, t):
    from toolchain.studies.sweep import quiet_export
    return quiet_export(snn, t)


def test_convert_checkpoint_is_an_ordinary_spiking_checkpoint(ann_ckpt, tmp_path, data_cfg):
    out = tmp_path / "snn" / "checkpoint.pt"
    info = convert.convert_checkpoint(ann_ckpt, out, norm="channel", percentile=99.0, frames=4, log=lambda s: None)
    snn, cfg = models.load_checkpoint(out)
    assert isinstance(snn, models.SpikingGraph) and not cfg.train.ann
    assert cfg.model.threshold == info["threshold"] and cfg.model.voltage_decay == 0.0
    assert cfg.model.layer_thresholds == info["layer_thresholds"]
    assert len(info["lambdas"]["conv1"]) == 16  # one per channel
    net = convert_export(snn, 4)
    assert [layer.neuron.vThMant for layer in net.layers[:-1]] == [
        round(info["layer_thresholds"][layer.name] * 64) for layer in net.layers[:-1]]
    assert net.layers[0].neuron.vDecay == 0
    with pytest.raises(ToolchainError, match="spiking model"):
        convert.convert_checkpoint(out, tmp_path / "again.pt", log=lambda s: None)
    with pytest.raises(ToolchainError, match="percentile"):
        convert.convert_checkpoint(ann_ckpt, tmp_path / "x.pt", percentile=0, frames=2, log=lambda s: None)


def test_layer_losses_splice_each_layers_spike_rates_into_the_twin(ann_ckpt, tmp_path):
    """`eval --twin`'s table: the twin's own answer first; then the twin with
    one layer's activations replaced by the spiking net's rates x lambda
    (replacing a layer by the twin's own activations changes nothing); the
    last hidden layer's row is the spiking net's own class maps, its readout
    being linear in those rates, and every layer spiked."""
    from toolchain.core.metrics import SegmentationMetric
    from toolchain.data import build_dataset
    from toolchain.data.dataset import IGNORE, draw
    from toolchain.train.loop import evaluate

    out = tmp_path / "snn.pt"
    info = convert.convert_checkpoint(ann_ckpt, out, percentile=99.0, scale=0.5, frames=4, log=lambda s: None,
                                      overrides=["data.time_steps=32"])
    snn, cfg = models.load_checkpoint(out)
    ann, _ = models.load_checkpoint(ann_ckpt)
    ds = build_dataset(cfg.data, "test")
    rows = convert.layer_losses(ann, snn, info["lambdas"], ds, batch_size=2)
    hidden = [n.name for n in snn.nodes[:-1]]
    assert list(rows) == ["twin", *hidden, "spiking"]
    twin = evaluate(ann, ds, torch.device("cpu"), batch_size=2)
    assert rows["twin"]["miou"] == twin["miou"] and rows["twin"]["pixel_acc"] == twin["pixel_acc"]
    x, y = draw(ds, range(len(ds)))
    z, acts = ann(x)
    assert all(torch.equal(ann(x, {name: acts[name]})[0], z) for name in hidden)
    scores, spikes = models.predict(snn, x, y.shape[-2:])
    assert all(float(spikes[name].sum()) > 0 for name in hidden)
    own = SegmentationMetric(ds.num_classes, IGNORE)
    own.update(scores.argmax(1), y)
    assert len(torch.unique(scores.argmax(1))) > 1  # maps with content, not one class everywhere
    assert rows[hidden[-1]] == rows["spiking"] == own.compute()
    # the rows differ: the spikes change the twin's answer somewhere
    assert len({round(r["pixel_acc"], 9) for r in rows.values()}) > 1


def test_scale_auto_converts_at_the_scale_that_scores_best_on_training_frames(ann_ckpt, tmp_path):
    from toolchain.core import checkpoint

    info = convert.convert_checkpoint(ann_ckpt, tmp_path / "auto.pt", percentile=99.0, scale="auto", frames=4,
                                      log=lambda s: None)
    search = info["scale_search"]
    assert list(search) == [f"{s:g}" for s in convert.AUTO_SCALES]
    assert search[f"{info['scale']:g}"] == max(search.values())
    assert info["scale"] == next(s for s in convert.AUTO_SCALES if search[f"{s:g}"] == max(search.values()))
    # the checkpoint is the conversion at that scale, as if it had been given
    fixed = convert.convert_checkpoint(ann_ckpt, tmp_path / "fixed.pt", percentile=99.0, scale=info["scale"],
                                       frames=4, log=lambda s: None)
    a, b = checkpoint.load(tmp_path / "auto.pt")["model"], checkpoint.load(tmp_path / "fixed.pt")["model"]
    assert fixed["threshold"] == info["threshold"] and all(torch.equal(a[k], b[k]) for k in a)


def test_logit_scale_is_the_least_squares_factor_from_the_spiking_scores_to_the_twins():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 5, 6, generator=g)
    noise = 0.01 * torch.randn(3, 4, 5, 6, generator=g)
    twin = lambda x: (z, {})  # noqa: E731
    snn = lambda x: (z / 7 + noise, {})  # noqa: E731
    c = convert.logit_scale(twin, snn, [None])
    s = z / 7 + noise
    assert c == pytest.approx(float((s * z).sum() / (s * s).sum())) and c == pytest.approx(7, rel=0.02)
    # scores that disagree with the twin's in sign leave the loss's units alone
    assert convert.logit_scale(twin, lambda x: (-s, {}), [None]) == 1.0


def test_a_converted_checkpoint_fine_tunes_with_the_flags_convert_prints(ann_ckpt, tmp_path, data_cfg):
    from toolchain.core.config import load_config
    from toolchain.train.loop import train

    out, lines = tmp_path / "snn.pt", []
    info = convert.convert_checkpoint(ann_ckpt, out, percentile=99.0, frames=4, log=lines.append)
    flags = re.findall(r"--set (\S+)", next(line for line in lines if line.startswith("fine-tune it with")))
    assert flags == [f"train.init={out}", f"model.threshold={info['threshold']!r}",
                     *[f"model.layer_thresholds.{k}={v!r}" for k, v in info["layer_thresholds"].items()],
                     "model.voltage_decay=0.0", f"train.logit_scale={info['logit_scale']!r}"]
    assert flags[1:-1] == info["neurons"]  # in convert.json for a script to pass on
    cfg = Config(data=data_cfg)
    cfg.train.epochs, cfg.train.batch_size, cfg.train.qat = 1, 4, True
    with pytest.raises(ToolchainError, match="other neurons"):  # the spiking defaults: not the converted neurons
        train(load_config(None, flags[:1], base=cfg), tmp_path / "refused", log=lambda *_: None)
    train(load_config(None, flags, base=cfg), tmp_path / "tuned", log=lambda *_: None)
    _, tuned = models.load_checkpoint(tmp_path / "tuned" / "checkpoint.pt")
    assert tuned.model.threshold == info["threshold"] and tuned.model.voltage_decay == 0.0
    assert tuned.model.layer_thresholds == info["layer_thresholds"]


def test_a_twin_tuned_under_its_conversions_transfer_converts_again_at_its_levels(ann_ckpt, tmp_path, data_cfg):
    """The flags convert prints for train.ann_transfer tune the twin under the
    conversion's levels and measured curves (kept in its checkpoint), with
    train.ann_transfer_noise its scatter x the factor; that twin converts at
    exactly those levels. Without a twin to start from, or from a checkpoint
    that is no conversion or holds no curves, it is refused."""
    from toolchain.cli.train import summary_table
    from toolchain.core.config import load_config
    from toolchain.train.loop import train

    out, lines = tmp_path / "snn.pt", []
    info = convert.convert_checkpoint(ann_ckpt, out, percentile=99.0, frames=4, log=lines.append)
    flags = re.findall(r"--set (\S+)", next(line for line in lines if "tune the twin under" in line))
    assert flags == [f"train.init={ann_ckpt}", f"train.ann_transfer={out}",
                     f"train.logit_scale={info['transfer_logit_scale']!r}"]
    cfg = Config(data=data_cfg)
    cfg.model.name = "spiking-deeplab-tiny"
    cfg.train.epochs, cfg.train.batch_size = 1, 4
    with pytest.raises(ToolchainError, match="needs train.ann=true and train.init"):
        train(load_config(None, flags[1:], base=cfg), tmp_path / "refused", log=lambda *_: None)
    cfg.train.ann = True
    result = train(load_config(None, flags, base=cfg), tmp_path / "tuned", log=lambda *_: None)
    assert "ANN twin under its conversion's spike rates (1 epochs, float)" in summary_table(result)
    twin, _ = models.load_checkpoint(tmp_path / "tuned" / "checkpoint.pt")
    levels = {k: max(v) for k, v in info["lambdas"].items() if k != "classifier"}
    assert twin.transfer_levels() == pytest.approx(levels)
    assert all(n.rates.tolist() == pytest.approx(info["transfer"][n.name]) for n in twin.nodes[:-1])
    assert not any(n.spread.any() for n in twin.nodes)
    # train.ann_transfer_noise: the measured scatter, x the factor, goes with the curves
    noisy = train(load_config(None, flags + ["train.ann_transfer_noise=1.5"], base=cfg), tmp_path / "noisy",
                  log=lambda *_: None)
    assert "under its conversion's spike rates and 1.5x their scatter" in summary_table(noisy)
    noisy_twin, _ = models.load_checkpoint(tmp_path / "noisy" / "checkpoint.pt")
    assert any(max(v) > 0 for v in info["transfer_spread"].values())
    assert all(n.spread.tolist() == pytest.approx([1.5 * v for v in info["transfer_spread"][n.name]])
               for n in noisy_twin.nodes[:-1])
    with pytest.raises(ToolchainError, match="for a twin tuned under train.ann_transfer"):
        train(load_config(None, [flags[0], "train.ann_transfer_noise=1"], base=cfg), tmp_path / "no",
              log=lambda *_: None)
    lines.clear()
    again = convert.convert_checkpoint(tmp_path / "tuned" / "checkpoint.pt", tmp_path / "again.pt", percentile=99.0,
                                       scale="auto", frames=4, log=lines.append)
    assert any("layer-wise, at its tuned levels" in line for line in lines) and "scale_search" not in again
    assert again["scale"] == 1.0 and {k: max(v) for k, v in again["lambdas"].items() if k != "classifier"} == \
        pytest.approx(levels)
    # its scores counted in the units its loss saw: x the twin's logit_scale
    snn, snn_cfg = models.load_checkpoint(tmp_path / "again.pt", quantized=False)
    twin_units = models.load_checkpoint(tmp_path / "tuned" / "checkpoint.pt")[1].train.logit_scale
    measured = convert.logit_scale(twin, snn, convert.training_batches(snn_cfg, 4, 4))
    assert twin_units == info["transfer_logit_scale"] != 1
    assert snn_cfg.train.ann_transfer is None and not snn_cfg.train.ann  # the twin's tuning is not the net's
    assert again["logit_scale"] == pytest.approx(twin_units * measured, rel=1e-4) == snn_cfg.train.logit_scale
    with pytest.raises(ToolchainError, match="--norm layer"):
        convert.convert_checkpoint(tmp_path / "tuned" / "checkpoint.pt", tmp_path / "x.pt", norm="channel",
                                   frames=4, log=lambda s: None)
    channel = tmp_path / "channel.pt"
    convert.convert_checkpoint(ann_ckpt, channel, norm="channel", frames=4, log=lambda s: None)
    for given, why in [(ann_ckpt, "not a `toolchain convert` checkpoint"), (channel, "holds no transfer curves")]:
        with pytest.raises(ToolchainError, match=re.escape(why)):
            train(load_config(None, [flags[0], f"train.ann_transfer={given}"], base=cfg), tmp_path / "no",
                  log=lambda *_: None)


def test_corruptions_change_frames_as_their_strength_says():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    frame = torch.full((2, 32, 32), 0.5)
    assert robustness.gaussian_blur(frame, 1.0, g()).allclose(frame)  # a flat image stays flat
    sp = robustness.salt_pepper(frame, 0.2, g())
    assert 0.15 < float((sp != 0.5).float().mean()) < 0.25
    dropped = robustness.dropped_events(frame, 0.5, g())
    assert float(dropped.mean()) == pytest.approx(0.25, abs=0.03)
    assert robustness.hot_pixels(torch.zeros(2, 32, 32), 0.1, g()).sum() == pytest.approx(0.1 * 1024, rel=0.3)
    assert float(robustness.background_activity(torch.zeros(2, 32, 32), 0.2, g()).mean()) == pytest.approx(
        0.2 / robustness.FULL_SCALE, rel=0.2)
    spikes = (torch.rand(1, 2, 8, 8, 20, generator=g()) < 0.1).float()
    jittered = robustness.timestamp_jitter(spikes, 2, g())
    assert torch.equal(jittered.sum(-1) > 0, spikes.sum(-1) > 0)  # same pixels, other times
    assert not torch.equal(jittered, spikes)
    assert torch.equal(robustness.timestamp_jitter(spikes, 0, g()), spikes)


def test_robustness_study_scores_snn_and_ann_at_every_strength(ann_ckpt, tmp_path):
    snn_path = tmp_path / "snn.pt"
    convert.convert_checkpoint(ann_ckpt, snn_path, frames=4, log=lambda s: None)
    r = robustness.robustness([("snn", str(snn_path)), ("ann", str(ann_ckpt))],
                              ["gaussian_noise", "timestamp_jitter"], frames=2, time_steps=4, log=lambda s: None)
    assert len(r["rows"]) == 2 * 2 * 4
    assert {row["kind"] for row in r["rows"]} == {"SNN", "ANN"}
    mid = robustness.middle(r)
    assert mid["snn"]["gaussian_noise"][0] == 0.1 and mid["ann"]["timestamp_jitter"][0] == 2
    png = robustness.plot(r, tmp_path / "robustness.png")
    assert png.stat().st_size > 1000
    with pytest.raises(ToolchainError, match="unknown"):
        robustness.robustness([("ann", str(ann_ckpt))], ["fog"], frames=1)


def test_report_gathers_metrics_and_studies_into_markdown_and_html(tmp_path, toy_net):
    run = tmp_path / "run"
    (run / "studies").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(dict(
        model="spiking-deeplab-tiny", epochs=2, quantized=True, miou=0.3141, pixel_acc=0.5,
        untrained_miou=0.01, majority_miou=0.08, iou_per_class={"flat": 0.6}, firing={"conv1": 0.05})))
    sweep = dict(steps=[5, 50], rows=[dict(label="conv", kind="converted", time_steps=t, miou=m, frames=2)
                                      for t, m in ((5, 0.0833), (50, 0.2545))])
    (run / "studies" / "sweep.json").write_text(json.dumps(sweep))
    frames = torch.zeros((1, 1, 4, 4, 3))
    frames[0, 0, 1, 1, :] = 1
    c = energy.count_run(toy_net, frames)
    (run / "studies" / "energy.json").write_text(json.dumps(dict(
        checkpoint="run/checkpoint.pt", frames=1, time_steps=3, backend="emulator", layers=c["layers"], energy=energy.energy(c),
        resources=energy.resources(toy_net))))
    from PIL import Image
    Image.new("RGB", (8, 8)).save(run / "gallery.png")
    md, hp = report.build([run], tmp_path / "report")
    text = md.read_text()
    assert "31.41" in text and "25.45" in text and "T=50" in text
    assert "ANN/SNN energy ratio" in text and "Loihi 2 resource estimate" in text
    assert "](img/01_gallery.png)" in text and (tmp_path / "report" / "img" / "01_gallery.png").is_file()
    page = hp.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<td>31.41</td>" in page
    assert "<img src=\"data:image/png;base64," in page and "src=\"img/" not in page  # one self-contained file
    with pytest.raises(ToolchainError, match="no metrics.json"):
        report.build([tmp_path / "report" / "img"], tmp_path / "r2")


def test_report_leads_with_the_summary_and_reports_an_ann_twin_as_an_ann(tmp_path):
    run = tmp_path / "demo"
    ious = {"flat": 0.7, "human": float("nan")}
    for name, ann, miou in (("train", False, 0.30), ("ann", True, 0.25)):
        (run / name).mkdir(parents=True)
        (run / name / "metrics.json").write_text(json.dumps(dict(
            model="spiking-deeplab-tiny", epochs=1, quantized=True, miou=miou, pixel_acc=0.6, untrained_miou=0.01,
            majority_miou=0.08, iou_per_class=ious, firing={"conv1": 0.05})))
        cfg = Config()
        cfg.train.qat, cfg.train.ann = True, ann  # the demo trains its twin from the QAT config
        save_config(cfg, run / name)
    (run / "model.net.json").write_text(json.dumps(dict(
        net=str(run / "model.net"), layers=7, neurons=100, synapses=1000, miou_float=0.29, miou_quantized=0.2875,
        frames=4)))
    for backend in ("lava", "emulator"):
        (run / f"run-{backend}.json").write_text(json.dumps(dict(
            net="demo/model.net", backend=backend, split="test", frames=4, time_steps=10, miou=0.2811,
            pixel_acc=0.7, iou_per_class=ious, frames_per_s=1.0, spikes_per_frame={"conv1": 1500.0})))
    md, hp = report.build([run], tmp_path / "report", title="Demo")
    text = md.read_text()
    summary = text.split("## Summary", 1)[1].split("\n\n", 2)[1]
    assert text.index("## Summary") < text.index("Training:")
    rows = {r.split(" | ")[0].strip("| "): r.split(" | ") for r in summary.splitlines()[2:]}
    # float, quantized, emulator, Lava, frames, spikes
    assert rows["train (model.net)"][2:8] == ["29.00", "28.75", "28.11", "28.11", "4", "1,500"]
    assert "SNN, trained 8-bit (QAT)" in rows["train (model.net)"][1]
    ann = rows["ann"]
    assert "ANN" in ann[1] and "SNN" not in ann[1] and "QAT" not in ann[1]
    assert ann[2:6] == ["25.00", "n/a", "n/a", "n/a"] and ann[7] == "n/a"  # no quantized, emulator, Lava, spikes
    assert "train: Lava mIoU 28.11% = emulator 28.11% on the same 4 frames." in text
    ann_details = text.split("Training: ann", 1)[1].split("### ", 1)[0]
    assert "mean ReLU activation per neuron" in ann_details and "spikes per neuron" not in ann_details
    assert "quantized" not in ann_details.replace("not quantized", "")
    page = hp.read_text()
    assert page.index('<table id="summary">') < page.index("<h2>Details")


def _pareto_point(label, budget, miou, synops, loihi):
    return dict(label=label, budget=budget, time_steps=8, net=f"front/{label}/model.net", frames=4, miou=miou,
                iou_per_class={"flat": miou}, synops_per_frame=synops, neuron_updates_per_frame=2.5e5,
                spikes_per_frame=synops / 9, snn_45nm_uj=synops * 0.9e-6, loihi_uj=loihi,
                macs_per_frame=3.2e7, ann_45nm_uj=147.2)


@pytest.mark.parametrize("cheapest_loihi", [120.0, 294.4])
def test_report_shows_the_accuracy_energy_front_against_the_ann_twin(tmp_path, cheapest_loihi):
    from PIL import Image

    front = tmp_path / "run" / "front"
    front.mkdir(parents=True)
    points = [_pareto_point("start", None, 0.3141, 3.1e6, 400.0),
              _pareto_point("budget 1e+06", 1e6, 0.2718, 1.2e6, cheapest_loihi)]
    (front / "pareto.json").write_text(json.dumps(dict(
        checkpoint="run/train/checkpoint.pt", epochs=2, lr=1e-4, frames=4, points=points,
        ann=dict(label="ANN twin", miou=0.3333, macs_per_frame=3.2e7, ann_45nm_uj=147.2, frames=4))))
    Image.new("RGB", (8, 8)).save(front / "pareto.png")
    md, hp = report.build([tmp_path / "run"], tmp_path / "report")
    text = md.read_text()
    section = text.split("## Accuracy against energy", 1)[1].split("\n## ", 1)[0]
    assert "(4 frames, front)" in section.splitlines()[0]
    assert "| point | T | mIoU % | SynOps/frame | neuron updates/frame | 45 nm uJ | Loihi uJ |" in section
    assert "| start | 8 | 31.41 | 3.1e+06 | 2.5e+05 | 2.79 | 400 |" in section
    assert f"| budget 1e+06 | 8 | 27.18 | 1.2e+06 | 2.5e+05 | 1.08 | {cheapest_loihi:.4g} |" in section
    assert "| ANN twin | n/a | 33.33 | 3.2e+07 MACs | n/a | 147.2 | n/a |" in section
    if cheapest_loihi < 147.2:
        assert ("On the Loihi figures 1 of 2 spiking points cost less than the ANN twin's 147 uJ per frame at "
                "45 nm (mIoU 33.33%): budget 1e+06 120 uJ (mIoU 27.18%).") in section
    else:
        assert ("No spiking point costs less on the Loihi figures than the ANN twin's 147 uJ per frame at 45 nm "
                "(mIoU 33.33%): the cheapest, budget 1e+06 at 294 uJ (mIoU 27.18%), is 2.00x dearer.") in section
    assert "](img/01_pareto.png)" in section and (tmp_path / "report" / "img" / "01_pareto.png").is_file()
    page = hp.read_text()
    assert "<h3>Accuracy against energy" in page and "<td>3.2e+07 MACs</td>" in page and "<td>n/a</td>" in page
    assert page.count("<img src=\"data:image/png;base64,") == 1


def test_pareto_answer_without_an_ann_twin_says_there_is_nothing_to_compare():
    result = dict(checkpoint="c.pt", epochs=1, lr=1e-3, frames=4, ann=None,
                  points=[_pareto_point("start", None, 0.3, 3e6, 10.0)])
    assert report.pareto_answer(result).startswith("No ANN twin on this front")
