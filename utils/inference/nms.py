"""Non-maximum suppression of decoded YOLO predictions (torchvision's batched NMS)."""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import batched_nms

from utils.boxes import xywh2xyxy
from utils.defaults import PREDICT


def non_max_suppression(pred: torch.Tensor, conf_thres: float = PREDICT.conf_thres,
                        iou_thres: float = PREDICT.iou_thres, classes: Sequence[int] | None = None,
                        agnostic_nms: bool = False, multi_label: bool = False, max_det: int = PREDICT.max_det,
                        max_nms: int = 30000) -> list[torch.Tensor]:
    """Per image, detections (k, 6) = [x1, y1, x2, y2, score, cls] sorted by score.

    ``pred`` is (bs, N, 5 + nc): pixel (cx, cy, w, h), objectness, class probabilities. The score
    is objectness x class probability; ``multi_label`` keeps every class above ``conf_thres``.
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"conf_thres and iou_thres must be in [0, 1], got {conf_thres}, {iou_thres}")
    out = []
    for x in pred:
        out.append(_nms_one(x, conf_thres, iou_thres, classes, agnostic_nms, multi_label, max_det, max_nms))
    return out


def _nms_one(x: torch.Tensor, conf_thres: float, iou_thres: float, classes, agnostic: bool,
             multi_label: bool, max_det: int, max_nms: int) -> torch.Tensor:
    x = x[x[:, 4] > conf_thres].float()
    if not x.shape[0]:
        return x.new_zeros((0, 6))
    scores = x[:, 5:] * x[:, 4:5]
    boxes = xywh2xyxy(x[:, :4])
    if multi_label and scores.shape[1] > 1:
        i, j = (scores > conf_thres).nonzero(as_tuple=True)
        det = torch.cat((boxes[i], scores[i, j, None], j[:, None].float()), 1)
    else:
        conf, j = scores.max(1, keepdim=True)
        det = torch.cat((boxes, conf, j.float()), 1)[conf.view(-1) > conf_thres]
    if classes is not None:
        det = det[(det[:, 5:6] == torch.tensor(list(classes), device=det.device)).any(1)]
    if det.shape[0] > max_nms:
        det = det[det[:, 4].argsort(descending=True)[:max_nms]]
    if not det.shape[0]:
        return det
    groups = torch.zeros_like(det[:, 5]) if agnostic else det[:, 5]
    keep = batched_nms(det[:, :4], det[:, 4], groups, iou_thres)[:max_det]
    return det[keep]
