"""SegmentationMetric against a hand-computed confusion matrix."""
import math

import pytest
import torch

from toolchain.core.metrics import SegmentationMetric


@pytest.fixture
def batch():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 0, 2]]])
    return pred, target


def test_confusion_matrix_matches_hand_count(batch):
    m = SegmentationMetric(3)
    m.update(*batch)
    # rows ground truth, columns prediction; the 255 pixel counts nowhere
    assert m.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_iou_and_pixel_accuracy_by_hand(batch):
    m = SegmentationMetric(3)
    m.update(*batch)
    r = m.compute()
    # class 0: tp 1, gt 2, pred 2 -> 1/3; class 1: tp 2, gt 2, pred 3 -> 2/3; class 2: tp 0 -> 0
    assert r["iou_per_class"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert r["pixel_acc"] == pytest.approx(3 / 5)


def test_absent_class_is_nan_and_left_out_of_mean():
    m = SegmentationMetric(4)
    m.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    r = m.compute()
    assert math.isnan(r["iou_per_class"][2]) and math.isnan(r["iou_per_class"][3])
    assert r["miou"] == pytest.approx(1.0)


def test_updates_accumulate_and_reset(batch):
    m = SegmentationMetric(3)
    m.update(*batch)
    m.update(*batch)
    assert int(m.confusion.sum()) == 10
    m.reset()
    assert int(m.confusion.sum()) == 0


def test_out_of_range_class_is_rejected():
    m = SegmentationMetric(2)
    with pytest.raises(ValueError):
        m.update(torch.tensor([[0]]), torch.tensor([[5]]))
