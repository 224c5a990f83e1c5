"""Non-maximum suppression on decoded predictions."""
from __future__ import annotations

import pytest
import torch

from utils.inference.nms import non_max_suppression


def _pred(rows: list[list[float]], nc: int = 2) -> torch.Tensor:
    """Rows of [cx, cy, w, h, obj, cls0, cls1, ...] -> (1, n, 5 + nc)."""
    t = torch.tensor(rows, dtype=torch.float32)
    assert t.shape[1] == 5 + nc
    return t[None]


def test_overlapping_same_class_boxes_are_suppressed() -> None:
    pred = _pred([[50, 50, 20, 20, 0.9, 1.0, 0.0],
                  [51, 50, 20, 20, 0.8, 1.0, 0.0],     # IoU ~0.9 with the first: dropped
                  [150, 150, 20, 20, 0.7, 0.0, 1.0]])  # far away: kept
    (det,) = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45)
    assert det.shape == (2, 6)
    torch.testing.assert_close(det[0, :4], torch.tensor([40.0, 40.0, 60.0, 60.0]))
    assert det[:, 5].tolist() == [0.0, 1.0] and det[0, 4] > det[1, 4]


def test_class_aware_vs_agnostic_and_class_filter() -> None:
    pred = _pred([[50, 50, 20, 20, 0.9, 1.0, 0.0], [51, 50, 20, 20, 0.8, 0.0, 1.0]])
    assert non_max_suppression(pred, 0.25, 0.45)[0].shape[0] == 2
    assert non_max_suppression(pred, 0.25, 0.45, agnostic_nms=True)[0].shape[0] == 1
    only1 = non_max_suppression(pred, 0.25, 0.45, classes=[1])[0]
    assert only1.shape[0] == 1 and only1[0, 5] == 1


def test_confidence_is_objectness_times_class_and_multilabel() -> None:
    pred = _pred([[50, 50, 20, 20, 0.5, 0.6, 0.55]])
    (det,) = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45)
    assert det.shape[0] == 1 and det[0, 4].item() == pytest.approx(0.3)
    (multi,) = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45, multi_label=True)
    assert sorted(multi[:, 5].tolist()) == [0.0, 1.0]
    assert non_max_suppression(pred, conf_thres=0.5, iou_thres=0.45)[0].shape == (0, 6)


def test_batches_max_det_and_bad_thresholds() -> None:
    rows = [[10.0 * i, 10.0 * i, 5, 5, 0.9, 1.0, 0.0] for i in range(20)]
    weak = [r[:4] + [0.1] + r[5:] for r in rows[3:]]  # below conf_thres in the second image
    out = non_max_suppression(torch.cat([_pred(rows), _pred(rows[:3] + weak)]), 0.25, 0.45, max_det=7)
    assert [d.shape[0] for d in out] == [7, 3]
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(_pred(rows), conf_thres=1.5)
