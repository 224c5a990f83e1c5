"""utils/inference/score_calibration.py and utils/routing/score_fit.py: per-route Platt maps,
fitted on labelled detections, applied after NMS with the threshold on the calibrated scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.inference.score_calibration import ScoreCalibration
from utils.routing.score_fit import fit_platt, labelled_scores

MAPS = ScoreCalibration({"easy": (1.0, 0.0), "hard": (0.7, 2.2)})


def test_maps_are_monotone_and_the_identity_leaves_scores_alone() -> None:
    s = torch.linspace(0.001, 0.999, 50)
    assert torch.allclose(MAPS(s, "easy"), s, atol=1e-6)
    hard = MAPS(s, "hard")
    assert bool((hard[1:] > hard[:-1]).all()) and float(hard[0]) > float(s[0])  # lifted, order kept


def test_raw_threshold_is_the_lowest_score_any_route_lifts_to_conf() -> None:
    conf = 0.25
    raw = MAPS.raw_threshold(conf)
    assert float(MAPS(torch.tensor([raw]), "hard")) == pytest.approx(conf, rel=1e-4)
    assert raw < conf and MAPS.raw_threshold(0.0) == 0.0


def test_apply_maps_each_image_by_its_route_and_drops_what_falls_below() -> None:
    det = torch.tensor([[0, 0, 10, 10, 0.30, 1], [0, 0, 5, 5, 0.02, 0]])
    easy, hard = MAPS.apply([det, det], ["easy", "hard"], conf=0.25)
    assert easy.shape == (1, 6) and float(easy[0, 4]) == pytest.approx(0.30, abs=1e-6)
    assert hard.shape == (2, 6) and float(hard[1, 4]) > 0.25 and torch.equal(hard[:, :4], det[:, :4])
    assert ScoreCalibration.from_record({"score_calibration": MAPS.record()}) == MAPS
    assert ScoreCalibration.from_record({}) is None and ScoreCalibration.from_record(None) is None


def test_fit_recovers_a_known_map() -> None:
    rng = np.random.default_rng(0)
    s = rng.uniform(0.001, 0.5, 20000)
    z = 0.7 * np.log(s / (1 - s)) + 2.2
    correct = rng.uniform(size=s.size) < 1 / (1 + np.exp(-z))
    a, b = fit_platt(s, correct)
    assert a == pytest.approx(0.7, abs=0.05) and b == pytest.approx(2.2, abs=0.15)
    with pytest.raises(ValueError, match="true and false"):
        fit_platt(s[:10], np.ones(10, bool))


def test_labels_match_boxes_of_the_same_class_at_iou_half() -> None:
    preds = [np.array([[0, 0, 10, 10, 0.9, 1], [0, 0, 10, 10, 0.8, 0], [50, 50, 60, 60, 0.7, 1]]), np.zeros((0, 6))]
    gts = [np.array([[1, 0, 0, 10, 10]]), np.array([[0, 1, 1, 5, 5]])]
    scores, correct = labelled_scores(preds, gts)
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7]) and correct.tolist() == [True, False, False]
