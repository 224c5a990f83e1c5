"""Box format conversions and geometry shared by datasets, loss, metrics and inference.

Formats: ``xyxy`` = (x1, y1, x2, y2) corners; ``xywh`` = (cx, cy, w, h) centre and size.
A trailing ``n`` means coordinates normalised to [0, 1] by the image width and height.
Functions accept torch tensors or numpy arrays with boxes in the last dimension.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from torchvision.ops import box_iou

Array = Union[torch.Tensor, np.ndarray]

__all__ = [
    "xywh2xyxy", "xyxy2xywh", "xywhn2xyxy", "xyxy2xywhn", "clip_boxes", "scale_boxes", "box_iou",
]


def _clone(x: Array) -> Array:
    return x.clone() if isinstance(x, torch.Tensor) else np.array(x, dtype=np.float32, copy=True)


def xywh2xyxy(x: Array) -> Array:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    y = _clone(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xyxy2xywh(x: Array) -> Array:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    y = _clone(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywhn2xyxy(x: Array, w: float, h: float, padw: float = 0.0, padh: float = 0.0) -> Array:
    """Normalised (cx, cy, w, h) -> pixel (x1, y1, x2, y2), optionally shifted by padding."""
    y = xywh2xyxy(x)
    y[..., [0, 2]] = y[..., [0, 2]] * w + padw
    y[..., [1, 3]] = y[..., [1, 3]] * h + padh
    return y


def xyxy2xywhn(x: Array, w: float, h: float) -> Array:
    """Pixel (x1, y1, x2, y2) -> normalised (cx, cy, w, h)."""
    y = xyxy2xywh(x)
    y[..., [0, 2]] = y[..., [0, 2]] / w
    y[..., [1, 3]] = y[..., [1, 3]] / h
    return y


def clip_boxes(boxes: Array, shape: Sequence[int]) -> Array:
    """Clip xyxy boxes in place to an image of ``shape`` = (height, width)."""
    h, w = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_boxes(from_shape: Sequence[int], boxes: Array, to_shape: Sequence[int],
                ratio_pad: tuple | None = None) -> Array:
    """Map xyxy boxes from a letterboxed ``from_shape`` (h, w) back to the original ``to_shape``.

    ``ratio_pad`` = ((gain_h, gain_w), (pad_w, pad_h)) as returned by ``letterbox``; computed
    from the shapes when omitted. Boxes are modified in place and clipped.
    """
    if ratio_pad is None:
        gain = min(from_shape[0] / to_shape[0], from_shape[1] / to_shape[1])
        pad = ((from_shape[1] - to_shape[1] * gain) / 2, (from_shape[0] - to_shape[0] * gain) / 2)
    else:
        gain, pad = ratio_pad[0][0], ratio_pad[1]
    boxes[..., [0, 2]] -= pad[0]
    boxes[..., [1, 3]] -= pad[1]
    boxes[..., :4] /= gain
    return clip_boxes(boxes, to_shape)
