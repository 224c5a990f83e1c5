"""Image geometry and photometric augmentation for YOLO training (and letterbox for inference).

Conventions inside this module:

* images are ``HxWx3`` ``uint8`` arrays (BGR, as read by OpenCV);
* pixel labels are ``(n, 5)`` float arrays ``[cls, x1, y1, x2, y2]``;
* normalised labels are ``(n, 5)`` float arrays ``[cls, cx, cy, w, h]`` in ``[0, 1]``;
* randomness comes from an explicit ``numpy.random.Generator`` so runs are reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, NamedTuple, Sequence

import cv2
import numpy as np

PAD_VALUE = 114

__all__ = [
    "LetterboxResult", "letterbox", "AugmentConfig", "augment_hsv", "random_perspective",
    "box_candidates", "mosaic4", "mixup", "flip_lr", "flip_ud",
]


class LetterboxResult(NamedTuple):
    """Output of :func:`letterbox`; unpacks as ``img, ratio, pad``.

    ``ratio`` = (ratio_h, ratio_w): output pixels per input pixel along each axis.
    ``pad`` = (pad_w, pad_h): padding added on the left and on the top (may be fractional; the
    right/bottom sides get the rest). ``(ratio, pad)`` is exactly the ``ratio_pad`` argument of
    :func:`utils.boxes.scale_boxes`.
    """

    img: np.ndarray
    ratio: tuple[float, float]
    pad: tuple[float, float]


def letterbox(img: np.ndarray, new_shape: int | Sequence[int] = 640,
              color: tuple[int, int, int] = (PAD_VALUE,) * 3, auto: bool = True,
              scale_fill: bool = False, scaleup: bool = True, stride: int = 32) -> LetterboxResult:
    """Resize keeping the aspect ratio, then pad to ``new_shape`` = (h, w) (or a square side).

    Args:
        img: ``HxWxC`` image.
        new_shape: target size; should be a multiple of ``stride``.
        color: padding colour.
        auto: pad only up to the next multiple of ``stride`` (a minimal rectangle) instead of
            the full ``new_shape``; the output is still a multiple of ``stride``.
        scale_fill: stretch to ``new_shape`` exactly, without padding (aspect ratio not kept).
        scaleup: allow enlarging; if False images are only shrunk (better val mAP).
        stride: the model's largest stride.

    Map boxes from the output back to ``img`` with
    ``scale_boxes(out.shape[:2], boxes, img.shape[:2], (ratio, pad))``.
    """
    h0, w0 = img.shape[:2]
    new_h, new_w = (new_shape, new_shape) if isinstance(new_shape, int) else map(int, new_shape)
    r = min(new_h / h0, new_w / w0)
    if not scaleup:
        r = min(r, 1.0)
    if scale_fill:
        size_w, size_h, dw, dh = new_w, new_h, 0.0, 0.0
        ratio = (new_h / h0, new_w / w0)
    else:
        size_w, size_h = max(1, round(w0 * r)), max(1, round(h0 * r))  # a 1-pixel side stays 1
        dw, dh = new_w - size_w, new_h - size_h
        if auto:
            dw, dh = dw % stride, dh % stride
        ratio = (r, r)
    if (w0, h0) != (size_w, size_h):
        img = cv2.resize(img, (size_w, size_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = dw / 2, dh / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    if top or bottom or left or right:
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return LetterboxResult(img, ratio, (float(left), float(top)))


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths, read from a YOLOv7-style hyperparameter dict.

    Missing keys mean "off", so ``AugmentConfig()`` applies no augmentation at all.
    """

    hsv_h: float = 0.0
    hsv_s: float = 0.0
    hsv_v: float = 0.0
    degrees: float = 0.0
    translate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    perspective: float = 0.0
    flipud: float = 0.0
    fliplr: float = 0.0
    mosaic: float = 0.0
    mixup: float = 0.0

    @classmethod
    def from_hyp(cls, hyp: Mapping[str, Any] | None) -> "AugmentConfig":
        """Pick the augmentation keys out of ``hyp`` (other keys are ignored)."""
        hyp = hyp or {}
        return cls(**{f.name: float(hyp[f.name]) for f in fields(cls) if f.name in hyp})


def augment_hsv(img: np.ndarray, hgain: float, sgain: float, vgain: float,
                rng: np.random.Generator) -> np.ndarray:
    """Randomly scale hue, saturation and value of a BGR ``uint8`` image, in place."""
    if not (hgain or sgain or vgain):
        return img
    gains = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * gains[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=img)
    return img


def _perspective_matrix(in_hw: tuple[int, int], out_hw: tuple[int, int], degrees: float,
                        translate: float, scale: float, shear: float, perspective: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Compose centre -> perspective -> rotate/scale -> shear -> translate; return (M, scale)."""
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -in_hw[1] / 2, -in_hw[0] / 2
    persp = np.eye(3)
    persp[2, 0], persp[2, 1] = rng.uniform(-perspective, perspective, 2)
    s = rng.uniform(1 - scale, 1 + scale)
    rot = np.eye(3)
    rot[:2] = cv2.getRotationMatrix2D((0, 0), rng.uniform(-degrees, degrees), s)
    shr = np.eye(3)
    shr[0, 1], shr[1, 0] = np.tan(np.radians(rng.uniform(-shear, shear, 2)))
    move = np.eye(3)
    move[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[1]
    move[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[0]
    return move @ shr @ rot @ persp @ centre, s


def _transform_boxes(boxes: np.ndarray, m: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Warp xyxy boxes by the 3x3 matrix ``m``; return the clipped enclosing xyxy boxes."""
    n = len(boxes)
    corners = np.ones((n * 4, 3))
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)
    warped = corners @ m.T
    warped = warped[:, :2] / warped[:, 2:3]
    warped = warped.reshape(n, 8)
    xs, ys = warped[:, 0::2], warped[:, 1::2]
    out = np.stack((xs.min(1), ys.min(1), xs.max(1), ys.max(1)), axis=1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, out_hw[1])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, out_hw[0])
    return out


def box_candidates(before: np.ndarray, after: np.ndarray, min_size: float = 2.0,
                   min_area_ratio: float = 0.1, max_aspect: float = 20.0,
                   eps: float = 1e-16) -> np.ndarray:
    """Boolean mask of transformed boxes worth keeping.

    ``before`` holds the original boxes already multiplied by the augmentation scale, ``after``
    the transformed, clipped boxes (both xyxy, shape (n, 4)). A box is kept if it is at least
    ``min_size`` px on both sides, keeps ``min_area_ratio`` of its area and is not a sliver.
    """
    w0, h0 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w1, h1 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(w1 / (h1 + eps), h1 / (w1 + eps))
    area_ratio = w1 * h1 / (w0 * h0 + eps)
    return (w1 > min_size) & (h1 > min_size) & (area_ratio > min_area_ratio) & (aspect < max_aspect)


def random_perspective(img: np.ndarray, labels: np.ndarray, degrees: float = 0.0,
                       translate: float = 0.0, scale: float = 0.0, shear: float = 0.0,
                       perspective: float = 0.0, border: tuple[int, int] = (0, 0),
                       rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation/scale/shear/translation/perspective of an image and its pixel labels.

    ``border`` = (top/bottom, left/right) pixels added to (positive) or removed from (negative)
    each side of the output; mosaic uses ``-size // 2`` to crop its 2x canvas back to ``size``.
    Boxes are warped by their corners, clipped to the output and filtered by
    :func:`box_candidates`. Returns the new image and the kept labels.
    """
    rng = rng if rng is not None else np.random.default_rng()
    out_hw = (img.shape[0] + 2 * border[0], img.shape[1] + 2 * border[1])
    m, s = _perspective_matrix(img.shape[:2], out_hw, degrees, translate, scale, shear,
                               perspective, rng)
    if border != (0, 0) or not np.allclose(m, np.eye(3)):
        dsize, fill = (out_hw[1], out_hw[0]), (PAD_VALUE,) * 3
        if perspective:
            img = cv2.warpPerspective(img, m, dsize, borderValue=fill)
        else:
            img = cv2.warpAffine(img, m[:2], dsize, borderValue=fill)
    if len(labels):
        boxes = _transform_boxes(labels[:, 1:5], m, out_hw)
        keep = box_candidates(labels[:, 1:5] * s, boxes)
        labels = np.concatenate((labels[keep, :1], boxes[keep]), axis=1)
    return img, labels


Region = tuple[int, int, int, int]


def _place_tile(tile_hw: tuple[int, int], corner: int, centre: tuple[int, int],
                canvas: int) -> tuple[Region, Region, tuple[int, int]]:
    """Canvas and tile regions (x1, y1, x2, y2) for mosaic corner 0=TL, 1=TR, 2=BL, 3=BR.

    Each tile touches the mosaic centre with its inner corner; it is cropped to the canvas.
    Returns (canvas region, tile region, tile offset in canvas coordinates).
    """
    h, w = tile_hw
    xc, yc = centre
    ox = xc - w if corner in (0, 2) else xc
    oy = yc - h if corner in (0, 1) else yc
    x1, y1 = max(ox, 0), max(oy, 0)
    x2, y2 = min(ox + w, canvas), min(oy + h, canvas)
    return (x1, y1, x2, y2), (x1 - ox, y1 - oy, x2 - ox, y2 - oy), (ox, oy)


def mosaic4(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], size: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tile four images around a random centre on a ``2*size`` square canvas.

    ``labels`` are normalised ``[cls, cx, cy, w, h]`` per image. Returns the canvas and its
    pixel labels ``[cls, x1, y1, x2, y2]`` clipped to the canvas; follow with
    :func:`random_perspective` and ``border=(-size // 2, -size // 2)`` to get a ``size`` image.
    """
    if len(images) != 4 or len(labels) != 4:
        raise ValueError("mosaic4 needs exactly four images and four label arrays")
    canvas_side = 2 * size
    canvas = np.full((canvas_side, canvas_side, images[0].shape[2]), PAD_VALUE, dtype=np.uint8)
    centre = tuple(int(v) for v in rng.uniform(size / 2, 3 * size / 2, 2))
    out = []
    for corner, (img, lab) in enumerate(zip(images, labels)):
        (cx1, cy1, cx2, cy2), (tx1, ty1, tx2, ty2), (ox, oy) = _place_tile(
            img.shape[:2], corner, centre, canvas_side)
        canvas[cy1:cy2, cx1:cx2] = img[ty1:ty2, tx1:tx2]
        out.append(_normalised_to_pixels(lab, img.shape[:2], (ox, oy)))
    merged = np.concatenate(out, axis=0) if out else np.zeros((0, 5), np.float32)
    merged[:, 1:5] = merged[:, 1:5].clip(0, canvas_side)
    return canvas, merged


def _normalised_to_pixels(labels: np.ndarray, hw: tuple[int, int],
                          offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """[cls, cx, cy, w, h] normalised -> [cls, x1, y1, x2, y2] pixels shifted by ``offset``."""
    h, w = hw
    out = np.zeros((len(labels), 5), dtype=np.float32)
    if len(labels):
        out[:, 0] = labels[:, 0]
        out[:, 1] = (labels[:, 1] - labels[:, 3] / 2) * w + offset[0]
        out[:, 2] = (labels[:, 2] - labels[:, 4] / 2) * h + offset[1]
        out[:, 3] = (labels[:, 1] + labels[:, 3] / 2) * w + offset[0]
        out[:, 4] = (labels[:, 2] + labels[:, 4] / 2) * h + offset[1]
    return out


def mixup(img1: np.ndarray, labels1: np.ndarray, img2: np.ndarray, labels2: np.ndarray,
          rng: np.random.Generator, alpha: float = 32.0) -> tuple[np.ndarray, np.ndarray]:
    """Blend two equally sized images with a Beta(alpha, alpha) weight; keep both label sets."""
    if img1.shape != img2.shape:
        raise ValueError(f"mixup needs equal image shapes, got {img1.shape} and {img2.shape}")
    r = rng.beta(alpha, alpha)
    img = (img1.astype(np.float32) * r + img2.astype(np.float32) * (1 - r)).round()
    return img.clip(0, 255).astype(np.uint8), np.concatenate((labels1, labels2), axis=0)


def flip_lr(img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right; ``labels`` are normalised [cls, cx, cy, w, h] (copied, not modified)."""
    labels = labels.copy()
    if len(labels):
        labels[:, 1] = 1 - labels[:, 1]
    return np.ascontiguousarray(img[:, ::-1]), labels


def flip_ud(img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror up-down; ``labels`` are normalised [cls, cx, cy, w, h] (copied, not modified)."""
    labels = labels.copy()
    if len(labels):
        labels[:, 2] = 1 - labels[:, 2]
    return np.ascontiguousarray(img[::-1]), labels
