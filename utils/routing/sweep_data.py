"""Per-image inputs of the accuracy-speed sweep and its operating points.

:class:`SweepData` holds each image's ground truth, both routes' detections and φ from one pass;
an operating point is the mAP and mean cost of one assignment of images to the routes. The
policies that choose the assignment (router, random, oracle) build on this.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from utils.evaluation.metrics import coco_evaluate, coco_matches, coco_stats, summarize_cocoeval

SWEEP_PERCENTS = tuple(range(0, 101, 10))


@dataclass(frozen=True)
class SweepPoint:
    """One operating point: hard share, its threshold, accuracy and mean cost per image."""

    percent: float  # requested hard percentage
    threshold: float
    hard_fraction: float  # achieved on these images
    map50: float
    map: float
    gflops: float
    latency_ms: float


@dataclass
class SweepData:
    """Per-image ground truth and both detectors' detections (original pixels), and φ."""

    names: list[str]
    gts: list[np.ndarray]
    det1: list[np.ndarray]
    det2: list[np.ndarray]
    phi: np.ndarray
    sizes: list[tuple[int, int]]
    _matches: tuple | None = field(default=None, repr=False)

    def assemble(self, hard: np.ndarray) -> list[np.ndarray]:
        """Detections of routed inference: detector 2 where ``hard``, detector 1 elsewhere."""
        if hard.shape != self.phi.shape:
            raise ValueError(f"route mask of shape {hard.shape} for {self.phi.size} images")
        return [d2 if h else d1 for d1, d2, h in zip(self.det1, self.det2, hard)]

    def score(self, hard: np.ndarray) -> dict:
        """COCO mAP of the routed detections; per-image matches are computed once per detector."""
        matched = self.matches()
        if matched is None:
            return coco_evaluate(self.gts, self.assemble(hard), self.names, image_sizes=self.sizes)
        e1, e2 = matched
        reps = len(e1.evalImgs) // len(self.gts)  # evalImgs: category x area range x image
        evaluator = copy.copy(e1)
        evaluator.evalImgs = [b if h else a for a, b, h in zip(e1.evalImgs, e2.evalImgs, np.tile(hard, reps))]
        return coco_stats(summarize_cocoeval(evaluator))

    def matches(self):
        """Both detectors' COCOeval matches (None when one of them has no detections)."""
        if self._matches is None:
            pair = tuple(coco_matches(self.gts, d, self.names, self.sizes) for d in (self.det1, self.det2))
            self._matches = (None if None in pair else pair,)
        return self._matches[0]


def _mean_cost(fraction: float, costs: Mapping[str, float] | None) -> float:
    if not costs:
        return float("nan")
    return (1 - fraction) * float(costs["easy"]) + fraction * float(costs["hard"])


def operating_point(data: SweepData, percent: float, threshold: float, hard: np.ndarray, gflops, latency,
                    scores: dict | None = None) -> SweepPoint:
    """The point of routing ``hard`` images to detector 2 (``scores``: its mAP when already known)."""
    scores = scores or data.score(hard)
    f = float(hard.mean()) if hard.size else 0.0
    return SweepPoint(float(percent), float(threshold), f, scores["map50"], scores["map"],
                      _mean_cost(f, gflops), _mean_cost(f, latency))
