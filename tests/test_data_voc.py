"""PASCAL VOC 2012 reader on a tiny VOCdevkit folder made here."""
import numpy as np
import pytest
import torch
from PIL import Image

from toolchain.core.config import DataConfig
from toolchain.core.errors import ToolchainError
from toolchain.data import build_dataset


@pytest.fixture
def voc(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["2007_000032", "2007_000039", "2007_000063"]
    palette = np.array([[i, 255 - i, (7 * i) % 256] for i in range(256)], np.uint8).ravel().tolist()
    for i, n in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{n}.jpg")
        lab = np.zeros((30, 40), np.uint8)
        lab[5:20, 10:30] = 15 + i
        lab[4:6, :] = 255  # two rows, so the 2x nearest downsampling keeps one
        im = Image.fromarray(lab, mode="P")
        im.putpalette(palette)
        im.save(base / "SegmentationClass" / f"{n}.png")
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names[:2]) + "\n")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text(names[2] + "\n")
    return tmp_path


def test_voc_items_are_rate_coded_rgb_and_palette_labels(voc):
    cfg = DataConfig(dataset="voc", root=str(voc), height=15, width=20, encoding="rate", time_steps=10)
    ds = build_dataset(cfg, "train")
    assert len(ds) == 2 and ds.num_classes == 21 and ds.in_channels == 3 and ds.class_names[15] == "person"
    x, y = ds[0]
    assert x.shape == (3, 15, 20, 10) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert set(y.unique().tolist()) == {0, 15, 255}
    frame, _ = build_dataset(cfg, "train", encode_input=False)[0]
    assert frame.min() >= 0 and frame.max() <= 1
    assert torch.equal(x.sum(-1), torch.floor(frame * 10 + 0.5))
    test = build_dataset(cfg, "test")
    assert test.files == ["2007_000063"] and set(test[0][1].unique().tolist()) == {0, 17, 255}


def test_voc_bad_inputs_name_the_file(voc):
    cfg = DataConfig(dataset="voc", root=str(voc / "VOCdevkit"), height=15, width=20)
    base = voc / "VOCdevkit" / "VOC2012"
    lab = np.zeros((30, 40), np.uint8)
    lab[0, 0] = 21
    Image.fromarray(lab, mode="L").save(base / "SegmentationClass" / "2007_000039.png")
    with pytest.raises(ToolchainError, match=r"2007_000039\.png: label values \[21\] outside 0\.\.20"):
        build_dataset(cfg, "train")[1]
    (base / "JPEGImages" / "2007_000032.jpg").unlink()
    with pytest.raises(ToolchainError, match=r"2007_000032\.jpg: listed in train.txt but missing"):
        build_dataset(cfg, "train")
    with pytest.raises(ToolchainError, match="no VOC2012 folder"):
        build_dataset(DataConfig(dataset="voc", root=str(voc / "VOCdevkit" / "VOC2012" / "JPEGImages")), "train")


def test_voc_skip_bad_drops_missing_and_broken_images(voc, caplog):
    base = voc / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages" / "2007_000032.jpg").unlink()
    cfg = DataConfig(dataset="voc", root=str(voc), height=15, width=20, skip_bad=True)
    ds = build_dataset(cfg, "train")
    assert ds.files == ["2007_000039"] and "skipped 1 bad sample(s), 1 left" in caplog.text
