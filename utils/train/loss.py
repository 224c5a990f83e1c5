"""YOLOv7-style training loss for one or more anchor-based detection heads.

For one head the loss is built in three steps, each image on its own:

1. *candidates* (YOLOv5 rule): for every ground-truth box and level, the anchors whose
   width/height ratio to the box stays below ``anchor_t``, at the cell holding the box centre
   and at the two neighbouring cells nearest to that centre;
2. *SimOTA* (dynamic k): each box keeps its ``k`` cheapest candidates, with cost
   ``BCE(class) + 3 * -log(IoU)`` and ``k`` = the summed IoU of its 10 best candidates
   (at least 1); an anchor claimed by several boxes goes to the cheapest one;
3. *losses*: ``1 - CIoU`` on the positives (box), BCE on their classes (cls) and BCE on the
   whole objectness map with the positives' CIoU as soft targets (obj), balanced per level.

``ComputeLoss`` sums one ``DetectionLoss`` per head of a model; for DynamicDet that is
``L_det1 + L_det2`` (paper Eq. 9). ``reduction="none"`` yields per-image losses for training
the router (Eq. 12). Gains ``hyp['box'|'obj'|'cls']`` are used as given: scale them once with
``scale_loss_gains`` when building the training hyper-parameters.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.boxes import box_iou, xywh2xyxy
from utils.torch_utils import de_parallel

__all__ = [
    "scale_loss_gains", "level_balance", "smooth_bce", "bbox_ciou", "find_candidates",
    "simota_match", "Positives", "DetectionLoss", "ComputeLoss",
]

Tensor = torch.Tensor

# (cell shift x, cell shift y) for the centre cell and the left, up, right, down neighbours.
_NEIGHBOURS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))


# ----------------------------------------------------------------------------- hyper-parameters
def scale_loss_gains(hyp: Mapping[str, Any], nl: int, nc: int, img_size: int) -> dict[str, Any]:
    """Copy of ``hyp`` with box/obj/cls gains adapted to ``nl`` levels, ``nc`` classes, image size.

    The reference gains are tuned for 3 levels, 80 classes and 640 px images.
    """
    out = dict(hyp)
    out["box"] = hyp["box"] * 3.0 / nl
    out["cls"] = hyp["cls"] * nc / 80.0 * 3.0 / nl
    out["obj"] = hyp["obj"] * (img_size / 640.0) ** 2 * 3.0 / nl
    return out


def level_balance(nl: int) -> list[float]:
    """Objectness weight per level, fine to coarse (fine levels see many more negatives)."""
    ref = [4.0, 1.0, 0.4] if nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02]
    return (ref + [ref[-1]] * nl)[:nl]


def smooth_bce(eps: float = 0.0) -> tuple[float, float]:
    """Positive and negative BCE targets with label smoothing ``eps``."""
    return 1.0 - 0.5 * eps, 0.5 * eps


# ----------------------------------------------------------------------------- geometry
def bbox_ciou(box1: Tensor, box2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of paired (cx, cy, w, h) boxes ``(..., 4)`` -> ``(...)``; in (-1.5, 1]."""
    x1, y1, w1, h1 = box1.unbind(-1)
    x2, y2, w2, h2 = box2.unbind(-1)
    left, right = torch.max(x1 - w1 / 2, x2 - w2 / 2), torch.min(x1 + w1 / 2, x2 + w2 / 2)
    top, bottom = torch.max(y1 - h1 / 2, y2 - h2 / 2), torch.min(y1 + h1 / 2, y2 + h2 / 2)
    inter = (right - left).clamp(min=0) * (bottom - top).clamp(min=0)
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    enclose_w = torch.max(x1 + w1 / 2, x2 + w2 / 2) - torch.min(x1 - w1 / 2, x2 - w2 / 2)
    enclose_h = torch.max(y1 + h1 / 2, y2 + h2 / 2) - torch.min(y1 - h1 / 2, y2 - h2 / 2)
    centre_dist = ((x2 - x1) ** 2 + (y2 - y1) ** 2) / (enclose_w ** 2 + enclose_h ** 2 + eps)
    v = (4 / math.pi ** 2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + 1 + eps)
    return iou - centre_dist - alpha * v


def _bce(logits: Tensor, target: Tensor, pos_weight: float, gamma: float) -> Tensor:
    """Element-wise BCE-with-logits, optionally focal (alpha 0.25) when ``gamma > 0``."""
    pw = logits.new_tensor(pos_weight)
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
    if gamma > 0:
        p = logits.sigmoid()
        p_t = target * p + (1 - target) * (1 - p)
        alpha_t = target * 0.25 + (1 - target) * 0.75
        loss = loss * alpha_t * (1 - p_t) ** gamma
    return loss


# ----------------------------------------------------------------------------- assignment
class Positives(NamedTuple):
    """Anchors assigned at one level: image ``b``, anchor ``a``, cell ``gj, gi``, target ``t``."""

    b: Tensor
    a: Tensor
    gj: Tensor
    gi: Tensor
    t: Tensor

    @staticmethod
    def cat(parts: Sequence["Positives"], device: torch.device) -> "Positives":
        if not parts:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return Positives(empty, empty, empty, empty, empty)
        return Positives(*(torch.cat(f) for f in zip(*parts)))


def find_candidates(targets: Tensor, anchors: Tensor, grid_hw: Sequence[int],
                    anchor_t: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """YOLOv5-style candidates of one level -> ``(a, gj, gi, t)`` index vectors.

    ``targets`` (m, >=6) rows [img, cls, cx, cy, w, h] normalised; ``anchors`` (na, 2) grid units.
    ``t`` indexes rows of ``targets``. A pair is kept when the box/anchor size ratio (either
    way, both sides) is below ``anchor_t``; it yields the centre cell plus the horizontal and
    vertical neighbours on the side of the cell the centre lies closer to.
    """
    ny, nx = int(grid_hw[0]), int(grid_hw[1])
    size = targets.new_tensor([nx, ny])
    xy, wh = targets[:, 2:4] * size, targets[:, 4:6] * size
    ratio = wh[None] / anchors[:, None]
    a, t = (torch.max(ratio, 1 / ratio).amax(2) < anchor_t).nonzero(as_tuple=True)
    xy = xy[t]
    low, high = (xy % 1 < 0.5) & (xy > 1), ((size - xy) % 1 < 0.5) & (size - xy > 1)
    use = torch.stack((torch.ones_like(low[:, 0]), low[:, 0], low[:, 1], high[:, 0], high[:, 1]))
    k, j = use.nonzero(as_tuple=True)
    cell = xy[j].floor().long() + torch.tensor(_NEIGHBOURS, device=xy.device)[k]
    gi, gj = cell[:, 0].clamp(0, nx - 1), cell[:, 1].clamp(0, ny - 1)
    return a[j], gj, gi, t[j]


def simota_match(cost: Tensor, iou: Tensor, top: int = 10) -> tuple[Tensor, Tensor]:
    """Dynamic-k matching of ``m`` boxes to ``K`` candidates from (m, K) ``cost`` and ``iou``.

    Returns a (K,) bool mask of matched candidates and the box index of each matched one.
    """
    m, n = iou.shape
    k = iou.topk(min(top, n), dim=1).values.sum(1).int().clamp(min=1)
    order = cost.argsort(dim=1, stable=True)
    positions = torch.arange(n, device=cost.device).expand(m, n)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    match = rank < k[:, None]
    shared = (match.sum(0) > 1).nonzero().squeeze(1)
    if shared.numel():
        match[:, shared] = False
        match[cost[:, shared].argmin(0), shared] = True
    fg = match.any(0)
    return fg, match[:, fg].float().argmax(0)


def _unique_cells(a: Tensor, gj: Tensor, gi: Tensor,
                  grid_hw: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct (anchor, row, col) triples, sorted."""
    ny, nx = int(grid_hw[0]), int(grid_hw[1])
    key = torch.unique((a * ny + gj) * nx + gi)
    return key // (ny * nx), key // nx % ny, key % nx


def _decode(ps: Tensor, anchors: Tensor) -> Tensor:
    """Raw (n, >=4) predictions -> (n, 4) boxes in grid units, xy relative to their cell."""
    xy = ps[:, :2].sigmoid() * 2 - 0.5
    wh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anchors
    return torch.cat((xy, wh), 1)


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Context disabling autocast on ``device`` (no-op where autocast is unsupported)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):
        return contextlib.nullcontext()


# ----------------------------------------------------------------------------- one head
class DetectionLoss:
    """Loss of one detection head (``nl``, ``na``, ``nc``, ``anchors`` in grid units, ``stride``).

    ``hyp`` needs ``box``, ``obj``, ``cls`` gains; optional ``cls_pw``, ``obj_pw``, ``fl_gamma``,
    ``label_smoothing``, ``anchor_t`` (4.0) and ``loss_ota`` (1; 0 = candidates are positives).
    """

    gr = 1.0  # objectness target = (1 - gr) + gr * CIoU

    def __init__(self, head: nn.Module, hyp: Mapping[str, Any], autobalance: bool = False) -> None:
        self.head = head
        self.nl, self.nc = int(head.nl), int(head.nc)
        self.gains = (float(hyp["box"]), float(hyp["obj"]), float(hyp["cls"]))
        self.cls_pw, self.obj_pw = float(hyp.get("cls_pw", 1.0)), float(hyp.get("obj_pw", 1.0))
        self.fl_gamma = float(hyp.get("fl_gamma", 0.0))
        self.anchor_t = float(hyp.get("anchor_t", 4.0))
        self.ota = bool(hyp.get("loss_ota", 1))
        self.cp, self.cn = smooth_bce(float(hyp.get("label_smoothing", 0.0)))
        self.balance = level_balance(self.nl)
        self.strides = [float(s) for s in head.stride]
        self.autobalance = autobalance
        self.ssi = self.strides.index(16.0) if autobalance and 16.0 in self.strides else 0

    # ---- assignment
    def assign(self, preds: Sequence[Tensor], targets: Tensor,
               img_hw: Sequence[int]) -> list[Positives]:
        """Positives per level for the whole batch, each image assigned independently."""
        anchors = self.head.anchors.to(preds[0].device, torch.float32)
        per_level: list[list[Positives]] = [[] for _ in range(self.nl)]
        for b in targets[:, 0].unique().long().tolist():
            rows = (targets[:, 0] == b).nonzero().squeeze(1)
            for i, pos in enumerate(self._assign_image(preds, targets, rows, b, anchors, img_hw)):
                per_level[i].append(pos)
        return [Positives.cat(parts, preds[0].device) for parts in per_level]

    def _assign_image(self, preds: Sequence[Tensor], targets: Tensor, rows: Tensor, b: int,
                      anchors: Tensor, img_hw: Sequence[int]) -> list[Positives]:
        """Positives per level for image ``b`` whose targets are ``targets[rows]``."""
        cands = [find_candidates(targets[rows], anchors[i], p.shape[2:4], self.anchor_t)
                 for i, p in enumerate(preds)]
        if not self.ota:
            return [self._positives(b, a, gj, gi, rows[t]) for a, gj, gi, t in cands]
        cells = [_unique_cells(a, gj, gi, p.shape[2:4]) for (a, gj, gi, _), p in zip(cands, preds)]
        with torch.no_grad():
            fg, gt = self._simota(preds, targets[rows], cells, b, anchors, img_hw)
        owner = torch.full(fg.shape, -1, dtype=torch.long, device=fg.device)
        owner[fg] = gt
        out, start = [], 0
        for a, gj, gi in cells:
            keep, owned = fg[start:start + a.numel()], owner[start:start + a.numel()]
            start += a.numel()
            out.append(self._positives(b, a[keep], gj[keep], gi[keep], rows[owned[keep]]))
        return out

    @staticmethod
    def _positives(b: int, a: Tensor, gj: Tensor, gi: Tensor, t: Tensor) -> Positives:
        return Positives(torch.full_like(a, b), a, gj, gi, t)

    def _simota(self, preds: Sequence[Tensor], tgt: Tensor, cells: list[tuple[Tensor, ...]],
                b: int, anchors: Tensor, img_hw: Sequence[int]) -> tuple[Tensor, Tensor]:
        """SimOTA over all levels' candidate cells of image ``b``; see ``simota_match``."""
        raw, boxes = [], []
        for i, (a, gj, gi) in enumerate(cells):
            ps = preds[i][b, a, gj, gi]
            box = _decode(ps, anchors[i][a])
            box[:, :2] += torch.stack((gi, gj), 1)
            raw.append(ps)
            boxes.append(box * self.strides[i])
        ps, boxes = torch.cat(raw), torch.cat(boxes)
        if ps.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.long, device=ps.device)
            return empty.bool(), empty
        scale = tgt.new_tensor([img_hw[1], img_hw[0], img_hw[1], img_hw[0]])
        iou = box_iou(xywh2xyxy(tgt[:, 2:6] * scale), xywh2xyxy(boxes))
        cost = self._class_cost(ps, tgt[:, 1].long()) + 3.0 * -torch.log(iou + 1e-8)
        return simota_match(cost, iou)

    @staticmethod
    def _class_cost(ps: Tensor, cls: Tensor) -> Tensor:
        """(m, K) BCE between one-hot classes and sqrt(p_cls * p_obj) of the K candidates."""
        prob = (ps[:, 5:].sigmoid() * ps[:, 4:5].sigmoid()).sqrt()
        log_p, log_q = prob.clamp(min=1e-12).log(), (1 - prob).clamp(min=1e-12).log()
        return -log_q.sum(1)[None, :] - (log_p - log_q)[:, cls].T

    # ---- loss
    def __call__(self, preds: Sequence[Tensor], targets: Tensor, imgs: Tensor | None = None,
                 reduction: str = "mean") -> tuple[Tensor, Tensor] | Tensor:
        """``mean``: (loss * bs, [box, obj, cls, total] detached); ``none``: (bs,) per image."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        device = preds[0].device
        with _autocast_off(device):
            preds = [p.float() for p in preds]
            targets = targets.to(device=device, dtype=torch.float32)
            img_hw = self._image_hw(preds, imgs)
            positives = self.assign(preds, targets, img_hw)
            lbox, lobj, lcls = self._losses(preds, targets, positives, reduction)
            g_box, g_obj, g_cls = self.gains
            lbox, lobj, lcls = lbox * g_box, lobj * g_obj, lcls * g_cls
            total = lbox + lobj + lcls
        if reduction == "none":
            return total
        items = torch.stack((lbox, lobj, lcls, total)).detach()
        return total * preds[0].shape[0], items

    def _image_hw(self, preds: Sequence[Tensor], imgs: Tensor | None) -> tuple[int, int]:
        """Input (height, width): from ``imgs`` or, without it, the finest grid times its stride."""
        if imgs is not None:
            return int(imgs.shape[-2]), int(imgs.shape[-1])
        ny, nx = preds[0].shape[2:4]
        return round(ny * self.strides[0]), round(nx * self.strides[0])

    def _losses(self, preds: Sequence[Tensor], targets: Tensor, positives: Sequence[Positives],
                reduction: str) -> tuple[Tensor, Tensor, Tensor]:
        """Un-weighted box, obj, cls losses: scalars (``mean``) or (bs,) vectors (``none``)."""
        bs = preds[0].shape[0]
        shape = (bs,) if reduction == "none" else ()
        lbox, lobj, lcls = (preds[0].new_zeros(shape) for _ in range(3))
        anchors = self.head.anchors.to(preds[0].device, torch.float32)
        for i, (p, pos) in enumerate(zip(preds, positives)):
            box, cls, obj_map = self._level_terms(p, pos, targets, anchors[i])
            lbox = lbox + self._reduce(box, pos.b, bs, reduction)
            lcls = lcls + self._reduce(cls, pos.b, bs, reduction)
            obji = obj_map.mean() if reduction == "mean" else obj_map.flatten(1).mean(1)
            lobj = lobj + obji * self.balance[i]
            if self.autobalance and reduction == "mean" and torch.is_grad_enabled():
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / max(obji.item(), 1e-12)
        if self.autobalance and reduction == "mean" and torch.is_grad_enabled():
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        return lbox, lobj, lcls

    def _level_terms(self, p: Tensor, pos: Positives, targets: Tensor,
                     anchors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-positive box loss (n,), per-positive class loss (n,), objectness BCE map."""
        ny, nx = p.shape[2:4]
        ps = p[pos.b, pos.a, pos.gj, pos.gi]
        tgt = targets[pos.t]
        size = p.new_tensor([nx, ny])
        txy = tgt[:, 2:4] * size - torch.stack((pos.gi, pos.gj), 1)
        ciou = bbox_ciou(_decode(ps, anchors[pos.a]), torch.cat((txy, tgt[:, 4:6] * size), 1))
        tobj = torch.zeros_like(p[..., 4])
        tobj[pos.b, pos.a, pos.gj, pos.gi] = (1 - self.gr) + self.gr * ciou.detach().clamp(min=0)
        obj_map = _bce(p[..., 4], tobj, self.obj_pw, self.fl_gamma)
        return 1 - ciou, self._class_terms(ps, tgt[:, 1].long()), obj_map

    def _class_terms(self, ps: Tensor, cls: Tensor) -> Tensor:
        """Mean class BCE per positive (zeros for single-class heads)."""
        if self.nc <= 1:
            return ps.new_zeros(ps.shape[0])
        t = torch.full_like(ps[:, 5:], self.cn)
        t[torch.arange(ps.shape[0], device=ps.device), cls] = self.cp
        return _bce(ps[:, 5:], t, self.cls_pw, self.fl_gamma).mean(1)

    @staticmethod
    def _reduce(values: Tensor, b: Tensor, bs: int, reduction: str) -> Tensor:
        """Mean over the batch's positives, or (bs,) mean over each image's own positives."""
        if reduction == "mean":
            return values.mean() if values.numel() else values.sum()
        sums = values.new_zeros(bs).index_add(0, b, values)
        counts = values.new_zeros(bs).index_add(0, b, torch.ones_like(values))
        return sums / counts.clamp(min=1)


# ----------------------------------------------------------------------------- whole model
class ComputeLoss:
    """Sum of one ``DetectionLoss`` per head of ``model.heads`` (DynamicDet: L_det1 + L_det2)."""

    def __init__(self, model: nn.Module, hyp: Mapping[str, Any], autobalance: bool = False) -> None:
        heads = de_parallel(model).heads
        self.losses = [DetectionLoss(h, hyp, autobalance) for h in heads]

    @property
    def item_names(self) -> list[str]:
        """Names of the entries of the ``loss_items`` vector returned with ``reduction='mean'``."""
        base = ["box", "obj", "cls", "total"]
        if len(self.losses) == 1:
            return base
        return base + [f"{n}{k + 1}" for k in range(len(self.losses)) for n in base]

    def __call__(self, outputs: Any, targets: Tensor, imgs: Tensor | None = None,
                 reduction: str = "mean") -> tuple[Tensor, Tensor] | Tensor:
        """``mean``: (summed loss * bs, loss items); ``none``: (n_heads, bs) per-image losses.

        Loss items are [box, obj, cls, total] summed over heads, followed, for several heads,
        by each head's own four items (see ``item_names``).
        """
        preds = self.split_outputs(outputs)
        if reduction == "none":
            return torch.stack([f(p, targets, imgs, "none") for f, p in zip(self.losses, preds)])
        results = [f(p, targets, imgs, reduction) for f, p in zip(self.losses, preds)]
        total = sum(r[0] for r in results)
        items = torch.stack([r[1] for r in results])
        if len(results) == 1:
            return total, items[0]
        return total, torch.cat((items.sum(0), items.flatten()))

    def split_outputs(self, outputs: Any) -> list[Sequence[Tensor]]:
        """Per-head raw prediction lists from a model's training output.

        Accepts a plain list of level maps (one head), an object with ``p1, p2, ...`` fields
        (``DyTrainOutput``), or a sequence holding one level list per head.
        """
        n = len(self.losses)
        if hasattr(outputs, "p1"):
            preds = [getattr(outputs, f"p{k + 1}") for k in range(n)]
        elif n == 1 and isinstance(outputs[0], Tensor):
            preds = [outputs]
        else:
            preds = list(outputs)
        if len(preds) != n or any(len(p) != f.nl for p, f in zip(preds, self.losses)):
            levels = [f.nl for f in self.losses]
            raise ValueError(f"expected raw training outputs of {n} head(s) with {levels} levels")
        return preds
