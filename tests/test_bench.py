"""The pieces `toolchain bench` measures: one Lava graph running many frames,
the compiled LIF kernel of the emulator, and the bench table itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from lava.lib.dl import slayer

from deploy import emulator, lava_host
from deploy.export import build_netfile
from models.graph import INPUT, NeuronParams, Node, SpikingGraph
from tests.content import assert_has_content
from toolchain.core import loihi

T = 4


@pytest.fixture(scope="module")
def small_net():
    """conv -> pool -> conv readout, full-range weights, a neuron with both decays."""
    gen = torch.Generator().manual_seed(3)
    neuron = NeuronParams(threshold=1.25, current_decay=0.25, voltage_decay=0.03)
    c1 = slayer.synapse.Conv(2, 4, 3, padding=1)
    out = slayer.synapse.Conv(4, 3, 1)
    for syn in (c1, out):
        syn.weight.data = (torch.randint(-128, 128, syn.weight.shape, generator=gen) * 2 / 64).float()
    nodes = [Node("c1", [INPUT], [c1], neuron.make()),
             Node("p1", ["c1"], [slayer.synapse.Pool(2, stride=2, weight_scale=0.75)], neuron.make()),
             Node("out", ["p1"], [out], None)]
    return build_netfile(SpikingGraph(nodes, (2, 8, 8), neuron), time_steps=T)


@pytest.fixture(scope="module")
def frames():
    gen = torch.Generator().manual_seed(5)
    rates = torch.tensor([0.5, 0.2, 0.35]).reshape(3, 1, 1, 1, 1)
    return (torch.rand((3, 2, 8, 8, T), generator=gen) < rates).float()


@pytest.mark.lava
@pytest.mark.slow
def test_one_built_lava_host_runs_three_frames_like_three_fresh_builds(small_net, frames):
    # capacity 2: the third frame reuses the first frame's file slot
    with lava_host.LavaNetwork(small_net, T, capacity=2) as lava:
        spikes, counts, voltage = lava.run(frames.numpy())
    assert_has_content(spikes, voltage, layers=["c1", "p1"], where="one graph vs fresh builds")
    for k, frame in enumerate(frames):
        fresh_spikes, fresh_v = lava_host.run_frame(small_net, frame.numpy())
        np.testing.assert_array_equal(voltage[k], fresh_v, err_msg=f"frame {k}: readout")
        for name, s in fresh_spikes.items():
            np.testing.assert_array_equal(spikes[name][k], s, err_msg=f"frame {k}: layer {name}")
            assert counts[name][k] == s.sum()
    # and the frames really differ, so carrying state over would have shown
    assert not np.array_equal(voltage[0], voltage[1])
    out = emulator.run(small_net, frames, device="cpu")
    np.testing.assert_array_equal(voltage, out.voltage.numpy())


def test_emulator_batch_in_chunks_side_by_side_equals_each_frame_alone(small_net, frames, monkeypatch):
    """A CPU batch runs in chunks of frames, chunks side by side on two threads:
    the same answers as each frame run alone, and torch's thread count restored."""
    alone = [emulator.run(small_net, f[None], device="cpu") for f in frames]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = {"two chunks side by side": emulator.run(small_net, frames, device="cpu")}
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(emulator, "CPU_CHUNK_BYTES", 1)  # one frame per chunk
        runs["one frame per chunk"] = emulator.run(small_net, frames, device="cpu")
    finally:
        torch.set_num_threads(threads)
    for k, one in enumerate(alone):
        assert_has_content(one.spikes, one.voltage, layers=["c1", "p1"], where=f"frame {k} alone")
        for how, out in runs.items():
            for name, s in one.spikes.items():
                assert torch.equal(out.spikes[name][k], s[0]), (how, k, name)
                assert out.counts[name][k] == one.counts[name][0], (how, k, name)
            assert torch.equal(out.voltage[k], one.voltage[0]), (how, k)


@pytest.mark.parametrize("i_decay,v_decay", [(1024, 123), (4096, 41), (0, 0)])
@pytest.mark.parametrize("scale", [300, 1 << 20, 1 << 30])
def test_compiled_lif_kernel_equals_reference_cuba_step(i_decay, v_decay, scale):
    """The emulator's compiled kernel computes `toolchain.core.loihi.cuba_step`: small inputs,
    inputs that saturate 24 bits and inputs that wrap int32."""
    gen = torch.Generator().manual_seed(scale % 97 + i_decay)
    a = torch.randint(-scale, scale, (7, 3, 5, 6), generator=gen, dtype=torch.int64)
    s_ref, v_ref = loihi.cuba_run(a, i_decay, v_decay, 80, wrap=True)
    s, v = emulator.lif_steps(a, i_decay, v_decay, 80)
    assert torch.equal(s, s_ref)
    assert torch.equal(v, v_ref)
    assert s.any()


@pytest.mark.lava
@pytest.mark.slow
def test_quick_bench_times_the_same_frames_on_every_backend_and_compares_every_layer():
    from toolchain.bench.suite import run_bench
    from toolchain.bench.table import format_table

    report = run_bench(quick=True, progress=lambda m: None)
    (case,) = report["cases"]
    assert [(r["backend"], r["batch"]) for r in case["rows"]] == [
        ("lava-stock", 1), ("lava", 1), ("emulator", 1), ("emulator", 4)]
    assert case["neurons"] > 0 and case["synapses"] > 0 and not case["trained"]
    assert case["time_steps"] > case["pipeline_depth"]
    stock, lava, emu1, emub = case["rows"]
    assert stock["ratio_stock"] == 1.0 and lava["ratio_lava"] == 1.0
    for r in case["rows"]:
        assert r["steps_per_s"] > 0 and r["peak_pss_mb"] > 10
        assert r["frames"] == 5 and r["timed_frames"] == 4  # the same frames, every row
    assert emu1["ratio_stock"] == pytest.approx(emu1["steps_per_s"] / stock["steps_per_s"])
    assert emub["ratio_lava"] == pytest.approx(emub["steps_per_s"] / lava["steps_per_s"])
    # every row was compared with Lava on all five frames, spike train by spike train
    assert case["reference"] == "lava"
    assert case["frames_compared"] == {"lava-stock batch 1": 5, "lava batch 1": 5, "emulator batch 1": 5,
                                       "emulator batch 4": 5}
    names = [layer.name for layer in build_netfile_of_quick_case().layers[:-1]]
    assert_has_content(case["compared_spikes"], case["compared_readout"], layers=names, where="quick bench")
    t = report["training"]
    assert t["toolchain_samples_per_s"] > 0 and t["plain_torch_samples_per_s"] > 0
    assert t["ratio"] == pytest.approx(t["toolchain_samples_per_s"] / t["plain_torch_samples_per_s"])
    assert report["evaluation"]["frames"] == 5 and 0 <= report["evaluation"]["miou"] <= 1
    p = report["predict"]  # every window of the stitched recording, through the middle preset
    assert p["model"] == "spiking-deeplab-small" and p["windows"] == 8 and p["windows_per_second"] > 0
    table = format_table(report)
    assert "windows/s" in table and "real time" in table
    assert "lava-stock" in table and "emulator" in table and "plain PyTorch" in table and "(untrained)" in table
    assert "every layer's spike trains" in table and "every layer spikes" in table
    assert "Lava as released" in table and "Extractor" in table


def build_netfile_of_quick_case():
    import models
    from toolchain.bench.suite import TINY_CONFIG
    from toolchain.core.config import load_config

    cfg = load_config(TINY_CONFIG, ["data.height=16", "data.width=16"])
    return build_netfile(models.from_config(cfg, 2, 6, quantized=False), time_steps=cfg.data.time_steps)


def _row(backend, batch=1, frames=2, counts=None, trains=None, voltage=None, **kw):
    counts = counts or {"c1": [5, 7], "c2": [3, 4]}
    trains = trains or {k: [f"{k}-{f}" for f in range(len(v))] for k, v in counts.items()}
    return dict(backend=backend, batch=batch, frames=frames, counts=counts, trains=trains,
                voltage=voltage or [[1, 2], [2, 3]], **kw)


def test_bench_stops_when_two_backends_count_different_spikes():
    """Speeds of different computations are not compared: one spike more in one
    layer of one frame stops the bench, naming the backends and the layer."""
    from toolchain.bench.compare import compare_rows
    from toolchain.core.errors import ToolchainError

    rows = [_row("lava-stock"), _row("lava"), _row("emulator"),
            _row("emulator", 2, counts={"c1": [5, 7], "c2": [3, 5]})]
    with pytest.raises(ToolchainError, match="emulator batch 2 and lava spike counts differ in layer c2"):
        compare_rows("fake", rows)


def test_bench_stops_when_spike_trains_differ_though_counts_agree():
    from toolchain.bench.compare import compare_rows
    from toolchain.core.errors import ToolchainError

    moved = _row("emulator", 2)
    moved["trains"]["c1"][1] = "a spike one step later"
    with pytest.raises(ToolchainError, match="spike trains differ in layer c1, frame 1"):
        compare_rows("fake", [_row("lava-stock"), _row("lava"), _row("emulator"), moved])


@pytest.mark.parametrize("problem", ["silent layer", "constant readout", "zero readout"])
def test_bench_stops_when_the_compared_frames_have_no_content(problem):
    from toolchain.bench.compare import compare_rows
    from toolchain.core.errors import ToolchainError

    kw = dict(counts={"c1": [5, 7], "c2": [0, 0]}) if problem == "silent layer" else \
        dict(voltage=[[4, 4], [4, 4]] if problem == "constant readout" else [[0, 0], [0, 0]])
    with pytest.raises(ToolchainError, match="proves nothing"):
        compare_rows("fake", [_row(b, **kw) for b in ("lava-stock", "lava", "emulator")])
    assert compare_rows("fake", [_row(b) for b in ("lava-stock", "lava", "emulator")])["compared_spikes"] == \
        {"c1": 12, "c2": 7}


def test_bench_stops_when_a_row_has_nothing_to_compare(tmp_path, monkeypatch):
    """A row that shares no frame with the reference fails loudly, and so does a
    Lava row that timed out before its first frame."""
    from toolchain.bench import suite as bench
    from toolchain.core.errors import ToolchainError

    with pytest.raises(ToolchainError, match="emulator batch 1 ran no frame that lava ran"):
        bench.compare_rows("fake", [_row("lava"), _row("emulator", frames=0)])
    with pytest.raises(ToolchainError, match="no backend finished a frame"):
        bench.compare_rows("fake", [_row("lava", frames=0), _row("lava-stock", frames=0, estimated=True)])

    def timeout(kind, tmp, timeout=None, **spec):
        raise bench._Timeout("ran past", at=1000.0)

    monkeypatch.setattr(bench, "_measure", timeout)
    with pytest.raises(ToolchainError, match="did not finish even its first frame in 5 s, so it has nothing "
                                             "to compare"):
        bench._lava_row("fake", tmp_path, tmp_path / "n.net", tmp_path / "f.npy", n_frames=3, steps=10,
                        stock=False, limit=5.0, progress=lambda m: None)
    # with frame 0's answers written, the row is a bound that compares frame 0
    # with frame 0's answers written, the row compares frame 0, and the two timed
    # frames unfinished 4 s after they started bound its speed
    (tmp_path / "out0.json.partial").write_text('{"voltage": [[1]], "counts": {}, "trains": {}, "timed_start": 996}')
    r = bench._lava_row("fake", tmp_path, tmp_path / "n.net", tmp_path / "f.npy", n_frames=3, steps=10,
                        stock=False, limit=5.0, progress=lambda m: None)
    assert r["frames"] == 1 and r["upper_bound"] and r["steps_per_s"] == pytest.approx(2 * 10 / 4.0)


def test_spike_train_digest_tells_one_moved_spike():
    from toolchain.bench.measure import train_digest

    s = np.zeros((2, 3, 3, 6), bool)
    s[1, 2, 0, 3] = True
    moved = np.zeros_like(s)
    moved[1, 2, 0, 4] = True
    assert train_digest(s) == train_digest(s.copy()) != train_digest(moved)
    assert train_digest(s) != train_digest(s.reshape(2, 3, 6, 3))
