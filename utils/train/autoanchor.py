"""Training-time anchor check: measure how well the anchors fit the labels and re-fit them if not.

``check_anchors`` computes the best possible recall (BPR) of the model's anchors on the dataset's
label sizes. Below 0.98 it clusters the label sizes (k-means, then a mutation search on the
ratio fitness) and writes the new anchors into every detection head when they recall more boxes.
Anchors are compared by side ratio: an anchor "fits" a box when neither side differs by more than
a factor ``thr``.
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from models.head import IDetect

LOGGER = logging.getLogger(__name__)

BPR_TARGET = 0.98
MIN_SIDE_PX = 2.0


def _gaps(anchors: np.ndarray, log_wh: np.ndarray) -> Iterator[np.ndarray]:
    """Per anchor, each box's worst side gap |log(box / anchor)| (0 means a perfect fit)."""
    w, h = np.ascontiguousarray(log_wh[:, 0]), np.ascontiguousarray(log_wh[:, 1])
    for aw, ah in np.log(anchors):
        yield np.maximum(np.abs(w - aw), np.abs(h - ah))


def _best_ratio(anchors: np.ndarray, log_wh: np.ndarray) -> np.ndarray:
    """Per box, the best over anchors of the worst side ratio min(r, 1/r), in (0, 1]."""
    gap = np.full(len(log_wh), np.inf)
    for g in _gaps(anchors, log_wh):  # a loop over anchors avoids a large (n, k, 2) temporary
        np.minimum(gap, g, out=gap)
    return np.exp(-gap)


def anchor_fitness(anchors_px: np.ndarray, wh: np.ndarray, thr: float = 4.0) -> tuple[float, float]:
    """Best possible recall and mean number of anchors per box within ratio ``thr``.

    Returns ``(bpr, aat)``: the fraction of boxes matched by at least one anchor, and the
    average count of matching anchors per box (anchors above threshold).
    """
    anchors = np.asarray(anchors_px, dtype=np.float64).reshape(-1, 2)
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    if len(wh) == 0:
        return 0.0, 0.0
    with np.errstate(divide="ignore"):
        log_wh = np.log(wh)
    count = np.zeros(len(wh))
    for g in _gaps(anchors, log_wh):
        count += g < np.log(thr)
    return float((count > 0).mean()), float(count.mean())


def _ratio_fitness(anchors: np.ndarray, log_wh: np.ndarray, thr: float) -> float:
    """Mean best ratio, counting only boxes that some anchor matches (the evolution objective)."""
    best = _best_ratio(anchors, log_wh)
    return float((best * (best > 1.0 / thr)).mean())


def _spread_start(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ start: each new centre drawn with probability ~ squared distance to the others."""
    centres = [x[rng.integers(len(x))]]
    for _ in range(n - 1):
        d2 = ((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(2).min(1)
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centres.append(x[rng.choice(len(x), p=p)])
    return np.asarray(centres)


def _lloyd(x: np.ndarray, n: int, rng: np.random.Generator, iters: int = 30) -> tuple[np.ndarray, float]:
    """One k-means run from a k-means++ start; returns the centres and their mean distance."""
    centres = _spread_start(x, n, rng)
    for _ in range(iters):
        assign = ((x[:, None, :] - centres[None]) ** 2).sum(2).argmin(1)
        centres = np.stack([x[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(n)])
    dist = np.sqrt(((x[:, None, :] - centres[None]) ** 2).sum(2).min(1)).mean()
    return centres, float(dist)


def _numpy_kmeans(x: np.ndarray, n: int, rng: np.random.Generator, restarts: int = 10) -> np.ndarray:
    """Best of several k-means runs (numpy), used only when scipy is unavailable."""
    return min((_lloyd(x, n, rng) for _ in range(restarts)), key=lambda r: r[1])[0]


def _cluster(wh: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """k-means centres of ``wh`` after whitening; may return fewer than ``n`` centres."""
    if len(wh) < n:
        return wh[:0]
    scale = wh.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    x = wh / scale
    try:
        from scipy.cluster.vq import kmeans
    except ImportError:
        LOGGER.warning("autoanchor: scipy not installed, using a numpy k-means")
        return _numpy_kmeans(x, n, rng) * scale
    try:
        centres, _ = kmeans(x, n, iter=30, rng=rng)
    except TypeError:  # scipy < 1.15 names the argument ``seed``
        centres, _ = kmeans(x, n, iter=30, seed=rng)
    return centres * scale


def _mutate(anchors: np.ndarray, rng: np.random.Generator, prob: float = 0.9, sigma: float = 0.1) -> np.ndarray:
    """Multiply a random subset of anchor sides by factors near 1 (clipped to [0.3, 3])."""
    factor = np.ones_like(anchors)
    while (factor == 1.0).all():
        mask = rng.random(anchors.shape) < prob
        factor = (mask * rng.random() * rng.standard_normal(anchors.shape) * sigma + 1.0).clip(0.3, 3.0)
    return (anchors * factor).clip(min=MIN_SIDE_PX)


def _by_area(anchors: np.ndarray) -> np.ndarray:
    return anchors[np.argsort(anchors.prod(axis=1), kind="stable")]


def kmean_anchors(wh: np.ndarray, n: int = 9, img_size: int = 640, thr: float = 4.0,
                  generations: int = 1000, seed: int = 0, verbose: bool = False) -> np.ndarray:
    """Fit ``n`` anchors (pixels, sorted by area) to box sizes ``wh`` (pixels, shape (m, 2)).

    k-means on whitened sizes gives the start (random sizes up to ``img_size`` if k-means yields
    fewer than ``n`` centres); a mutation search then maximises the ratio fitness. Boxes smaller
    than 2 px on both sides are ignored. The result depends only on the inputs and ``seed``.
    """
    wh_all = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    wh_all = wh_all[np.isfinite(wh_all).all(1) & (wh_all > 0).all(1)]
    tiny = int((wh_all < 3.0).any(1).sum())
    if tiny:
        LOGGER.warning("autoanchor: %d of %d boxes have a side under 3 px", tiny, len(wh_all))
    fit_wh = wh_all[(wh_all >= MIN_SIDE_PX).any(1)]
    if len(fit_wh) == 0:
        raise ValueError("kmean_anchors: no boxes of at least 2 px to fit anchors to")
    rng = np.random.default_rng(seed)
    anchors = _cluster(fit_wh, n, rng)
    if len(anchors) != n:
        LOGGER.warning("autoanchor: k-means found %d of %d anchors, starting from random sizes", len(anchors), n)
        anchors = np.sort(rng.random(n * 2)).reshape(n, 2) * img_size
    anchors = anchors.clip(min=MIN_SIDE_PX)
    return _by_area(_evolve(anchors, fit_wh, thr, generations, rng, verbose))


def _evolve(anchors: np.ndarray, wh: np.ndarray, thr: float, generations: int,
            rng: np.random.Generator, verbose: bool) -> np.ndarray:
    """Hill-climb the ratio fitness by random multiplicative mutations."""
    log_wh = np.log(wh)
    best = _ratio_fitness(anchors, log_wh, thr)
    bar = tqdm(range(generations), desc="autoanchor", disable=not verbose)
    for _ in bar:
        candidate = _mutate(anchors, rng)
        f = _ratio_fitness(candidate, log_wh, thr)
        if f > best:
            best, anchors = f, candidate
            bar.set_description(f"autoanchor: fitness {best:.4f}")
    return anchors


def _level_areas(head: IDetect) -> torch.Tensor:
    return head.anchor_grid.view(head.nl, head.na, 2).prod(-1).mean(-1)


def check_anchor_order(head: IDetect) -> bool:
    """Reverse the anchor levels in place if their sizes run against the strides; True if flipped."""
    areas, stride = _level_areas(head), head.stride
    da, ds = float(areas[-1] - areas[0]), float(stride[-1] - stride[0])
    if da == 0.0 or np.sign(da) == np.sign(ds):
        return False
    px = head.anchor_grid.view(head.nl, head.na, 2).flip(0).clone()
    _write(head, px)
    LOGGER.info("autoanchor: reversed the anchor order to follow the strides")
    return True


def _write(head: IDetect, px: torch.Tensor) -> None:
    """Store pixel anchors ``px`` (nl, na, 2) as grid-unit ``anchors`` and pixel ``anchor_grid``."""
    with torch.no_grad():
        px = px.to(head.anchor_grid)
        head.anchor_grid.copy_(px.view_as(head.anchor_grid))
        head.anchors.copy_((px / head.stride.to(px).view(-1, 1, 1)).to(head.anchors))


def head_anchors_px(head: IDetect) -> np.ndarray:
    """The head's anchors in pixels, (nl * na, 2) in level order."""
    return head.anchor_grid.detach().cpu().double().view(-1, 2).numpy()


def _set_anchors(head: IDetect, anchors_px: np.ndarray) -> None:
    """Give the smallest anchors to the finest level (smallest stride), then verify the order."""
    px = torch.as_tensor(_by_area(anchors_px), dtype=torch.float64).view(head.nl, head.na, 2)
    order = torch.argsort(head.stride.detach().cpu(), stable=True)
    levels = torch.empty_like(px)
    levels[order] = px
    _write(head, levels)
    check_anchor_order(head)


def label_sizes_px(labels_wh: np.ndarray | Sequence[np.ndarray], img_size: int,
                   shapes: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Normalised label sizes -> pixels at ``img_size``.

    Without ``shapes`` images are taken as square. With ``shapes`` (one (w, h) per image, or per
    box when ``labels_wh`` is a flat array) each image's longer side is scaled to ``img_size`` and
    jittered by a random factor in [0.9, 1.1], as the YOLO anchor check does.
    """
    per_image = isinstance(labels_wh, (list, tuple))
    groups = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in labels_wh] if per_image \
        else [np.asarray(labels_wh, dtype=np.float64).reshape(-1, 2)]
    if shapes is None:
        return np.concatenate(groups) * img_size if groups else np.zeros((0, 2))
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
    if not per_image:
        groups = list(groups[0][:, None, :])
    if len(shapes) != len(groups):
        raise ValueError(f"label_sizes_px: {len(shapes)} shapes for {len(groups)} images")
    scale = img_size * shapes / shapes.max(1, keepdims=True)
    scale *= np.random.default_rng(seed).uniform(0.9, 1.1, size=(len(shapes), 1))
    return np.concatenate([g * s for g, s in zip(groups, scale)]) if groups else np.zeros((0, 2))


def _model_bpr(heads: Sequence[IDetect], wh: np.ndarray, thr: float) -> float:
    """The worst BPR over heads (heads normally share anchors, so all agree)."""
    return min(anchor_fitness(head_anchors_px(h), wh, thr)[0] for h in heads)


def check_anchors(model: torch.nn.Module, labels_wh: np.ndarray | Sequence[np.ndarray], img_size: int,
                  thr: float = 4.0, shapes: np.ndarray | None = None, seed: int = 0,
                  generations: int = 1000, verbose: bool = False) -> dict:
    """Re-fit the model's anchors to the labels if their best possible recall is under 0.98.

    ``labels_wh`` holds label (w, h) normalised to the image (see ``label_sizes_px`` for
    ``shapes``). New anchors are written into every head of ``model`` only if they recall more
    boxes. Returns ``bpr_before``, ``bpr_after``, ``changed`` and ``anchors`` (pixels, (nl*na, 2)).
    """
    heads = tuple(model.heads)
    current = head_anchors_px(heads[0])
    wh = label_sizes_px(labels_wh, img_size, shapes, seed)
    wh = wh[np.isfinite(wh).all(1) & (wh > 0).all(1)]
    if len(wh) == 0:
        LOGGER.warning("autoanchor: no labels, anchors left unchanged")
        return {"bpr_before": float("nan"), "bpr_after": float("nan"), "changed": False, "anchors": current}
    if any(not np.allclose(head_anchors_px(h), current) for h in heads[1:]):
        LOGGER.warning("autoanchor: the detection heads have different anchors")
    before = _model_bpr(heads, wh, thr)
    result = {"bpr_before": before, "bpr_after": before, "changed": False, "anchors": current}
    if before >= BPR_TARGET:
        LOGGER.info("autoanchor: best possible recall %.4f, anchors kept", before)
        return result
    n = heads[0].nl * heads[0].na
    LOGGER.info("autoanchor: best possible recall %.4f < %.2f, fitting %d anchors", before, BPR_TARGET, n)
    new = kmean_anchors(wh, n, img_size, thr, generations, seed, verbose)
    after, aat = anchor_fitness(new, wh, thr)
    if after <= before:
        LOGGER.info("autoanchor: fitted anchors recall %.4f, not better; original anchors kept", after)
        return result
    for h in heads:
        _set_anchors(h, new)
    LOGGER.info("autoanchor: new anchors in %d head(s), recall %.4f -> %.4f (%.2f anchors/box): %s",
                len(heads), before, after, aat, np.round(head_anchors_px(heads[0])).astype(int).tolist())
    return {"bpr_before": before, "bpr_after": after, "changed": True, "anchors": head_anchors_px(heads[0])}
