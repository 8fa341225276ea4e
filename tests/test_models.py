"""Model registry, presets, firing at init, quantization switch, export folding, checkpoints."""
import pytest
import torch
from lava.lib.dl import slayer

import models
from models import NeuronParams, build, describe, fold_for_export, set_quantized
from models.fused_cuba import cuba_forward
from toolchain.core.errors import ToolchainError


def _spikes(n, c, h, w, t, rate=0.15, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, h, w, t, generator=g) < rate).float()


def test_registry_names_and_paper_parameter_counts():
    assert {"spiking-deeplab", "spiking-fcn", "spiking-deeplab-tiny", "spiking-fcn-tiny"} <= set(models.names())
    assert describe("spiking-deeplab") == pytest.approx(4.1e6, rel=0.02)
    assert describe("spiking-fcn") == pytest.approx(13.6e6, rel=0.02)
    assert describe("spiking-deeplab-tiny") < 100_000


def test_unknown_model_is_a_clean_error():
    with pytest.raises(ToolchainError, match="not registered"):
        build("no-such-net", 2, 6, (64, 64))


@pytest.mark.parametrize("name,channels", [("spiking-deeplab-tiny", 2), ("spiking-fcn-tiny", 2),
                                           ("spiking-deeplab-small", 6), ("spiking-deeplab-tiny-decoder", 6),
                                           ("spiking-deeplab-tiny-r3", 6)])
def test_spikes_reach_every_layer_at_init(name, channels):
    torch.manual_seed(0)
    model = build(name, channels, 6, (64, 64), quantized=True)
    with torch.no_grad():
        readout, spikes = model(_spikes(2, channels, 64, 64, 16))
    rates = models.firing_rates(spikes)
    print(name, {k: round(v, 4) for k, v in rates.items()})
    assert all(r > 0 for r in rates.values()), rates
    assert readout.abs().sum() > 0


def test_small_deeplab_is_the_paper_layers_at_a_quarter_width():
    small = build("spiking-deeplab-small", 2, 6, (64, 64))
    convs = [n.synapses[0].out_channels for n in small.nodes if isinstance(n.synapses[0], slayer.synapse.Conv)]
    assert convs == [16, 16, 32, 32, 64, 64, 64, 256, 6]
    assert small.pipeline_depth == build("spiking-deeplab", 2, 6, (64, 64)).pipeline_depth == 11


def test_deeplab_structure_matches_paper():
    model = build("spiking-deeplab", 2, 6, (64, 64))
    convs = [n.synapses[0] for n in model.nodes if isinstance(n.synapses[0], slayer.synapse.Conv)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 1024, 6]
    assert [c.dilation[0] for c in convs] == [1, 1, 1, 1, 1, 2, 2, 12, 1]
    assert sum(isinstance(n.synapses[0], slayer.synapse.Pool) for n in model.nodes) == 2
    assert model.nodes[-1].is_readout
    assert all(getattr(s, "bias", None) is None for n in model.nodes for s in n.synapses)


def test_fcn_has_three_upsampling_stages_with_additive_skips():
    model = build("spiking-fcn-tiny", 2, 6, (64, 64))
    ups = [n for n in model.nodes if any(isinstance(s, slayer.synapse.ConvTranspose) for s in n.synapses)]
    assert len(ups) == 3 and all(len(n.sources) == 2 for n in ups)
    readout, _ = model(_spikes(1, 2, 64, 64, 4))
    assert readout.shape == (1, 6, 64, 64)


@pytest.mark.parametrize("hw", [(64, 64), (50, 87)])
def test_decoder_reads_out_at_the_input_resolution_through_delayed_low_level_skips(hw):
    """The DeepLabv3+-style decoder: two x2 stages, each a transposed conv of
    the coarser path plus a 1x1 projection of conv2 / conv1, the skip delayed
    so that both inputs of a stage belong to the same frame."""
    model = build("spiking-deeplab-tiny-decoder", 6, 6, hw)
    stages = [n for n in model.nodes if n.name.startswith("decoder")]
    assert [n.sources for n in stages] == [["conv4", "conv2"], ["decoder1", "conv1"]]
    assert [n.synapses[0].out_channels for n in stages] == [32, 16]
    depth = {"input": 0}
    for n in model.nodes:
        depth[n.name] = max(depth[s] + 1 + d for s, d in zip(n.sources, n.delays, strict=True))
        if n in stages:  # both paths arrive together
            assert depth[n.sources[0]] == depth[n.sources[1]] + n.delays[1]
    readout, _ = model(_spikes(1, 6, *hw, 3))
    assert readout.shape == (1, 6, *hw)


def test_odd_input_sizes_upsample_back_exactly():
    model = build("spiking-fcn-tiny", 2, 6, (50, 87))
    readout, _ = model(_spikes(1, 2, 50, 87, 3))
    assert readout.shape == (1, 6, 50, 87)


def test_quantized_weights_lie_on_loihi_grid_and_switch_off():
    torch.manual_seed(0)
    model = build("spiking-deeplab-tiny", 2, 6, (32, 32), quantized=True)
    x = _spikes(1, 2, 32, 32, 12)
    syn = model.nodes[0].synapses[0]
    wq = syn._pre_hook_fx(syn.weight)
    assert torch.allclose(wq * 32, torch.round(wq * 32))  # steps of 2/64
    assert wq.max() <= 254 / 64 and wq.min() >= -256 / 64
    q, _ = model(x)
    set_quantized(model, False)
    assert model.quantized is False and syn._pre_hook_fx is None
    f, _ = model(x)
    assert not torch.equal(q, f)
    set_quantized(model, True)
    assert torch.equal(model(x)[0], q)


def test_fold_for_export_leaves_plain_weights_and_same_output():
    torch.manual_seed(0)
    model = build("spiking-fcn-tiny", 2, 6, (32, 32), quantized=True)
    x = _spikes(1, 2, 32, 32, 10)
    with torch.no_grad():
        before, _ = model(x)
        fold_for_export(model)
        after, _ = model(x)
    names = [k for k, _ in model.named_parameters()]
    assert not any(k.endswith("weight_g") or k.endswith("weight_v") for k in names)
    assert torch.allclose(before, after, atol=1e-5)


def test_ann_twin_mirrors_topology():
    snn = build("spiking-fcn-tiny", 2, 6, (32, 32))
    ann = build("spiking-fcn-tiny-ann", 2, 6, (32, 32))
    assert [n.name for n in ann.nodes] == [n.name for n in snn.nodes]
    for a, s in zip(ann.nodes, snn.nodes, strict=True):
        for sa, ss in zip(a.synapses, s.synapses, strict=True):
            if hasattr(sa, "weight"):
                assert sa.weight.shape == ss.weight.shape[:-1]
    out, acts = ann(torch.rand(2, 2, 32, 32))
    assert out.shape == (2, 6, 32, 32) and (acts["conv1"] >= 0).all()


def _twin_on_the_line(frames: int, level: float):
    """A tiny DeepLab twin, `frames` random frames, its plain scores, each
    hidden node's level (`level` x its largest activation on them) and the
    straight-line curve (rate = r up to 1) for every node."""
    from models.ann import TRANSFER_KNOTS, TRANSFER_STEP

    torch.manual_seed(0)
    ann = build("spiking-deeplab-tiny-ann", 2, 6, (16, 16))
    x = torch.rand(frames, 2, 16, 16)
    scores, acts = ann(x)
    names = [n.name for n in ann.nodes[:-1]]
    line = (torch.arange(TRANSFER_KNOTS) * TRANSFER_STEP).clamp(max=1).tolist()
    return ann, x, scores, {n: level * float(acts[n].max()) for n in names}, {n: line for n in names}


def test_a_twin_under_a_transfer_curve_is_its_level_times_the_rate_at_z_over_the_level(tmp_path):
    """AnnGraph.set_transfer: each hidden node's activation becomes level x
    rate(z / level), linear between the knots; the straight line up to 1 is a
    ReLU clipped at the level. The curves travel in the state dict, and a twin
    saved before them loads as a plain ReLU twin."""
    from models.ann import TRANSFER_KNOTS, TRANSFER_STEP

    ann, x, plain_scores, levels, line = _twin_on_the_line(frames=2, level=0.5)
    r = torch.arange(TRANSFER_KNOTS) * TRANSFER_STEP
    names = list(levels)
    ann.set_transfer(levels, line)
    assert ann.transfer_levels() == pytest.approx(levels)
    _, line = ann(x)
    first = ann.nodes[0]
    z = first.synapses[0](x)
    assert torch.allclose(line["conv1"], torch.minimum(torch.relu(z), first.level), atol=1e-6)
    assert float(line["conv1"].max()) == pytest.approx(levels["conv1"])  # the clip bites
    bent = {name: (r / (1 + r)).tolist() for name in names}  # between knots: linear
    ann.set_transfer(levels, bent)
    _, acts = ann(x)
    u = torch.relu(z) / levels["conv1"]
    lo = (u / TRANSFER_STEP).floor().clamp(max=TRANSFER_KNOTS - 2) * TRANSFER_STEP
    f = lambda v: v / (1 + v)  # noqa: E731
    want = levels["conv1"] * (f(lo) + (f(lo + TRANSFER_STEP) - f(lo)) * (u - lo) / TRANSFER_STEP)
    assert torch.allclose(acts["conv1"], want, atol=1e-5)
    again = build("spiking-deeplab-tiny-ann", 2, 6, (16, 16))
    again.load_state_dict(ann.state_dict())
    assert torch.equal(again(x)[0], ann(x)[0])
    old = {k: v for k, v in ann.state_dict().items() if not k.endswith((".level", ".rates"))}
    again.load_state_dict(old)
    assert again.transfer_levels() == {} and torch.equal(again(x)[0], plain_scores)
    with pytest.raises(ToolchainError, match="no level or rates for conv4"):
        ann.set_transfer({k: v for k, v in levels.items() if k != "conv4"}, bent)


def test_a_twin_under_a_transfer_scatter_is_noisy_while_training_and_exact_in_evaluation():
    """set_transfer(..., spread, noise): while training, each activation gets
    Gaussian noise of noise x spread(z / level) (in rates, clamped to [0, 1]),
    unbiased away from the clamps; in evaluation the twin computes the curve
    exactly. Without a spread for every node it is refused."""
    from models.ann import TRANSFER_KNOTS

    ann, x, _, levels, line = _twin_on_the_line(frames=8, level=2.0)  # rates up to 0.5: no clamp at 1
    names = list(levels)
    spread = {name: [0.0] + [0.05] * (TRANSFER_KNOTS - 1) for name in names}
    ann.set_transfer(levels, line)
    exact = ann.eval()(x)[1]["conv1"]
    ann.set_transfer(levels, line, spread, noise=2.0)
    assert torch.equal(ann.eval()(x)[1]["conv1"], exact)
    first, z = ann.nodes[0], ann.nodes[0].synapses[0](x).detach()
    with torch.no_grad():
        noisy = torch.stack([first.train()([x]) for _ in range(50)]) / levels["conv1"]
    rate = exact / levels["conv1"]
    inside = (rate > 0.3).expand_as(noisy)  # 3 standard deviations from the clamp at 0
    assert float((noisy - rate)[inside].mean()) == pytest.approx(0, abs=0.005)
    assert float((noisy - rate)[inside].std()) == pytest.approx(0.1, rel=0.05)
    silent = (z <= 0).expand_as(noisy)  # no spread at r = 0: the silent stay silent
    assert silent.any() and float(noisy[silent].abs().max()) == 0
    with pytest.raises(ToolchainError, match="no level, rates or spread for conv4"):
        ann.set_transfer(levels, line, {k: v for k, v in spread.items() if k != "conv4"}, noise=1.0)


def test_neuron_parameters_come_from_arguments():
    model = build("spiking-deeplab-tiny", 2, 6, (32, 32), NeuronParams(threshold=1.5, voltage_decay=0.02))
    neuron = model.nodes[0].neuron
    assert neuron.threshold == pytest.approx(1.5)


def test_named_layers_take_their_own_threshold_and_unknown_names_are_refused():
    own = {"conv2": 12.5, "pool1": 3.984375}
    model = build("spiking-deeplab-tiny", 2, 6, (32, 32), NeuronParams(threshold=1.5), layer_thresholds=own)
    assert {n.name: n.neuron.threshold for n in model.nodes[:-1]} == {
        "conv1": 1.5, "pool1": 3.984375, "conv2": 12.5, "pool2": 1.5, "conv3": 1.5, "conv4": 1.5}
    with torch.no_grad():  # the threshold each neuron fires at: conv2 stays silent where conv1's would fire
        z = torch.full((1, 32, 16, 16, 3), 2.0)
        assert cuba_forward(model.nodes[0].neuron, z, delay_steps=0).sum() > 0
        assert cuba_forward(model.nodes[2].neuron, z, delay_steps=0).sum() == 0
    with pytest.raises(ToolchainError, match="no spiking layer named classifier, conv9"):
        build("spiking-deeplab-tiny", 2, 6, (32, 32), layer_thresholds={"conv9": 2.0, "classifier": 2.0})
    with pytest.raises(ToolchainError, match="must be positive"):
        build("spiking-deeplab-tiny", 2, 6, (32, 32), layer_thresholds={"conv2": 0.0})


def test_load_checkpoint_rejects_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ToolchainError, match="bad.pt"):
        models.load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(ToolchainError, match="not a toolchain training checkpoint"):
        models.load_checkpoint(foreign)
    with pytest.raises(ToolchainError, match="not found"):
        models.load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["spiking-deeplab", "spiking-fcn"])
def test_paper_size_forward_backward_at_ddd17_resolution(name):
    torch.manual_seed(0)
    model = build(name, 2, 6, (200, 346), quantized=True)
    x = _spikes(1, 2, 200, 346, 3)
    scores, spikes = models.predict(model, x, (200, 346))
    assert scores.shape == (1, 6, 200, 346)
    scores.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert models.parameter_count(model) == pytest.approx(4.1e6 if name == "spiking-deeplab" else 13.6e6, rel=0.02)


def test_frames_within_sizes_a_batch_by_the_bytes_its_spikes_take():
    # the scale search's evaluation batches (convert --scale auto) at 200x346
    # and T=48 took 16 frames and 22 GiB until the batch was sized by memory
    net = build("spiking-deeplab-tiny", 2, 6, (32, 48))
    c, h, w = net.input_shape
    _, spikes = net(torch.zeros(1, c, h, w, 8))
    neurons = c * h * w + sum(v[0, ..., 0].numel() for v in spikes.values())
    steps = spikes["conv1"].shape[-1]  # T + the pipeline's depth - 1
    one_frame = 2 * 4 * neurons * steps
    assert [net.frames_within(8, k * one_frame) for k in (1, 3, 3.9, 16)] == [1, 3, 3, 16]
    assert net.frames_within(8, 100 * one_frame) == 16 and net.frames_within(8, 0.1 * one_frame) == 1
    assert net.frames_within(64, 16 * one_frame) < net.frames_within(8, 16 * one_frame)
