"""Oracle routing: each image's true gain from the hard route, and the sweep that orders images by it.

The router sends the k% highest-φ images hard; the oracle sends the k% images that gain most, which
puts a ceiling line above the router in the sweep and turns AUC-Policy into a routing efficiency,
(router - random) / (oracle - random): 0 for a router no better than chance, 1 for one that ranks
images as the oracle does. Two definitions of an image's gain, both from one :class:`SweepData`:

* ``"own"``: the image's own COCO mAP@.5:.95 with detector 2 minus with detector 1 (COCO
  evaluation restricted to that image). An image without ground truth has no own mAP: gain 0.
* ``"contribution"``: the data set's mAP@.5:.95 when only this image takes detector 2, minus the
  all-easy mAP (leave-one-in). It also charges false positives on images without ground truth.

Both re-accumulate the per-image COCOeval matches ``SweepData`` already holds (as COCOeval does, at
area "all" and the largest maxDets), only for the categories an image touches: "own" equals COCO
evaluation of that image alone, "contribution" equals ``SweepData.score`` of a one-image mask minus the
all-easy score, without re-scoring the whole data set per image.

Measured on 200 held-out demo images (make_demo_data.py seed 1, 128 px), AUC-Policy of mAP@.5:.95:
demo-dy-yolov7-tiny router 0.585, random 0.517, oracle "own" 0.684 (efficiency 0.41), oracle
"contribution" 0.790 (efficiency 0.25); demo-dualres-yolov7-tiny router 0.578, random 0.500, "own" 0.676,
"contribution" 0.822. Gains took 0.2 s ("own") and 7 s ("contribution") on one core, on top of the sweep's
matching. "contribution" orders images better (a higher ceiling: it measures the data set mAP the sweep plots,
false positives and class balance included), so it is the default.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from utils.evaluation.metrics import coco_matches
from utils.routing.sweep_data import SWEEP_PERCENTS, SweepData, SweepPoint, operating_point

GAIN_KINDS = ("own", "contribution")
DEFAULT_GAIN = "contribution"
# "contribution" re-scores every category an image touches over all images, so its work grows with the
# square of the data set; above this many detection records re-scored (about a minute on one core) the
# sweep's oracle uses "own" gains instead, which grow linearly (COCO val2017 would need hours otherwise).
CONTRIBUTION_BUDGET = 1e8


def image_gains(data: SweepData, kind: str = DEFAULT_GAIN) -> np.ndarray:
    """Per-image mAP@.5:.95 gain of the hard route (see the module doc for ``kind``)."""
    if kind not in GAIN_KINDS:
        raise ValueError(f"gain kind {kind!r}: choose one of {GAIN_KINDS}")
    pair = _block_pair(data)
    if pair is None:  # no ground truth, or no detections from either route: no image changes the mAP
        return np.zeros(data.phi.size)
    return (_own_gains if kind == "own" else _contribution_gains)(*pair)


def sweep_gain(data: SweepData, budget: float = CONTRIBUTION_BUDGET) -> str:
    """The gain the sweep's oracle orders by: "contribution" unless it would re-score more than
    ``budget`` detection records, then "own"."""
    pair = _block_pair(data)
    work = 0 if pair is None else sum(int(b1.scores.size) * int(np.count_nonzero(b1.has_dets() | b2.has_dets()))
                                      for b1, b2 in zip(pair[0], pair[1]))
    return "contribution" if work <= budget else "own"


def oracle_order(gains: np.ndarray) -> np.ndarray:
    """Image indices by decreasing gain; equal gains keep image order, so the order is deterministic."""
    return np.argsort(-np.asarray(gains, np.float64), kind="stable")


def oracle_points(data: SweepData, gflops: Mapping[str, float] | None = None,
                  latency: Mapping[str, float] | None = None, percents: Sequence[float] = SWEEP_PERCENTS,
                  kind: str = DEFAULT_GAIN, gains: np.ndarray | None = None) -> list[SweepPoint]:
    """Oracle operating points: k% hard = the k% largest gains (hard counts as in random routing)."""
    order = oracle_order(image_gains(data, kind) if gains is None else gains)
    points = []
    for k in percents:
        hard = np.zeros(order.size, bool)
        hard[order[:int(np.floor(k * order.size / 100 + 0.5))]] = True
        points.append(operating_point(data, k, float("nan"), hard, gflops, latency))
    return points


def routing_efficiency(router_auc: float | None, random_auc: float | None,
                       oracle_auc: float | None) -> float | None:
    """(router - random) / (oracle - random); None when a value is missing or the oracle adds nothing."""
    if router_auc is None or random_auc is None or oracle_auc is None or oracle_auc - random_auc <= 1e-9:
        return None
    return (router_auc - random_auc) / (oracle_auc - random_auc)


@dataclass(frozen=True)
class _Block:
    """One detector's COCOeval matches in one category, images in order (area "all", largest maxDets)."""

    scores: np.ndarray  # (D,) detection scores, each image's in turn
    tp: np.ndarray  # (T, D) matched and not ignored, per IoU threshold
    fp: np.ndarray  # (T, D) unmatched and not ignored
    starts: np.ndarray  # (n + 1,) where each image's detections begin
    n_gt: np.ndarray  # (n,) ground truth that counts, per image

    @classmethod
    def of(cls, records: Sequence, n_iou: int) -> _Block:
        """From per-image match records (None: neither ground truth nor detections there)."""
        empty = {"dtScores": [], "dtMatches": np.zeros((n_iou, 0)), "dtIgnore": np.zeros((n_iou, 0)),
                 "gtIgnore": np.zeros(0)}
        recs = [r or empty for r in records]
        matched = np.concatenate([r["dtMatches"] for r in recs], axis=1) > 0
        ignored = np.concatenate([r["dtIgnore"] for r in recs], axis=1) > 0
        sizes = [len(r["dtScores"]) for r in recs]
        return cls(np.concatenate([np.asarray(r["dtScores"], np.float64) for r in recs]), matched & ~ignored,
                   ~matched & ~ignored, np.concatenate([[0], np.cumsum(sizes)]).astype(int),
                   np.array([np.count_nonzero(np.asarray(r["gtIgnore"]) == 0) for r in recs]))

    def image(self, i: int) -> _Block:
        """Image ``i`` alone."""
        a, b = self.starts[i], self.starts[i + 1]
        return _Block(self.scores[a:b], self.tp[:, a:b], self.fp[:, a:b], np.array([0, b - a]), self.n_gt[i:i + 1])

    def has_dets(self) -> np.ndarray:
        """Per image: whether it has detections here."""
        return np.diff(self.starts) > 0

    def without_dets(self) -> _Block:
        """The same images and ground truth with no detections (a route that found nothing)."""
        none = np.zeros((self.tp.shape[0], 0), bool)
        return _Block(np.zeros(0), none, none, np.zeros_like(self.starts), self.n_gt)

    def swapped(self, i: int, other: _Block) -> _Block:
        """All images, image ``i``'s detections taken from ``other`` (same images, same ground truth)."""
        mine, theirs = slice(self.starts[i], self.starts[i + 1]), slice(other.starts[i], other.starts[i + 1])
        shift = (theirs.stop - theirs.start) - (mine.stop - mine.start)
        return _Block(*(_splice(x, y, mine, theirs) for x, y in ((self.scores, other.scores), (self.tp, other.tp),
                                                                  (self.fp, other.fp))),
                      self.starts + np.where(np.arange(self.starts.size) > i, shift, 0), self.n_gt)

    def ap(self, rec_thrs: np.ndarray) -> float | None:
        """COCO AP@.5:.95 (101-point interpolated precision, as COCOeval.accumulate); None without gt."""
        n_gt = int(self.n_gt.sum())
        if not n_gt:
            return None
        order = np.argsort(-self.scores, kind="mergesort")  # COCOeval's order, ties by image
        tp = np.cumsum(self.tp[:, order], axis=1, dtype=np.float64)
        fp = np.cumsum(self.fp[:, order], axis=1, dtype=np.float64)
        recall, precision = tp / n_gt, tp / (tp + fp + np.spacing(1))
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # precision envelope
        q = np.zeros((tp.shape[0], rec_thrs.size))
        for t in range(tp.shape[0]):
            idx = np.searchsorted(recall[t], rec_thrs, side="left")
            q[t, idx < order.size] = precision[t, idx[idx < order.size]]
        return float(q.mean())


def _splice(x: np.ndarray, y: np.ndarray, mine: slice, theirs: slice) -> np.ndarray:
    """``x`` with its last-axis span ``mine`` replaced by ``y``'s span ``theirs``."""
    return np.concatenate([x[..., :mine.start], y[..., theirs], x[..., mine.stop:]], axis=-1)


def _blocks(evaluator) -> list[_Block]:
    """One :class:`_Block` per category of an evaluated COCOeval (``evalImgs``: category x area x image)."""
    p = evaluator._paramsEval
    n, a, n_area = len(p.imgIds), p.areaRngLbl.index("all"), len(p.areaRng)
    return [_Block.of(evaluator.evalImgs[(k * n_area + a) * n:(k * n_area + a + 1) * n], len(p.iouThrs))
            for k in range(len(p.catIds))]


def _block_pair(data: SweepData) -> tuple[list[_Block], list[_Block], np.ndarray] | None:
    """Both routes' per-category blocks and COCO's recall thresholds (None: nothing to match)."""
    evaluators = data.matches() or [coco_matches(data.gts, d, data.names, data.sizes) for d in (data.det1, data.det2)]
    blocks = [None if e is None else _blocks(e) for e in evaluators]
    known = next((k for k, b in enumerate(blocks) if b is not None), None)
    if known is None:
        return None
    blocks = [b if b is not None else [x.without_dets() for x in blocks[known]] for b in blocks]
    return blocks[0], blocks[1], np.asarray(evaluators[known].params.recThrs, np.float64)


def _own_gains(blocks1: list[_Block], blocks2: list[_Block], rec_thrs: np.ndarray) -> np.ndarray:
    """Each image's own mAP (its categories with ground truth) with detector 2 minus detector 1."""
    gains = np.zeros(blocks1[0].n_gt.size)
    for i in range(gains.size):
        cats = [k for k, b in enumerate(blocks1) if b.n_gt[i]]
        if cats:
            gains[i] = np.mean([blocks2[k].image(i).ap(rec_thrs) - blocks1[k].image(i).ap(rec_thrs) for k in cats])
    return gains


def _contribution_gains(blocks1: list[_Block], blocks2: list[_Block], rec_thrs: np.ndarray) -> np.ndarray:
    """Change of the data set's mAP when one image alone takes detector 2 (categories it touches)."""
    base = [b.ap(rec_thrs) for b in blocks1]
    n_valid = sum(b is not None for b in base)
    gains = np.zeros(blocks1[0].n_gt.size)
    for k, b in enumerate(base):
        if b is not None:
            for i in np.flatnonzero(blocks1[k].has_dets() | blocks2[k].has_dets()):
                gains[i] += (blocks1[k].swapped(i, blocks2[k]).ap(rec_thrs) - b) / n_valid
    return gains
