"""Detection metrics.

* :func:`coco_evaluate` — the reported mAP@.5 and mAP@.5:.95, computed by pycocotools' COCOeval.
* :func:`match_predictions`, :func:`pr_curves` — YOLO-style precision / recall / F1 at a
  confidence threshold and the curves drawn by :mod:`utils.evaluation.plots` (their AP is for plot legends
  only, never reported as the mAP).
* :class:`ConfusionMatrix`, :func:`fitness` (best-checkpoint score) and :func:`auc_policy`
  (quality of an accuracy/compute trade-off, DualRes Eq. 10).

Array conventions: ground truth ``(n, 5)`` = ``[cls, x1, y1, x2, y2]``, predictions ``(m, 6)`` =
``[x1, y1, x2, y2, conf, cls]``, both in the same pixel space. numpy arrays or torch tensors.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

from utils.boxes import box_iou
from utils.data.config import Names, names_list

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Sequence[float]]]

__all__ = [
    "coco_evaluate", "coco_json_predictions", "coco80_to_91", "match_predictions", "pr_curves",
    "PRResult", "average_precision", "ConfusionMatrix", "fitness", "auc_policy",
]


# --------------------------------------------------------------------------- helpers
def _as_rows(x: ArrayLike | None, cols: int) -> np.ndarray:
    """Any array-like (or None) as a float64 ``(k, cols)`` numpy array."""
    if x is None:
        return np.zeros((0, cols))
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, cols))
    if arr.ndim != 2 or arr.shape[1] < cols:
        raise ValueError(f"expected an array of shape (k, {cols}), got {arr.shape}")
    return arr[:, :cols]


def _pair_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of two xyxy box arrays."""
    return box_iou(torch.from_numpy(boxes_a), torch.from_numpy(boxes_b)).numpy()


def _greedy_pairs(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one (row, col) pairs with IoU >= threshold, taken greedily from the highest IoU."""
    rows, cols = np.nonzero((iou >= threshold) & (iou > 0))
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r, used_c, pairs = set(), set(), []
    for r, c in zip(rows[order].tolist(), cols[order].tolist()):
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c))
    return pairs


# --------------------------------------------------------------------------- COCO mAP
def coco80_to_91() -> list[int]:
    """Official COCO category id (1..90) of each of the 80 contiguous class indices."""
    unused = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    return [i for i in range(1, 91) if i not in unused]


def _coco_gt_dict(gts: Sequence[np.ndarray], names: list[str],
                  image_sizes: Sequence[tuple[int, int]] | None) -> dict[str, list]:
    """In-memory COCO ground-truth dataset; ids are 1-based (COCOeval treats 0 as unmatched)."""
    images, annotations = [], []
    for i, gt in enumerate(gts):
        image: dict[str, Any] = {"id": i + 1}
        if image_sizes is not None:
            h, w = image_sizes[i][:2]
            image.update(height=int(h), width=int(w))
        images.append(image)
        for cls, x1, y1, x2, y2 in gt.tolist():
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(cls) + 1, "bbox": [x1, y1, w, h],
                                "area": w * h, "iscrowd": 0})
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco_dets(preds: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """COCO result dicts for the in-memory dataset of :func:`_coco_gt_dict`."""
    dets = []
    for i, det in enumerate(preds):
        for x1, y1, x2, y2, conf, cls in det.tolist():
            dets.append({"image_id": i + 1, "category_id": int(cls) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": conf})
    return dets


def _matched_cocoeval(gt: dict[str, list], dets: list[dict], max_dets: int):
    """COCOeval after ``evaluate()`` (per image and category matches); chatter discarded."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
    return evaluator


def summarize_cocoeval(evaluator, verbose: bool = False):
    """Accumulate and summarise an evaluated COCOeval (in place); returns it."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    if verbose:
        print(summary.getvalue(), end="")
    return evaluator


def coco_matches(gts: Sequence[ArrayLike], preds: Sequence[ArrayLike], names: Names,
                 image_sizes: Sequence[tuple[int, int]] | None = None, max_dets: int = 100):
    """COCOeval with per-image matches done (``evaluate()``), before accumulation.

    Its ``evalImgs`` are ordered by category, area range, then image (in input order), which
    lets callers mix per-image results of several prediction sets (see utils/routing/sweep.py). None
    when there are no detections or no ground truth (pycocotools cannot load those).
    """
    names = names_list(names)
    gts = [_as_rows(g, 5) for g in gts]
    dets = _coco_dets([_as_rows(p, 6) for p in preds])
    if not dets or not sum(len(g) for g in gts):
        return None
    return _matched_cocoeval(_coco_gt_dict(gts, names, image_sizes), dets, max_dets)


def coco_stats(evaluator) -> dict[str, float]:
    """mAP@.5 and mAP@.5:.95 of a summarised COCOeval (-1, i.e. undefined, becomes 0)."""
    stats = [max(float(s), 0.0) for s in evaluator.stats]
    return {"map50": stats[1], "map": stats[0], "stats": stats}


def _per_class_from_precision(evaluator, n_gt: np.ndarray) -> dict[int, dict[str, float]]:
    """Per-class AP50 and AP50:95 from COCOeval's precision array (T, R, K, area, maxDets)."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # area 'all', largest maxDets
    i50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        c = int(cat_id) - 1
        if n_gt[c] == 0:  # COCO leaves classes without ground truth at -1: not evaluated
            continue
        p = precision[:, :, k]
        valid = p > -1
        ap = float(p[valid].mean()) if valid.any() else 0.0
        ap50 = float(p[i50][valid[i50]].mean()) if valid[i50].any() else 0.0
        out[c] = {"ap50": ap50, "ap": ap, "n_gt": int(n_gt[c])}
    return out


def coco_evaluate(gts: Sequence[ArrayLike], preds: Sequence[ArrayLike], names: Names,
                  image_sizes: Sequence[tuple[int, int]] | None = None, max_dets: int = 100,
                  verbose: bool = False) -> dict[str, Any]:
    """COCO bbox mAP of per-image predictions against per-image ground truth.

    Args:
        gts: one ``(n, 5)`` array ``[cls, x1, y1, x2, y2]`` per image (original-image pixels).
        preds: one ``(m, 6)`` array ``[x1, y1, x2, y2, conf, cls]`` per image.
        names: class names (list, or dict id -> name); defines the evaluated categories.
        image_sizes: optional ``(height, width)`` per image, stored in the COCO image records.
        max_dets: detections per image kept by COCOeval (COCO's standard is 100).
        verbose: print COCOeval's 12-line summary.

    Returns:
        ``{'map50', 'map', 'per_class': {cls: {'ap50', 'ap', 'n_gt'}}, 'stats'}`` where
        ``stats`` is COCOeval's 12-number summary. Classes without ground truth are not in
        ``per_class``; with no ground truth at all, or no predictions, every mAP is 0.
    """
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth entries but {len(preds)} prediction entries")
    if image_sizes is not None and len(image_sizes) != len(gts):
        raise ValueError(f"{len(image_sizes)} image sizes for {len(gts)} images")
    names = names_list(names)
    gts = [_as_rows(g, 5) for g in gts]
    preds = [_as_rows(p, 6) for p in preds]
    gt_cls = np.concatenate([g[:, 0] for g in gts]).astype(int) if gts else np.zeros(0, int)
    if gt_cls.size and (gt_cls.min() < 0 or gt_cls.max() >= len(names)):
        raise ValueError(f"ground-truth class ids must be in [0, {len(names)}), "
                         f"got {gt_cls.min()}..{gt_cls.max()}")
    n_gt = np.bincount(gt_cls, minlength=len(names))
    evaluator = coco_matches(gts, preds, names, image_sizes, max_dets)
    if evaluator is None:  # no detections or no ground truth
        per_class = {int(c): {"ap50": 0.0, "ap": 0.0, "n_gt": int(n)}
                     for c, n in enumerate(n_gt) if n}
        return {"map50": 0.0, "map": 0.0, "per_class": per_class, "stats": [0.0] * 12}
    evaluator = summarize_cocoeval(evaluator, verbose)
    return {**coco_stats(evaluator), "per_class": _per_class_from_precision(evaluator, n_gt)}


def coco_json_predictions(preds: Sequence[ArrayLike], image_ids: Sequence[Any],
                          class_map: Sequence[int] | Mapping[int, int] | None = None
                          ) -> list[dict[str, Any]]:
    """Predictions in COCO results format (for ``--save-json``).

    ``preds`` holds one ``(m, 6)`` array ``[x1, y1, x2, y2, conf, cls]`` per image in
    original-image pixels; ``image_ids`` the matching COCO image ids. ``class_map`` maps a class
    index to a category id, e.g. :func:`coco80_to_91` for COCO; default: the class index itself.
    """
    if len(preds) != len(image_ids):
        raise ValueError(f"{len(preds)} prediction entries but {len(image_ids)} image ids")
    results = []
    for det, image_id in zip(preds, image_ids):
        image_id = image_id.item() if isinstance(image_id, np.generic) else image_id
        for x1, y1, x2, y2, conf, cls in _as_rows(det, 6).tolist():
            category = int(class_map[int(cls)]) if class_map is not None else int(cls)
            bbox = [round(v, 3) for v in (x1, y1, x2 - x1, y2 - y1)]
            results.append({"image_id": image_id, "category_id": category, "bbox": bbox,
                            "score": round(conf, 5)})
    return results


# --------------------------------------------------------------------------- P / R / F1
def match_predictions(pred: ArrayLike, gt: ArrayLike,
                      iou_thresholds: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Which predictions are true positives at each IoU threshold.

    For every threshold, same-class (prediction, ground truth) pairs with IoU >= threshold are
    matched one-to-one, highest IoU first. Returns a bool array ``(m, len(iou_thresholds))``;
    the default thresholds are 0.50:0.05:0.95.
    """
    thresholds = (np.linspace(0.5, 0.95, 10) if iou_thresholds is None
                  else np.asarray(iou_thresholds, dtype=np.float64).reshape(-1))
    pred, gt = _as_rows(pred, 6), _as_rows(gt, 5)
    correct = np.zeros((len(pred), len(thresholds)), dtype=bool)
    if not len(pred) or not len(gt):
        return correct
    iou = _pair_iou(gt[:, 1:5], pred[:, :4]) * (gt[:, :1] == pred[None, :, 5])
    for k, threshold in enumerate(thresholds):
        for _, j in _greedy_pairs(iou, float(threshold)):
            correct[j, k] = True
    return correct


def average_precision(recall: np.ndarray, precision: np.ndarray,
                      grid: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """AP of one ranked list and its interpolated precision sampled on a recall ``grid``.

    Precision is made monotone (the best precision at any higher recall), then read at the first
    recall >= each grid point (COCO-style); AP is its mean over a 101-point recall grid.
    """
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([1.0], precision, [0.0]))
    envelope = np.maximum.accumulate(p[::-1])[::-1]

    def sample(points: np.ndarray) -> np.ndarray:
        idx = np.minimum(np.searchsorted(r, points, side="left"), len(r) - 1)
        return envelope[idx]

    ap = float(sample(np.linspace(0, 1, 101)).mean())
    return ap, sample(np.linspace(0, 1, 1000) if grid is None else grid)


@dataclass
class PRResult:
    """Per-class curves over a confidence (or recall) grid ``px`` plus the best-F1 operating point.

    Rows follow ``classes`` (the classes with ground truth). ``precision``/``recall``/``f1`` are
    the curves against confidence, ``pr`` the interpolated precision against recall (``px`` used
    as the recall grid), ``ap50`` its area — for the PR plot legend only, never the reported
    mAP. ``p``, ``r``, ``f1_best`` are per class at ``best_conf``, where the mean F1 peaks.
    """

    classes: np.ndarray
    names: list[str]
    n_gt: np.ndarray
    px: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    pr: np.ndarray
    ap50: np.ndarray
    best_conf: float
    p: np.ndarray
    r: np.ndarray
    f1_best: np.ndarray

    @property
    def mp(self) -> float:
        """Mean precision at ``best_conf``."""
        return float(self.p.mean()) if self.p.size else 0.0

    @property
    def mr(self) -> float:
        """Mean recall at ``best_conf``."""
        return float(self.r.mean()) if self.r.size else 0.0

    @property
    def mf1(self) -> float:
        """Mean F1 at ``best_conf``."""
        return float(self.f1_best.mean()) if self.f1_best.size else 0.0


def _class_curves(tp: np.ndarray, conf: np.ndarray, n_gt: int, px: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Precision and recall vs confidence, interpolated PR curve and AP for one class."""
    order = np.argsort(-conf, kind="stable")
    tp, conf = tp[order], conf[order]
    tpc = np.cumsum(tp)
    fpc = np.cumsum(1.0 - tp)
    recall = tpc / max(n_gt, 1)
    precision = tpc / np.maximum(tpc + fpc, 1e-16)
    # np.interp needs increasing x: walk the confidence grid from high to low via -conf
    r_curve = np.interp(-px, -conf, recall, left=0.0)
    p_curve = np.interp(-px, -conf, precision, left=1.0)
    ap, pr = average_precision(recall, precision, px)
    return p_curve, r_curve, pr, ap


def pr_curves(tp: ArrayLike, conf: ArrayLike, pred_cls: ArrayLike, target_cls: ArrayLike,
              names: Names, n_points: int = 1000) -> PRResult:
    """Per-class precision/recall/F1 curves from matched predictions of a whole dataset.

    ``tp`` is the output of :func:`match_predictions` (only the first column, IoU 0.5, is used)
    or a 1-D bool array; ``conf``/``pred_cls`` describe the predictions and ``target_cls`` lists
    the class of every ground-truth box.
    """
    tp = np.asarray(tp, dtype=np.float64)
    tp = tp[:, 0] if tp.ndim == 2 else tp.reshape(-1)
    conf = np.asarray(conf, dtype=np.float64).reshape(-1)
    pred_cls = np.asarray(pred_cls).reshape(-1).astype(int)
    if not len(tp) == len(conf) == len(pred_cls):
        raise ValueError("tp, conf and pred_cls lengths differ: "
                         f"{len(tp)}, {len(conf)}, {len(pred_cls)}")
    target_cls = np.asarray(target_cls).reshape(-1).astype(int)
    classes, n_gt = np.unique(target_cls, return_counts=True)
    px = np.linspace(0, 1, n_points)
    curves = np.zeros((3, len(classes), n_points))  # precision, recall, pr
    ap50 = np.zeros(len(classes))
    for k, c in enumerate(classes):
        sel = pred_cls == c
        if sel.any():
            p, r, pr, ap50[k] = _class_curves(tp[sel], conf[sel], n_gt[k], px)
            curves[:, k] = p, r, pr
    f1 = 2 * curves[0] * curves[1] / np.maximum(curves[0] + curves[1], 1e-16)
    best = int(f1.mean(0).argmax()) if len(classes) else 0
    all_names = names_list(names)
    label = [all_names[c] if c < len(all_names) else str(c) for c in classes]
    return PRResult(classes, label, n_gt, px, curves[0], curves[1], f1, curves[2], ap50,
                    float(px[best]), curves[0][:, best], curves[1][:, best], f1[:, best])


# --------------------------------------------------------------------------- confusion matrix
class ConfusionMatrix:
    """Detection confusion matrix with a background class.

    ``matrix[predicted, true]`` has shape ``(nc + 1, nc + 1)``; index ``nc`` is background: the
    last column counts predictions matching no object, the last row objects nobody found.
    Predictions below ``conf`` are ignored; boxes are matched one-to-one, class-agnostically,
    highest IoU first, when IoU >= ``iou_thres``.
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45) -> None:
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres
        self.matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)

    def _classes(self, values: np.ndarray, what: str) -> np.ndarray:
        cls = values.astype(int)
        if cls.size and (cls.min() < 0 or cls.max() >= self.nc):
            raise ValueError(f"{what} class ids must be in [0, {self.nc}), "
                             f"got {cls.min()}..{cls.max()}")
        return cls

    def update(self, pred: ArrayLike | None, gt: ArrayLike | None) -> None:
        """Add one image: predictions ``(m, 6)`` and ground truth ``(n, 5)``."""
        pred, gt = _as_rows(pred, 6), _as_rows(gt, 5)
        pred = pred[pred[:, 4] >= self.conf]
        pc, gc = self._classes(pred[:, 5], "prediction"), self._classes(gt[:, 0], "ground-truth")
        pairs = _greedy_pairs(_pair_iou(gt[:, 1:5], pred[:, :4]), self.iou_thres) \
            if len(pred) and len(gt) else []
        for g, p in pairs:
            self.matrix[pc[p], gc[g]] += 1
        matched_g, matched_p = {g for g, _ in pairs}, {p for _, p in pairs}
        for g in set(range(len(gt))) - matched_g:
            self.matrix[self.nc, gc[g]] += 1
        for p in set(range(len(pred))) - matched_p:
            self.matrix[pc[p], self.nc] += 1

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class true positives and false positives (background excluded)."""
        tp = np.diag(self.matrix)[:-1]
        return tp, self.matrix[:-1].sum(1) - tp


# --------------------------------------------------------------------------- scalar scores
def fitness(map50: float, map_: float) -> float:
    """Best-checkpoint score: 0.1 * mAP@.5 + 0.9 * mAP@.5:.95."""
    return 0.1 * float(map50) + 0.9 * float(map_)


def _validated_points(costs: ArrayLike, metrics: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Cost/metric points as float arrays sorted by cost, after checking they define a curve."""
    c = np.asarray(costs, dtype=np.float64)
    m = np.asarray(metrics, dtype=np.float64)
    if c.ndim != 1 or m.ndim != 1:
        raise ValueError("costs and metrics must be 1-D sequences")
    if len(c) != len(m):
        raise ValueError(f"costs and metrics differ in length: {len(c)} vs {len(m)}")
    if len(c) < 2:
        raise ValueError(f"AUC-Policy needs at least 2 operating points, got {len(c)}")
    if not (np.isfinite(c).all() and np.isfinite(m).all()):
        raise ValueError("costs and metrics must be finite")
    order = np.argsort(c, kind="stable")
    c, m = c[order], m[order]
    if np.any(np.diff(c) == 0):
        raise ValueError("two operating points share the same cost; keep one per cost")
    if m[-1] == m[0]:
        raise ValueError("AUC-Policy is undefined when the metric at maximal cost equals the "
                         "metric at minimal cost (zero denominator in Eq. 10)")
    return c, m


def auc_policy(costs: ArrayLike, metrics: ArrayLike) -> float:
    """AUC-Policy of an accuracy/compute trade-off (DualRes, Eq. 10).

    A dynamic model is indexed by beta in [0, 1], compute being minimal at beta = 0 and maximal
    at beta = 1, and the score is::

        AUC-Policy = integral_0^1 (Metric(beta) - Metric(0)) dbeta / (Metric(1) - Metric(0))

    i.e. the area between the trade-off curve and its value at minimal compute, as a fraction
    of the full metric gain. Each operating point gets beta = (cost - min cost) / (cost range)
    — exact when cost is affine in beta, e.g. beta = share of images sent to the expensive path;
    passing beta itself as ``costs`` is equally valid. Points are sorted by cost and joined
    linearly (trapezoid rule). The score is invariant to the units of both axes; the straight
    line between the cheapest and the most expensive point scores 0.5 (so two points always give
    0.5 — the paper uses at least three), a policy reaching the top metric early scores near 1.

    Raises ValueError for sequences of different lengths, fewer than 2 points, non-finite values,
    repeated costs, or equal metrics at both ends (the denominator of Eq. 10 is then zero).
    """
    c, m = _validated_points(costs, metrics)
    beta = (c - c[0]) / (c[-1] - c[0])
    gain = m - m[0]
    area = float(np.sum(np.diff(beta) * (gain[1:] + gain[:-1]) / 2))
    return area / float(m[-1] - m[0])
