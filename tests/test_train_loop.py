"""The training loop: loss and readout shapes, ignore index, reproducible
resume after an interruption, run-folder outputs."""
import json
import math
import os
import signal
import subprocess
import sys
import time
import types

import pytest
import torch
import torch.nn.functional as F

import models
from toolchain.core import checkpoint
from toolchain.core.config import Config
from toolchain.core.errors import ToolchainError
from toolchain.train import augment, loop, loss_fn, train
from toolchain.train.loop import IGNORE, class_counts, class_weights


class StripesDataset(torch.utils.data.Dataset):
    """Left half class 0 with sparse ON spikes, right half class 1 with dense
    OFF spikes; a column of ignore pixels. Poisson draw depends on
    (epoch, index) only, like the real data sets."""

    class_names = ["left", "right"]
    num_classes = 2
    in_channels = 2

    def __init__(self, n, hw=16, t=12, seed=0):
        self.n, self.hw, self.t, self.seed, self.epoch = n, hw, t, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 10007 + self.epoch * 101 + i)
        h = w = self.hw
        y = torch.zeros(h, w, dtype=torch.int64)
        y[:, w // 2:] = 1
        y[:, w // 2 - 1] = IGNORE
        x = torch.zeros(2, h, w, self.t)
        x[0, :, : w // 2] = (torch.rand(h, w // 2, self.t, generator=g) < 0.2).float()
        x[1, :, w // 2:] = (torch.rand(h, w - w // 2, self.t, generator=g) < 0.6).float()
        return x, y


@pytest.fixture
def cfg():
    c = Config()
    c.data.height = c.data.width = 16
    c.data.time_steps = 12
    c.model.name = "spiking-deeplab-tiny"
    c.train.epochs = 2
    c.train.batch_size = 4
    c.train.optimizer = "adamw"
    c.train.lr = 0.01
    c.train.qat = True
    return c


@pytest.fixture
def data():
    return StripesDataset(12), StripesDataset(4, seed=1)


def test_readout_and_loss_shapes(cfg, data):
    model = models.from_config(cfg, 2, 2)
    x, y = next(iter(torch.utils.data.DataLoader(data[0], batch_size=3)))
    readout, spikes = model(x)
    assert readout.shape == (3, 2, 4, 4)  # two 2x2 pools
    scores, _ = models.predict(model, x, y.shape[-2:])
    assert scores.shape == (3, 2, 16, 16)
    loss = loss_fn(scores, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_loss_ignores_label_255():
    scores = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 1], [2, 1]]])
    masked = target.clone()
    masked[0, 0, 0] = IGNORE
    expected = torch.nn.functional.cross_entropy(scores[0].permute(1, 2, 0).reshape(-1, 3)[1:],
                                                 target.reshape(-1)[1:])
    assert torch.allclose(loss_fn(scores, masked), expected)


def test_inverse_sqrt_class_weights_favour_thin_classes_and_skip_absent_ones():
    counts = torch.tensor([900, 100, 0, 25])
    w = class_weights("inverse-sqrt", counts)
    assert w[2] == 0.0  # absent from training: nothing to learn it from
    # 1/sqrt(frequency): a class 36x rarer weighs 6x more; mean 1 over the present classes
    assert w[3] / w[0] == pytest.approx(6.0) and w[1] / w[0] == pytest.approx(3.0)
    assert sum(w) / 3 == pytest.approx(1.0)
    assert class_weights("none", counts) is None
    with pytest.raises(ToolchainError, match="class_weights.*'median'"):
        class_weights("median", counts)


def test_weighted_training_records_its_weights_and_trains_with_them(cfg, data, tmp_path):
    cfg.train.epochs = 1
    states = {}
    for kind in ("none", "inverse-sqrt"):
        cfg.train.class_weights = kind
        train(cfg, tmp_path / kind, datasets=data, log=lambda *_: None)
        states[kind] = checkpoint.load(tmp_path / kind / "checkpoint.pt")
    extra = states["inverse-sqrt"]["extra"]
    counts = class_counts((data[0][i][1] for i in range(len(data[0]))), 2)
    assert extra["class_pixels"] == counts.tolist()
    assert extra["class_weights"] == class_weights("inverse-sqrt", counts)
    assert extra["class_weights"][0] != extra["class_weights"][1]
    assert states["none"]["extra"]["class_weights"] is None
    # the same seed and data: only the loss's weights differ, and so do the trained weights
    a, b = states["none"]["model"], states["inverse-sqrt"]["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_augment_keeps_shapes_and_pads_labels_with_ignore():
    x = torch.ones(8, 2, 16, 16, 3)
    y = torch.zeros(8, 16, 16, dtype=torch.int64)
    xa, ya = augment(x, y, torch.Generator().manual_seed(0))
    assert xa.shape == x.shape and ya.shape == y.shape
    # shifted crops bring padding in: label 255 exactly where input is zero padding
    assert ((ya == IGNORE) == (xa[:, 0, :, :, 0] == 0)).all()
    assert (ya == IGNORE).any()


@pytest.mark.slow
def test_training_writes_run_folder_and_beats_untrained(cfg, data, tmp_path):
    cfg.train.epochs = 3
    cfg.train.augment = False
    r = train(cfg, tmp_path, datasets=data, log=lambda s: None)
    for name in ("checkpoint.pt", "metrics.json", "log.csv", "curves.png", "gallery.png", "config.yaml"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["miou"] == pytest.approx(r["miou"])
    assert len(saved["history"]) == 4 and set(saved["firing"]) == {"conv1", "pool1", "conv2", "pool2", "conv3", "conv4"}
    losses = [h["train_loss"] for h in saved["history"][1:]]
    assert losses[-1] < losses[0]
    assert r["miou"] > r["untrained_miou"] + 0.05
    assert list((tmp_path / "tensorboard").iterdir())


def _interrupt_at(epoch, step):
    def cb(e, s):
        if (e, s) == (epoch, step):
            signal.raise_signal(signal.SIGINT)
    return cb


def test_a_resumed_run_counts_the_training_time_before_its_interruption(cfg, data, tmp_path, monkeypatch):
    # a clock that jumps 1000 s during the first step: the half epoch before the cut took that long
    jump = [0.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=lambda: time.time() + jump[0]))

    def slow_then_interrupt(e, s):
        if (e, s) == (0, 0):
            jump[0] = 1000.0
        _interrupt_at(0, 1)(e, s)

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path, datasets=data, callback=slow_then_interrupt, log=lambda s: None)
    resumed = train(cfg, tmp_path, resume=True, datasets=data, log=lambda s: None)
    assert resumed["history"][1]["seconds"] >= 1000
    assert resumed["train_seconds"] >= 1000


@pytest.mark.slow
@pytest.mark.parametrize("where", [(0, 1), (0, 2)], ids=["mid-epoch", "epoch-end"])
def test_resume_after_interrupt_equals_uninterrupted_run(cfg, data, tmp_path, where):
    straight = train(cfg, tmp_path / "a", datasets=data, log=lambda s: None)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b", datasets=data, callback=_interrupt_at(*where), log=lambda s: None)
    resumed = train(cfg, tmp_path / "b", resume=True, datasets=data, log=lambda s: None)
    a = checkpoint.load(tmp_path / "a" / "checkpoint.pt")
    b = checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for key in ("miou", "pixel_acc", "loss"):
        assert resumed[key] == straight[key]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]


def test_a_readout_that_hears_nothing_stops_training_with_what_to_change(cfg, data, tmp_path):
    """A threshold no input can reach leaves the readout at zero (loss ln K for
    ever): the run stops after its first epoch, naming T, the depth and the fix."""
    cfg.model.threshold = 200.0
    with pytest.raises(ToolchainError, match=r"readout stayed all zero after epoch 1 \(T=12, pipeline depth D=7"):
        train(cfg, tmp_path / "run", datasets=data, log=lambda m: None)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


@pytest.mark.parametrize("impl,fused", [("slayer", False), ("auto", True)])
def test_train_neuron_switch_picks_the_neuron_implementation(cfg, data, tmp_path, impl, fused):
    """train.neuron=slayer trains on slayer's reference path; the default runs the fused CPU kernel."""
    from models.fused_cuba import fused_calls, set_neuron_impl

    cfg.train.epochs, cfg.train.neuron = 1, impl
    before = fused_calls()
    try:
        train(cfg, tmp_path / impl, datasets=data, log=lambda m: None)
    finally:
        set_neuron_impl("auto")
    assert (fused_calls() > before) == fused


def test_an_unknown_neuron_implementation_is_a_clear_error(cfg, data, tmp_path):
    cfg.train.neuron = "gpu-magic"
    with pytest.raises(ToolchainError, match="train.neuron.*gpu-magic"):
        train(cfg, tmp_path / "run", datasets=data, log=lambda m: None)


def test_an_ann_twin_is_reported_as_an_unquantized_twin(cfg, data, tmp_path):
    """qat=True in the config does not make a twin quantized: metrics and summary say what ran."""
    from toolchain.cli.train import summary_table

    cfg.train.ann, cfg.train.qat, cfg.train.epochs = True, True, 1
    result = train(cfg, tmp_path, datasets=data, log=lambda *_: None)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["ann"] is True and saved["quantized"] is False
    assert "spiking-deeplab-tiny ANN twin (1 epochs, float)" in summary_table(result)


def test_init_starts_from_another_runs_weights_and_refuses_another_model(cfg, data, tmp_path):
    cfg.train.epochs = 1
    train(cfg, tmp_path / "a", datasets=data, log=lambda *_: None)
    first = checkpoint.load(tmp_path / "a" / "checkpoint.pt")["model"]
    cfg.train.init, cfg.train.epochs, cfg.train.lr = str(tmp_path / "a" / "checkpoint.pt"), 1, 1e-9
    train(cfg, tmp_path / "b", datasets=data, log=lambda *_: None)
    tuned = checkpoint.load(tmp_path / "b" / "checkpoint.pt")["model"]
    # an almost zero learning rate: the fine-tuned weights are the ones it started from
    assert all(torch.allclose(first[k].float(), tuned[k].float(), atol=1e-6) for k in first)
    # weights scaled to other neurons (a converted twin's) are refused with the flags that match them
    cfg.model.threshold, cfg.model.voltage_decay = 1.5, 0.0
    with pytest.raises(ToolchainError, match=r"start from them with --set model.threshold=1.0 "
                                             r"--set model.voltage_decay=0.01"):
        train(cfg, tmp_path / "c", datasets=data, log=lambda *_: None)
    cfg.model.threshold, cfg.model.voltage_decay = 1.0, 0.01
    cfg.model.layer_thresholds = {"conv2": 3.5}  # a converted net's own thresholds are neurons too
    with pytest.raises(ToolchainError, match=r"start from them with \(no model.layer_thresholds\)"):
        train(cfg, tmp_path / "c", datasets=data, log=lambda *_: None)
    cfg.model.layer_thresholds = {}
    cfg.model.name = "spiking-fcn-tiny"
    with pytest.raises(ToolchainError, match="holds spiking-deeplab-tiny; this run trains spiking-fcn-tiny"):
        train(cfg, tmp_path / "c", datasets=data, log=lambda *_: None)


_REFAULT = """
import resource, sys
if sys.argv[1] == "keep":
    from toolchain.core.allocator import keep_freed_memory
    assert keep_freed_memory()
import torch
import torch.nn.functional as F
torch.set_num_threads(1)
def step(n=1 << 26):  # 256 MiB tensors, as a training step's frames of a layer
    a = torch.ones(n); b = torch.ones(n); c = a + b; del a; d = c * 2; del b, c; return d
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
def test_toolchain_keeps_freed_blocks_instead_of_faulting_them_in_every_step():
    # glibc maps and unmaps each 65,536-page block on every use unless told to
    # keep freed memory, which the `toolchain` command does before torch loads
    def faults(mode):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", _REFAULT, mode], capture_output=True, text=True,
                             env=env, check=True)
        return int(out.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    assert default > 5 * 3 * 65_536  # three fresh blocks a step
    assert kept < default / 2


def test_dice_term_counts_a_thin_class_by_overlap_not_by_pixels():
    from toolchain.data.dataset import IGNORE
    from toolchain.train.loop import dice_loss

    y = torch.zeros(1, 8, 8, dtype=torch.long)
    y[0, 2:6, 4] = 1  # a pole: 4 pixels of 64
    y[0, 0, 0] = IGNORE
    perfect = F.one_hot(y.clamp(max=1), 2).permute(0, 3, 1, 2).float() * 50
    assert float(dice_loss(perfect, y)) == pytest.approx(0.0, abs=1e-6)
    missed = perfect.clone()
    missed[:, :, 2:6, 4] = torch.tensor([50.0, 0.0])[:, None]  # the pole called road
    # cross-entropy hardly notices 4 pixels; Dice loses half its score (the pole's class scores 0)
    assert float(dice_loss(missed, y)) == pytest.approx(0.5, abs=0.05)
    scores = torch.zeros(1, 2, 8, 8, requires_grad=True)
    loss_fn(scores, y, dice_weight=1.0).backward()
    assert float(scores.grad[0, 1, 2:6, 4].min()) < 0 < float(scores.grad[0, 1, 0, 1])
    assert float(scores.grad[0, :, 0, 0].abs().sum()) == 0  # ignored pixel


def test_boundary_weight_makes_a_missed_pole_cost_more_than_a_missed_patch_of_road():
    """A pole 1 pixel wide is all boundary: with boundary_weight its pixels (and
    the road pixels beside it) weigh more, road far from any edge does not;
    ignored pixels stay out of the loss and are never marked."""
    from toolchain.data.dataset import IGNORE
    from toolchain.train.loop import boundaries

    y = torch.zeros(1, 8, 8, dtype=torch.long)
    y[0, 2:6, 4] = 1  # a pole
    y[0, 7, 7] = IGNORE
    edge = boundaries(y)[0]
    assert edge[2:6, 3:6].all() and not edge[0, 0] and not edge[7, 7] and not edge[6, 7]  # ignore is no label
    assert int(edge.sum()) == 6 * 3  # the pole and the road around it: rows 1-6, columns 3-5
    good = F.one_hot(y.clamp(max=1), 2).permute(0, 3, 1, 2).float() * 5
    pole_missed = good.clone()
    pole_missed[0, :, 2:6, 4] = torch.tensor([5.0, 0.0])[:, None]
    road_missed = good.clone()
    road_missed[0, :, 0, 0:4] = torch.tensor([0.0, 5.0])[:, None]  # four road pixels far from the pole
    plain = [float(loss_fn(s, y)) for s in (pole_missed, road_missed)]
    weighted = [float(loss_fn(s, y, boundary_weight=4.0)) for s in (pole_missed, road_missed)]
    assert plain[0] == pytest.approx(plain[1])  # four wrong pixels each
    assert weighted[0] > 2 * weighted[1]
    scores = torch.zeros(1, 2, 8, 8, requires_grad=True)
    loss_fn(scores, y, weight=torch.tensor([0.5, 2.0]), boundary_weight=4.0).backward()
    assert float(scores.grad[0, :, 7, 7].abs().sum()) == 0  # ignored pixel


def test_distill_loss_is_zero_at_the_teachers_answer_and_pulls_toward_it():
    """KL(teacher || student) per pixel: 0 where the student's class
    distribution is the teacher's (whatever their scales' offsets), positive
    elsewhere, and its gradient raises the class the teacher favours; the
    temperature^2 factor keeps the loss's size as the temperature changes."""
    from toolchain.train.loop import distill_loss

    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 6, 5, 7, generator=gen) * 3
    assert float(distill_loss(teacher + 4.0, teacher)) == pytest.approx(0.0, abs=1e-6)  # softmax ignores offsets
    student = torch.zeros(2, 6, 5, 7, requires_grad=True)
    loss = distill_loss(student, teacher)
    assert float(loss) > 0.1
    loss.backward()
    favoured = teacher.argmax(dim=1, keepdim=True)
    assert bool((student.grad.gather(1, favoured) < 0).all())  # descent raises the teacher's class
    soft = [float(distill_loss(teacher * 0.9, teacher, temperature)) for temperature in (1.0, 4.0)]
    assert 0.1 < soft[1] / soft[0] < 10


def test_a_teacher_run_distills_and_a_mismatched_teacher_is_named(cfg, data, tmp_path):
    """train.teacher: the spiking run learns from a twin's scores as well as
    the labels (its weights move elsewhere than without the term, and weight 0
    is the run without a teacher), metrics.json names the teacher, whose
    scores count in the units its own loss saw (its train.logit_scale); a
    teacher for another size is refused naming the file and both shapes."""
    from toolchain.train.loop import load_teacher

    ann = Config()
    ann.data, ann.model, ann.train = cfg.data, cfg.model, type(cfg.train)(**vars(cfg.train))
    ann.train.ann, ann.train.epochs, ann.train.logit_scale = True, 3, 2.5
    train(ann, tmp_path / "twin", datasets=data, log=lambda *_: None)
    facts = dict(in_channels=2, num_classes=2)
    assert load_teacher(str(tmp_path / "twin" / "checkpoint.pt"), cfg, facts)[1] == 2.5
    cfg.train.epochs = 1
    train(cfg, tmp_path / "alone", datasets=data, log=lambda *_: None)
    weights = {}
    for w in (0.0, 1.0):
        cfg.train.teacher, cfg.train.distill_weight, cfg.train.distill_temperature = \
            str(tmp_path / "twin" / "checkpoint.pt"), w, 2.0
        result = train(cfg, tmp_path / f"taught-{w}", datasets=data, log=lambda *_: None)
        weights[w] = checkpoint.load(tmp_path / f"taught-{w}" / "checkpoint.pt")["model"]
    alone = checkpoint.load(tmp_path / "alone" / "checkpoint.pt")["model"]
    assert all(torch.equal(alone[k], weights[0.0][k]) for k in alone)
    assert not all(torch.equal(alone[k], weights[1.0][k]) for k in alone)
    saved = json.loads((tmp_path / "taught-1.0" / "metrics.json").read_text())
    assert saved["teacher"] == cfg.train.teacher and result["miou"] > result["untrained_miou"]
    cfg.data.height = cfg.data.width = 24
    with pytest.raises(ToolchainError, match=r"train.teacher: .*twin/checkpoint.pt takes 2 channels at 16x16 .*"
                                             r"this run has 2 channels at 24x24"):
        train(cfg, tmp_path / "other", datasets=(StripesDataset(4, hw=24), StripesDataset(2, hw=24)),
              log=lambda *_: None)


def test_layer_distillation_pulls_each_layers_spike_rates_to_its_twins_activations_over_its_levels(
        cfg, data, tmp_path):
    """layer_distill_loss: 0 where each layer's rates (spikes over the frame's
    steps) are its twin's activations over the level, else the squared error
    over the twin's, mean over the layers. train.distill_layers adds it from
    a teacher tuned under its conversion's curves (its weights move, the
    scores' KL off); a ReLU teacher, a twin run or no teacher is refused."""
    from toolchain.train.loop import layer_distill_loss

    spikes = {"a": torch.tensor([1.0, 1.0, 0.0, 0.0]).repeat(2, 1), "b": torch.ones(3, 4)}
    acts = {"a": torch.tensor([0.5, 0.5]) * 3.0, "b": torch.ones(3) * 2.0}  # rates 0.5, 0.5 and 1, 1, 1
    levels = {"a": 3.0, "b": 2.0}
    assert float(layer_distill_loss(spikes, acts, levels, 4)) == pytest.approx((0.0 + 0.0) / 2)
    acts["a"] = torch.tensor([1.0, 1.0]) * 3.0  # wants 1, 1 and gets 0.5, 0.5: 0.5 of 2, b none
    assert float(layer_distill_loss(spikes, acts, levels, 4)) == pytest.approx(0.25 / 2)

    ann = Config()
    ann.data, ann.model, ann.train = cfg.data, cfg.model, type(cfg.train)(**vars(cfg.train))
    ann.train.ann, ann.train.epochs = True, 2
    train(ann, tmp_path / "twin", datasets=data, log=lambda *_: None)
    relu_twin = str(tmp_path / "twin" / "checkpoint.pt")
    twin, _ = models.load_checkpoint(relu_twin)
    x = next(iter(torch.utils.data.DataLoader(data[0], batch_size=12)))[0]
    with torch.no_grad():
        _, acts = twin(x)
    names = [n.name for n in twin.nodes[:-1]]
    line = (torch.arange(61) * 0.05).clamp(max=1).tolist()
    twin.set_transfer({n: float(acts[n].max()) for n in names}, {n: line for n in names})
    entries = checkpoint.load(relu_twin)
    entries.pop("format"), entries.pop("version"), entries.pop("rng")
    checkpoint.save(tmp_path / "curved.pt", **{**entries, "model": twin.state_dict()})
    cfg.train.epochs, cfg.train.distill_weight = 1, 0.0
    weights = {}
    for w in (0.0, 1.0):
        cfg.train.teacher, cfg.train.distill_layers = str(tmp_path / "curved.pt"), w
        train(cfg, tmp_path / f"layers-{w}", datasets=data, log=lambda *_: None)
        weights[w] = checkpoint.load(tmp_path / f"layers-{w}" / "checkpoint.pt")["model"]
    assert not all(torch.equal(weights[0.0][k], weights[1.0][k]) for k in weights[0.0])
    for teacher, ann_run, why in [(relu_twin, False, "is not one"), (str(tmp_path / "curved.pt"), True, "is not one"),
                                  (None, False, "needs train.teacher")]:
        cfg.train.teacher, cfg.train.ann = teacher, ann_run
        with pytest.raises(ToolchainError, match=f"train.distill_layers=1.0: .*{why}"):
            train(cfg, tmp_path / "refused", datasets=data, log=lambda *_: None)


def test_the_loss_sees_the_class_scores_times_logit_scale(cfg, data, tmp_path):
    """train.logit_scale multiplies the scores the loss sees (a converted net's
    readout scores in smaller units than its twin's): at 0 every class scores
    alike, so every step's cross-entropy is ln K, whatever the weights, and
    so is the test loss the run reports."""
    cfg.train.epochs, cfg.train.logit_scale = 1, 0.0
    train(cfg, tmp_path / "flat", datasets=data, log=lambda *_: None)
    history = checkpoint.load(tmp_path / "flat" / "checkpoint.pt")["history"]
    assert history[-1]["train_loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert all(h["loss"] == pytest.approx(math.log(2), rel=1e-6) for h in history)
    cfg.train.logit_scale = 1.0
    train(cfg, tmp_path / "plain", datasets=data, log=lambda *_: None)
    assert checkpoint.load(tmp_path / "plain" / "checkpoint.pt")["history"][-1]["train_loss"] < math.log(2)
    cfg.train.logit_scale = -1.0
    with pytest.raises(ToolchainError, match=r"train.logit_scale=-1.0: must be >= 0"):
        train(cfg, tmp_path / "inverted", datasets=data, log=lambda *_: None)


def test_ann_clip_tunes_the_twin_under_a_percentile_of_its_activations(cfg, data, tmp_path):
    """train.ann_clip: a run from a trained twin clips each hidden layer at that
    percentile of its activations on the training frames (pools pass the
    clipped values on), never passes a value above it, keeps the levels in its
    checkpoint and through a resume (not measured again); without a twin to
    start from it is refused. A twin saved before clipping loads unclipped."""
    from models.ann import activation_stats
    from toolchain.cli.train import summary_table

    cfg.train.ann, cfg.train.epochs = True, 2
    train(cfg, tmp_path / "twin", datasets=data, log=lambda *_: None)
    twin, _ = models.load_checkpoint(tmp_path / "twin" / "checkpoint.pt")
    data[0].set_epoch(0)  # the frames the run measures on: epoch 0's draw
    frames = torch.stack([data[0][i][0] for i in range(len(data[0]))])
    expected = activation_stats(twin, [frames], "layer", 90.0)
    cfg.train.init, cfg.train.ann_clip, cfg.train.epochs = str(tmp_path / "twin" / "checkpoint.pt"), 90.0, 1
    result = train(cfg, tmp_path / "clip", datasets=data, log=lambda *_: None)
    assert result["ann_clip"] == 90.0
    assert "spiking-deeplab-tiny ANN twin clipped at p90 (1 epochs, float)" in summary_table(result)
    clipped, _ = models.load_checkpoint(tmp_path / "clip" / "checkpoint.pt")
    convs = [n for n in clipped.nodes[:-1] if not n.is_pool]
    assert convs and all(float(n.clip) == pytest.approx(float(expected[n.name]), rel=1e-5) for n in convs)
    assert all(torch.isinf(n.clip) for n in clipped.nodes[:-1] if n.is_pool)
    with torch.no_grad():
        _, acts = clipped(frames)
    for n in convs:  # the clip bites: some activations sit at it, none above
        assert float(acts[n.name].max()) == pytest.approx(float(n.clip))
    levels = {n.name: float(n.clip) for n in convs}
    # a named layer at its own percentile, the others at train.ann_clip
    cfg.train.ann_clip_layers = {"conv1": 99.0}
    result = train(cfg, tmp_path / "clip-conv1", datasets=data, log=lambda *_: None)
    assert "ANN twin clipped at p90 (conv1 p99) (1 epochs" in summary_table(result)
    assert result["ann_clip_layers"] == {"conv1": 99.0}
    by_layer, _ = models.load_checkpoint(tmp_path / "clip-conv1" / "checkpoint.pt")
    high = activation_stats(twin, [frames], "layer", 99.0)
    got = {n.name: float(n.clip) for n in by_layer.nodes[:-1] if not n.is_pool}
    assert got["conv1"] == pytest.approx(float(high["conv1"]), rel=1e-5) and got["conv1"] > levels["conv1"]
    assert all(got[k] == pytest.approx(v, rel=1e-5) for k, v in levels.items() if k != "conv1")
    cfg.train.ann_clip_layers = {"conv9": 99.0}
    with pytest.raises(ToolchainError, match=r"train.ann_clip_layers: conv9 not among the twin's clipped layers "
                                             r"\(conv1, conv2, conv3, conv4\)"):
        train(cfg, tmp_path / "clip-conv9", datasets=data, log=lambda *_: None)
    cfg.train.ann_clip_layers = {}
    train(cfg, tmp_path / "clip", datasets=data, resume=True, epochs=2, log=lambda *_: None)
    resumed, _ = models.load_checkpoint(tmp_path / "clip" / "checkpoint.pt")
    assert {n.name: float(n.clip) for n in resumed.nodes[:-1] if not n.is_pool} == levels
    old = {k: v for k, v in twin.state_dict().items() if not k.endswith(".clip")}
    fresh = models.from_config(cfg, 2, 2, ann=True)
    fresh.load_state_dict(old)
    assert all(torch.isinf(n.clip) for n in fresh.nodes)
    cfg.train.init = None
    with pytest.raises(ToolchainError, match=r"train.ann_clip=90.0: .*needs train.ann=true and train.init"):
        train(cfg, tmp_path / "none", datasets=data, log=lambda *_: None)
