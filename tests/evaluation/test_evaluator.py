"""Mapping predictions and labels back to original images, and scoring them."""
from __future__ import annotations

import numpy as np
import torch

from utils.data.augment import letterbox
from utils.evaluation.evaluator import DetectionStats, ground_truth


def test_ground_truth_of_a_letterboxed_image_is_in_original_pixels() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    lb = letterbox(img, 160, auto=False)
    shape_info = ((100, 200), (lb.ratio, lb.pad))
    box = torch.tensor([[20.0, 10.0, 120.0, 90.0]])  # original pixels
    r, (pw, ph) = lb.ratio[0], lb.pad
    x1, y1, x2, y2 = (box[0] * r + torch.tensor([pw, ph, pw, ph])).tolist()  # network-input pixels
    h, w = lb.img.shape[:2]
    labels = torch.tensor([[0, 3, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]])
    gt = ground_truth(labels, 0, (h, w), shape_info)
    np.testing.assert_allclose(gt, [[3.0, *box[0].tolist()]], atol=1e-3)


def test_ground_truth_as_predictions_scores_one() -> None:
    hw = (64, 64)
    labels = torch.tensor([[0, 1, 0.5, 0.5, 0.25, 0.25], [0, 0, 0.25, 0.25, 0.2, 0.3], [1, 1, 0.7, 0.6, 0.3, 0.2]])
    stats = DetectionStats(["a", "b"])
    for i in range(2):
        gt = ground_truth(labels, i, hw, None)
        det = np.concatenate([gt[:, 1:], np.full((len(gt), 1), 0.9), gt[:, :1]], 1)
        stats.add(det, gt, hw)
    res = stats.compute()
    assert res["map50"] == 1.0 and res["map"] == 1.0 and res["precision"] == 1.0 and res["recall"] == 1.0
    assert set(res["per_class"]) == {0, 1}
