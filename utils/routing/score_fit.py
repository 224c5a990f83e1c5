"""Fitting the per-route score calibration (:mod:`utils.inference.score_calibration`) on validation images.

Each route's detections on the validation images are labelled true (matched one-to-one to a
ground-truth box of their class at IoU >= 0.5, :func:`utils.evaluation.metrics.match_predictions`)
or false, and a Platt map ``P(true | s) = sigmoid(a * logit(s) + b)`` is fitted to them by maximum
likelihood: calibrated, a score is the route's precision at that score, on both routes alike.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import minimize

from utils.evaluation.metrics import match_predictions
from utils.inference.score_calibration import ScoreCalibration

EPS = 1e-6


def _logit(s):
    s = np.clip(np.asarray(s, dtype=np.float64), EPS, 1 - EPS)
    return np.log(s) - np.log1p(-s)


def fit_platt(scores: np.ndarray, correct: np.ndarray, l2: float = 1e-3) -> tuple[float, float]:
    """(a, b) of P(correct | s) = sigmoid(a logit(s) + b) by maximum likelihood (a small L2 on a - 1, b)."""
    x, y = _logit(scores), np.asarray(correct, dtype=np.float64)
    if len(x) < 2 or y.min() == y.max():
        raise ValueError(f"need true and false detections to fit a score map, got {int(y.sum())} of {len(y)} true")

    def loss(p):
        z = p[0] * x + p[1]
        nll = np.mean(np.logaddexp(0, z) - y * z)
        return nll + l2 * ((p[0] - 1) ** 2 + p[1] ** 2)
    res = minimize(loss, np.array([1.0, 0.0]), method="L-BFGS-B", bounds=[(1e-3, 100.0), (-50.0, 50.0)])
    return float(res.x[0]), float(res.x[1])


def labelled_scores(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], iou: float = 0.5
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, correct) of every detection: ``preds`` per image (k, 6) [x1, y1, x2, y2, score, cls],
    ``gts`` per image (m, 5) [cls, x1, y1, x2, y2], both in original-image pixels."""
    scores, correct = [], []
    for p, g in zip(preds, gts):
        if not len(p):
            continue
        hit = match_predictions(p, g, iou_thresholds=[iou])[:, 0]
        scores.append(p[:, 4])
        correct.append(hit)
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return np.concatenate(scores), np.concatenate(correct)


def fit_score_calibration(route_preds: Mapping[str, Sequence[np.ndarray]], gts: Sequence[np.ndarray]
                          ) -> ScoreCalibration:
    """One map per route from its detections on the same validation images."""
    return ScoreCalibration({route: fit_platt(*labelled_scores(preds, gts)) for route, preds in route_preds.items()})
