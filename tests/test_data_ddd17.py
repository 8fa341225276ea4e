"""The DDD17 reader on generated data: shapes, normalisation, resizing,
seeded encoding per epoch, and clean errors for bad folders and files."""
import dataclasses
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from toolchain.core.errors import ToolchainError
from toolchain.data import CLASS_NAMES_DDD17, build_dataset
from toolchain.data.dataset import resize


@pytest.fixture
def ddd17_copy(tiny_ddd17, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_ddd17, root)
    return root


def with_root(cfg, root, **kw):
    return dataclasses.replace(cfg, root=str(root), **kw)


def test_items_are_slayer_ordered_spikes_and_labels(data_cfg, tiny_ddd17):
    ds = build_dataset(data_cfg, "train")
    assert len(ds) == 6 and len(build_dataset(data_cfg, "test")) == 3
    assert ds.class_names == CLASS_NAMES_DDD17 and ds.num_classes == 6 and ds.in_channels == 2
    assert ds.files[0] == "rec100_export_0"
    x, y = ds[0]
    assert x.shape == (2, 24, 40, 8) and x.dtype == torch.float32
    assert set(x.unique().tolist()) <= {0.0, 1.0} and x.sum() > 0
    assert y.shape == (24, 40) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= set(range(6)) | {255}


def test_unencoded_frame_is_minmax_normalised_histograms(data_cfg, tiny_ddd17):
    ds = build_dataset(data_cfg, "train", encode_input=False)
    frame, _ = ds[1]
    assert frame.shape == (2, 24, 40)
    for c in range(2):
        assert frame[c].min() == 0 and frame[c].max() == pytest.approx(1.0)
    raw = np.load(tiny_ddd17 / "events" / "train" / f"{ds.files[1]}.npy")
    # Area resizing then min-max: the brightest resized cell is where raw counts are densest.
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(raw[..., 0])[None], 2)[0]
    assert pooled.shape == (24, 40)
    assert torch.allclose(frame[0], pooled / pooled.max(), atol=1e-5)


def test_all_channels_mode_gives_six_channels_in_unit_range(data_cfg):
    ds = build_dataset(dataclasses.replace(data_cfg, channels="all"), "test", encode_input=False)
    frame, _ = ds[0]
    assert ds.in_channels == 6 and frame.shape[0] == 6
    assert frame.min() >= 0 and frame.max() <= 1


def test_all_zero_frame_normalises_to_zeros_not_nan(data_cfg, ddd17_copy):
    name = "rec100_export_0"
    np.save(ddd17_copy / "events" / "train" / f"{name}.npy", np.zeros((48, 80, 6), np.float32))
    frame, _ = build_dataset(with_root(data_cfg, ddd17_copy), "train", encode_input=False)[0]
    assert torch.isfinite(frame).all() and frame.abs().sum() == 0


def test_poisson_draw_changes_with_epoch_and_repeats_per_seed(data_cfg):
    ds = build_dataset(data_cfg, "train")
    a, b = ds[2][0], ds[2][0]
    ds.set_epoch(1)
    c = ds[2][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    other = build_dataset(dataclasses.replace(data_cfg, seed=2), "train")
    assert not torch.equal(a, other[2][0])


def test_crop_keeps_the_centre_and_labels_stay_nearest():
    frame = torch.arange(4 * 8, dtype=torch.float32).reshape(1, 4, 8)
    label = torch.arange(4 * 8).reshape(4, 8) % 6
    f, l = resize(frame, label, 4, 4, "crop")
    assert torch.equal(f[0], frame[0, :, 2:6]) and torch.equal(l, label[:, 2:6])
    f, l = resize(frame, label, 2, 2, "resize")
    assert f.shape == (1, 2, 2) and set(l.unique().tolist()) <= set(label.unique().tolist())


def test_generated_default_is_made_once_in_the_cache(monkeypatch, tmp_path):
    from toolchain.core.config import DataConfig
    from toolchain.data import ensure_default_data

    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path))
    cfg = DataConfig(synth_n_train=2, synth_n_test=1, synth_height=24, synth_width=32, height=16, width=16,
                     time_steps=4)
    root = ensure_default_data(cfg)
    assert root.parent == tmp_path and root.name.startswith("ddd17-synth-")
    stamp = (root / "events" / "train" / "rec100_export_0.npy").stat().st_mtime_ns
    assert ensure_default_data(cfg) == root
    assert (root / "events" / "train" / "rec100_export_0.npy").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    ds = build_dataset(cfg, "train")
    assert len(ds) == 2 and ds[0][0].shape == (2, 16, 16, 4)


# ------------------------------------------------------------------ bad input

def test_missing_folder_is_named(data_cfg, tmp_path):
    with pytest.raises(ToolchainError, match="data folder not found"):
        build_dataset(with_root(data_cfg, tmp_path / "nowhere"), "train")
    (tmp_path / "events" / "train").mkdir(parents=True)
    with pytest.raises(ToolchainError, match=r"labels/train: folder missing"):
        build_dataset(with_root(data_cfg, tmp_path), "train")


def test_events_without_label_and_label_without_events(data_cfg, ddd17_copy):
    (ddd17_copy / "labels" / "train" / "rec100_export_1.png").unlink()
    with pytest.raises(ToolchainError, match=r"rec100_export_1\.npy: events without a label"):
        build_dataset(with_root(data_cfg, ddd17_copy), "train")
    (ddd17_copy / "events" / "test" / "rec900_export_0.npy").unlink()
    with pytest.raises(ToolchainError, match=r"rec900_export_0\.png: label without events"):
        build_dataset(with_root(data_cfg, ddd17_copy), "test")


@pytest.mark.parametrize("array, problem", [
    (np.zeros((48, 80, 4), np.float32), r"shape \(H, W, 6\)"),
    (np.zeros((48, 80, 6), np.float64), "must be float32"),
])
def test_wrong_shape_or_dtype_is_found_before_loading(data_cfg, ddd17_copy, array, problem):
    np.save(ddd17_copy / "events" / "train" / "rec100_export_3.npy", array)
    with pytest.raises(ToolchainError, match=rf"rec100_export_3\.npy: .*{problem}"):
        build_dataset(with_root(data_cfg, ddd17_copy), "train")


def test_nan_events_and_bad_label_values_name_the_file(data_cfg, ddd17_copy):
    a = np.zeros((48, 80, 6), np.float32)
    a[3, 4, 0] = np.nan
    np.save(ddd17_copy / "events" / "train" / "rec100_export_2.npy", a)
    lab = np.zeros((48, 80), np.uint8)
    lab[0, 0] = 9
    Image.fromarray(lab, mode="L").save(ddd17_copy / "labels" / "train" / "rec100_export_4.png")
    ds = build_dataset(with_root(data_cfg, ddd17_copy), "train")
    with pytest.raises(ToolchainError, match=r"rec100_export_2\.npy: events contain NaN"):
        ds[2]
    with pytest.raises(ToolchainError, match=r"rec100_export_4\.png: label values \[9\] outside 0\.\.5 and 255"):
        ds[4]


def test_error_in_dataloader_worker_arrives_as_one_clean_line(data_cfg, ddd17_copy):
    path = ddd17_copy / "events" / "train" / "rec100_export_5.npy"
    a = np.load(path)
    a[0, 0, 1] = np.inf
    np.save(path, a)
    ds = build_dataset(with_root(data_cfg, ddd17_copy), "train")
    with pytest.raises(ToolchainError) as info:
        list(DataLoader(ds, batch_size=2, num_workers=1))
    msg = str(info.value)
    assert msg.endswith("rec100_export_5.npy: events contain NaN or inf")
    assert "Traceback" not in msg and "\n" not in msg


def test_skip_bad_drops_and_counts_bad_samples(data_cfg, ddd17_copy, caplog):
    (ddd17_copy / "labels" / "train" / "rec100_export_0.png").unlink()
    path = ddd17_copy / "events" / "train" / "rec100_export_1.npy"
    path.write_bytes(path.read_bytes()[:200])  # truncated
    ds = build_dataset(with_root(data_cfg, ddd17_copy, skip_bad=True), "train")
    assert len(ds) == 4 and len(ds.skipped) == 2
    assert "skipped 2 bad sample(s), 4 left" in caplog.text
    assert ds[0][0].shape == (2, 24, 40, 8)


def test_unknown_choices_name_the_field(data_cfg):
    for field, value in (("channels", "rgb"), ("encoding", "phase"), ("resize", "warp"), ("dataset", "kitti")):
        with pytest.raises(ToolchainError, match=f"data.{field}"):
            ds = build_dataset(dataclasses.replace(data_cfg, **{field: value}), "train")
            ds[0]
