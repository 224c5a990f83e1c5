"""Tests for utils/evaluation/metrics.py: COCO mAP, matching, PR curves, confusion matrix, AUC-Policy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from utils.evaluation.metrics import (
    ConfusionMatrix,
    PRResult,
    auc_policy,
    average_precision,
    coco80_to_91,
    coco_evaluate,
    coco_json_predictions,
    fitness,
    match_predictions,
    pr_curves,
)

NAMES = ["cat", "dog"]


def _dataset() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Three images: two objects, none, one object; predictions that match every box exactly."""
    gts = [np.array([[0, 10, 10, 50, 50], [1, 60, 60, 100, 120]], dtype=float),
           np.zeros((0, 5)),
           np.array([[0, 0, 0, 20, 20]], dtype=float)]
    preds = [np.array([[10, 10, 50, 50, 0.9, 0], [60, 60, 100, 120, 0.8, 1]], dtype=float),
             np.zeros((0, 6)),
             np.array([[0, 0, 20, 20, 0.7, 0]], dtype=float)]
    return gts, preds


def _shift_to_iou(box: np.ndarray, iou: float) -> np.ndarray:
    """Shift an xyxy box horizontally so its IoU with the original equals ``iou``."""
    w = box[2] - box[0]
    dx = w * (1 - iou) / (1 + iou)  # overlap (w - dx) / union (w + dx) = iou
    return box + np.array([dx, 0, dx, 0])


# --------------------------------------------------------------------------- coco_evaluate
def test_perfect_predictions_score_one():
    gts, preds = _dataset()
    res = coco_evaluate(gts, preds, NAMES, image_sizes=[(200, 200)] * 3)
    assert res["map50"] == pytest.approx(1.0) and res["map"] == pytest.approx(1.0)
    assert set(res["per_class"]) == {0, 1}
    assert res["per_class"][0]["n_gt"] == 2 and res["per_class"][1]["n_gt"] == 1
    assert all(v["ap"] == pytest.approx(1.0) for v in res["per_class"].values())
    assert len(res["stats"]) == 12


def test_tensors_and_dict_names_accepted():
    gts, preds = _dataset()
    res = coco_evaluate([torch.from_numpy(g) for g in gts], [torch.from_numpy(p) for p in preds],
                        {0: "cat", 1: "dog"})
    assert res["map"] == pytest.approx(1.0)
    assert all(isinstance(k, int) for k in res["per_class"])


def test_no_predictions_gives_zero():
    gts, _ = _dataset()
    res = coco_evaluate(gts, [np.zeros((0, 6))] * 3, NAMES)
    assert res["map50"] == 0.0 and res["map"] == 0.0
    assert res["per_class"][0] == {"ap50": 0.0, "ap": 0.0, "n_gt": 2}
    assert coco_evaluate(gts, [None, None, None], NAMES)["map"] == 0.0


def test_no_ground_truth_gives_zero():
    _, preds = _dataset()
    res = coco_evaluate([np.zeros((0, 5))] * 3, preds, NAMES)
    assert res["map"] == 0.0 and res["per_class"] == {}
    assert coco_evaluate([], [], NAMES)["map"] == 0.0


def test_false_positive_on_empty_image_lowers_ap():
    gts, preds = _dataset()
    preds[1] = np.array([[5, 5, 30, 30, 0.95, 0]])  # top-scoring false positive, image without GT
    res = coco_evaluate(gts, preds, NAMES)
    assert res["per_class"][0]["ap50"] < 1.0
    assert res["per_class"][1]["ap50"] == pytest.approx(1.0)


def test_iou_06_keeps_map50_but_lowers_map():
    gts, preds = _dataset()
    shifted = [p.copy() for p in preds]
    for p in shifted:
        for row in p:
            row[:4] = _shift_to_iou(row[:4], 0.6)
    res = coco_evaluate(gts, shifted, NAMES)
    assert res["map50"] == pytest.approx(1.0)
    assert 0.0 < res["map"] < 1.0
    # IoU 0.6 passes thresholds 0.50, 0.55, 0.60 (3 of 10)
    assert res["map"] == pytest.approx(0.3, abs=0.02)


def test_halving_recall_lowers_ap():
    gts = [np.array([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30]], dtype=float)]
    full = coco_evaluate(gts, [np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 0]])], ["a"])
    half = coco_evaluate(gts, [np.array([[0, 0, 10, 10, 0.9, 0]])], ["a"])
    assert full["map50"] == pytest.approx(1.0)
    assert half["map50"] == pytest.approx(0.5, abs=0.02)
    assert half["per_class"][0]["ap"] < full["per_class"][0]["ap"]


def test_input_validation():
    gts, preds = _dataset()
    with pytest.raises(ValueError, match="prediction entries"):
        coco_evaluate(gts, preds[:2], NAMES)
    with pytest.raises(ValueError, match="class ids"):
        coco_evaluate(gts, preds, ["cat"])


def test_coco_json_predictions_and_class_map():
    preds = [np.array([[10, 20, 40, 60, 0.123456789, 1]]), np.zeros((0, 6))]
    out = coco_json_predictions(preds, [np.int64(42), 7], class_map=coco80_to_91())
    assert out == [{"image_id": 42, "category_id": 2, "bbox": [10.0, 20.0, 30.0, 40.0],
                    "score": 0.12346}]
    assert isinstance(out[0]["image_id"], int)
    assert coco_json_predictions(preds, [1, 2])[0]["category_id"] == 1
    ids = coco80_to_91()
    assert len(ids) == 80 and len(set(ids)) == 80 and ids[0] == 1 and ids[-1] == 90
    assert 12 not in ids and ids[11] == 13


# --------------------------------------------------------------------------- matching / PR
def test_match_predictions_one_to_one_and_class_aware():
    gt = np.array([[0, 0, 0, 10, 10]], dtype=float)
    pred = np.array([[0, 0, 10, 10, 0.9, 0],     # exact
                     [0, 0, 10, 9, 0.8, 0],      # duplicate, IoU 0.9
                     [0, 0, 10, 10, 0.95, 1]])   # exact box, wrong class
    correct = match_predictions(pred, gt)
    assert correct.shape == (3, 10) and correct.dtype == bool
    assert correct[0].all()            # highest IoU wins every threshold
    assert not correct[1:].any()       # one-to-one, class-aware
    assert correct.sum(0).max() <= len(gt)


def test_match_predictions_thresholds_and_empty():
    gt = np.array([[0, 0, 0, 10, 10]], dtype=float)
    pred = np.array([np.r_[_shift_to_iou(np.array([0, 0, 10, 10.0]), 0.72), 0.5, 0]])
    correct = match_predictions(pred, gt)
    assert correct[0].tolist() == [True] * 5 + [False] * 5  # 0.50..0.70 pass, 0.75.. fail
    assert match_predictions(np.zeros((0, 6)), gt).shape == (0, 10)
    assert not match_predictions(pred, np.zeros((0, 5))).any()
    assert match_predictions(pred, gt, [0.5]).shape == (1, 1)


def test_match_predictions_greedy_prefers_highest_iou():
    gts = np.array([[0, 0, 0, 10, 10], [0, 4, 0, 14, 10]], dtype=float)
    pred = np.array([[1, 0, 11, 10, 0.9, 0], [4, 0, 14, 10, 0.8, 0]], dtype=float)
    correct = match_predictions(pred, gts, [0.5])
    assert correct[:, 0].tolist() == [True, True]  # each prediction gets its own object


def test_average_precision_known_values():
    ap, curve = average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0]))
    assert ap == pytest.approx(1.0) and curve.shape == (1000,)
    ap, _ = average_precision(np.array([0.5, 0.5]), np.array([1.0, 0.5]))
    assert ap == pytest.approx(51 / 101)  # precision 1 up to recall 0.5, then nothing


def test_pr_curves_perfect_and_best_point():
    tp = np.array([True, True, True, False])
    conf = np.array([0.9, 0.8, 0.7, 0.2])
    pred_cls = np.array([0, 1, 0, 0])
    res = pr_curves(tp, conf, pred_cls, np.array([0, 0, 1]), NAMES)
    assert isinstance(res, PRResult)
    assert res.classes.tolist() == [0, 1] and res.names == NAMES and res.n_gt.tolist() == [2, 1]
    assert res.precision.shape == res.recall.shape == res.f1.shape == res.pr.shape == (2, 1000)
    assert res.ap50 == pytest.approx([1.0, 1.0])
    assert 0.2 < res.best_conf <= 0.7
    assert res.mr == pytest.approx(1.0) and res.mp > 0.99 and res.mf1 > 0.99
    assert np.all(np.diff(res.recall, axis=1) <= 1e-12)  # recall falls as the threshold rises


def test_pr_curves_from_match_matrix_and_missing_class():
    gt = np.array([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30]], dtype=float)
    pred = np.array([[0, 0, 10, 10, 0.9, 0]], dtype=float)
    res = pr_curves(match_predictions(pred, gt), pred[:, 4], pred[:, 5], gt[:, 0], NAMES)
    assert res.ap50.tolist() == pytest.approx([1.0, 0.0])
    assert res.r.tolist() == pytest.approx([1.0, 0.0])


def test_pr_curves_empty():
    res = pr_curves(np.zeros((0, 10), bool), [], [], [], NAMES)
    assert res.classes.size == 0 and res.mp == res.mr == res.mf1 == 0.0
    with pytest.raises(ValueError, match="lengths"):
        pr_curves([True], [0.5, 0.4], [0], [0], NAMES)


# --------------------------------------------------------------------------- confusion matrix
def test_confusion_matrix_counts():
    cm = ConfusionMatrix(nc=2, conf=0.25, iou_thres=0.45)
    gt = np.array([[0, 0, 0, 10, 10],      # found as class 0
                   [1, 20, 20, 30, 30],    # found but called class 0
                   [1, 50, 50, 60, 60]], dtype=float)  # missed
    pred = np.array([[0, 0, 10, 10, 0.9, 0],
                     [20, 20, 30, 30, 0.8, 0],
                     [80, 80, 90, 90, 0.7, 1],    # background false positive
                     [50, 50, 60, 60, 0.1, 1]])   # below conf: ignored
    cm.update(pred, gt)
    cm.update(None, np.array([[0, 0, 0, 5, 5]]))    # image with a missed object only
    cm.update(np.array([[0, 0, 5, 5, 0.5, 1]]), None)  # image with a false positive only
    expected = np.array([[1, 1, 0],
                         [0, 0, 2],
                         [1, 1, 0]])
    np.testing.assert_array_equal(cm.matrix, expected)
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0] and fp.tolist() == [1, 2]
    with pytest.raises(ValueError, match="class ids"):
        cm.update(np.array([[0, 0, 5, 5, 0.5, 7]]), None)


def test_confusion_matrix_duplicate_is_background():
    cm = ConfusionMatrix(nc=1)
    gt = np.array([[0, 0, 0, 10, 10]], dtype=float)
    cm.update(np.array([[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 9, 0.8, 0]]), gt)
    np.testing.assert_array_equal(cm.matrix, [[1, 1], [0, 0]])


# --------------------------------------------------------------------------- scalar scores
def test_fitness_weights():
    assert fitness(0.5, 0.3) == pytest.approx(0.05 + 0.27)


def test_auc_policy_linear_is_half():
    assert auc_policy([10, 20, 30], [0.40, 0.45, 0.50]) == pytest.approx(0.5)


def test_auc_policy_hand_computed():
    # normalised gains 0, 1, 1 at beta 0, 0.5, 1: area 0.25 + 0.5
    assert auc_policy([0, 0.5, 1], [0.2, 0.6, 0.6]) == pytest.approx(0.75)
    # concave (gains 0, .9, 1 -> .225 + .475) beats convex (0, .1, 1 -> .025 + .275)
    concave = auc_policy([100, 150, 200], [40.0, 49.0, 50.0])
    convex = auc_policy([100, 150, 200], [40.0, 41.0, 50.0])
    assert concave == pytest.approx(0.7) and convex == pytest.approx(0.3)
    # units of either axis do not matter
    assert auc_policy([1, 1.5, 2], [0.40, 0.49, 0.50]) == pytest.approx(concave)


def test_auc_policy_unsorted_and_uneven_spacing():
    costs, metrics = [30, 10, 12, 20], [0.5, 0.4, 0.48, 0.49]
    order = np.argsort(costs)
    sorted_value = auc_policy(np.array(costs)[order], np.array(metrics)[order])
    assert auc_policy(costs, metrics) == pytest.approx(sorted_value)
    beta = (np.array([10, 12, 20, 30]) - 10) / 20
    gain = (np.array([0.4, 0.48, 0.49, 0.5]) - 0.4) / 0.1
    expected = float(np.sum(np.diff(beta) * (gain[1:] + gain[:-1]) / 2))
    assert sorted_value == pytest.approx(expected)


@pytest.mark.parametrize("costs, metrics, message", [
    ([1, 2], [0.5], "length"),
    ([1], [0.5], "at least 2"),
    ([1, math.nan, 3], [0.1, 0.2, 0.3], "finite"),
    ([1, 2, 3], [0.1, math.inf, 0.3], "finite"),
    ([1, 2, 2], [0.1, 0.2, 0.3], "same cost"),
    ([1, 2, 3], [0.5, 0.5, 0.5], "undefined"),   # flat line: zero denominator in Eq. 10
    ([[1, 2]], [[0.1, 0.2]], "1-D"),
])
def test_auc_policy_errors(costs, metrics, message):
    with pytest.raises(ValueError, match=message):
        auc_policy(costs, metrics)
