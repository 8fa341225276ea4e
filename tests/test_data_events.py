"""Raw event recordings: AEDAT4, .npz and HDF5 read in windows, turned into
the DDD17 frame (one implementation shared with the generator) or voxels."""
import h5py
import numpy as np
import pytest

from tests.conftest import aedat4_bytes
from toolchain.core.errors import ToolchainError
from toolchain.data.events import Recording, make_events, to_ddd17, to_voxel


def frames(rec, window_us=50_000):
    return [(a, b, to_ddd17(ev, rec.height, rec.width, a, b)) for a, b, ev in rec.windows(window_us)]


def expected_windows(ev, window_us=50_000):
    t0 = int(ev["t"][0])
    out = []
    start = t0
    while start <= ev["t"][-1]:
        sel = (ev["t"] >= start) & (ev["t"] < start + window_us)
        out.append(sel)
        start += window_us
    return t0, out


@pytest.fixture
def recordings(tmp_path, small_events):
    e = small_events
    paths = {"aedat4": tmp_path / "rec.aedat4", "npz": tmp_path / "rec.npz", "h5": tmp_path / "rec.h5"}
    paths["aedat4"].write_bytes(aedat4_bytes(e["x"], e["y"], e["t"], e["p"], width=16, height=12))
    np.savez(paths["npz"], **e, width=16, height=12)
    with h5py.File(paths["h5"], "w") as f:
        for k, v in e.items():
            f.create_dataset(f"events/{k}", data=v)
        f.attrs["width"], f.attrs["height"] = 16, 12
    return paths


@pytest.mark.parametrize("kind", ["aedat4", "npz", "h5"])
def test_every_format_gives_the_same_windows_and_frames(recordings, small_events, kind):
    rec = Recording(recordings[kind])
    assert (rec.width, rec.height) == (16, 12)
    got = frames(rec)
    t0, sels = expected_windows(small_events)
    assert [a for a, _, _ in got] == [t0 + 50_000 * i for i in range(len(sels))]
    for (_, _, fr), sel in zip(got, sels, strict=True):
        assert fr.shape == (12, 16, 6) and fr.dtype == np.float32
        on = sel & (small_events["p"] == 1)
        assert fr[..., 0].sum() == on.sum() and fr[..., 1].sum() == (sel & ~on).sum()
        assert fr[small_events["y"][on], small_events["x"][on], 0].min() >= 1


def test_ddd17_frame_timestamp_channels():
    ev = make_events([1, 2, 1, 1], [0, 0, 0, 0], [0, 25, 50, 100], [1, 0, 1, 1])
    fr = to_ddd17(ev, 1, 3, 0, 100)
    assert fr[0, 1, 0] == 3 and fr[0, 2, 1] == 1
    assert fr[0, 1, 2] == pytest.approx(0.5) and fr[0, 1, 3] == pytest.approx(np.sqrt(1 / 6))
    assert fr[0, 2, 4] == pytest.approx(0.25) and fr[0, 2, 5] == 0
    assert fr[0, 0].sum() == 0


def test_voxel_grid_bins_are_time_steps(small_events):
    ev = make_events(**small_events)
    t0 = int(ev.t[0])
    vox = to_voxel(ev, 12, 16, t0, t0 + 120_000, bins=6)
    assert vox.shape == (2, 12, 16, 6) and vox.sum() == len(ev)
    b = np.clip((ev.t - t0) * 6 // 120_000, 0, 5)
    assert vox[0, ..., 0].sum() == np.sum(ev.p & (b == 0))
    assert to_voxel(ev, 12, 16, t0, t0 + 120_000, 6, binary=True).max() == 1


def test_generated_raw_events_rebuild_the_written_frames(tiny_ddd17):
    """The generator's .npy frames come from its raw events through to_ddd17."""
    name = "rec100_export_2"
    rec = Recording(tiny_ddd17 / "raw" / "train" / f"{name}.npz")
    (_, _, ev), = [w for w in rec.windows(10**9)]
    meta = np.load(tiny_ddd17 / "raw" / "train" / f"{name}.npz")
    t0, t1 = int(meta["t_start"]), int(meta["t_end"])
    assert t1 - t0 == 50_000 and t0 <= ev.t[0] and ev.t[-1] < t1
    written = np.load(tiny_ddd17 / "events" / "train" / f"{name}.npy")
    assert (rec.width, rec.height) == (80, 48)
    np.testing.assert_allclose(to_ddd17(ev, rec.height, rec.width, t0, t1), written, atol=1e-6)


def test_streaming_hdf5_in_chunks_matches_whole(tmp_path, small_events, monkeypatch):
    import toolchain.data.events as events

    path = tmp_path / "r.hdf5"
    with h5py.File(path, "w") as f:
        for k, v in small_events.items():
            f[k] = v
    monkeypatch.setattr(events, "CHUNK", 37)
    chunked = frames(Recording(path, sensor_size=(16, 12)))
    monkeypatch.setattr(events, "CHUNK", 1 << 20)
    whole = frames(Recording(path, sensor_size=(16, 12)))
    assert len(chunked) == len(whole) == 3
    for (a, _, x), (b, _, y) in zip(chunked, whole, strict=True):
        assert a == b and np.array_equal(x, y)


# ------------------------------------------------------------------ bad input

def test_empty_recordings_are_clear_errors(tmp_path):
    e = dict(x=np.zeros(0, int), y=np.zeros(0, int), t=np.zeros(0, np.int64), p=np.zeros(0, int))
    np.savez(tmp_path / "empty.npz", **e, width=4, height=4)
    with pytest.raises(ToolchainError, match="empty.npz: the recording holds no events"):
        list(Recording(tmp_path / "empty.npz").windows())
    (tmp_path / "empty.aedat4").write_bytes(aedat4_bytes(*e.values()))
    with pytest.raises(ToolchainError, match="empty.aedat4: the recording holds no events"):
        list(Recording(tmp_path / "empty.aedat4").windows())


def test_truncated_aedat4_is_a_clear_error(recordings):
    path = recordings["aedat4"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ToolchainError, match=r"rec\.aedat4: truncated AEDAT4 file"):
        Recording(path)


@pytest.mark.parametrize("change, problem", [
    (lambda e: e.pop("p"), r"missing event field\(s\) \['p'\]"),
    (lambda e: e.update(t=e["t"][::-1].copy()), "not in time order"),
    (lambda e: e.update(x=e["x"] + 0.5), "integer pixel coordinates"),
    (lambda e: e.update(p=e["p"] * 3), "field 'p' must be 0/1"),
    (lambda e: e.update(y=e["y"][:-1]), "differ in length"),
])
def test_wrong_fields_are_clear_errors(tmp_path, small_events, change, problem):
    e = dict(small_events)
    change(e)
    np.savez(tmp_path / "bad.npz", **e)
    with pytest.raises(ToolchainError, match=f"bad.npz.*{problem}"):
        list(Recording(tmp_path / "bad.npz").windows())


def test_events_outside_the_sensor_and_unknown_types(tmp_path, small_events):
    np.savez(tmp_path / "big.npz", **small_events, width=8, height=8)
    with pytest.raises(ToolchainError, match="outside the 8x8 sensor"):
        list(Recording(tmp_path / "big.npz").windows())
    (tmp_path / "rec.csv").write_text("x,y,t,p\n")
    with pytest.raises(ToolchainError, match="unknown event file type '.csv'"):
        Recording(tmp_path / "rec.csv")
