"""Pre-processing of inference inputs and its inverse, in one object.

:class:`LetterboxTransform` is what every inference path (the Python API and detect.py, test.py
through :class:`~utils.inference.predictor.Predictor`, INT8 calibration) uses to turn images into
network inputs and network-input boxes back into original-image pixels:

* :meth:`~LetterboxTransform.batch` / :meth:`~LetterboxTransform.batches`: resize keeping the
  aspect ratio, pad to a stride multiple (or into a fixed export shape), BGR -> RGB, HWC -> CHW,
  as ``uint8`` (the padding and resizing primitive is :func:`utils.data.augment.letterbox`, which
  the dataset loader uses too);
* :meth:`~LetterboxTransform.normalize`: ``uint8`` -> float in ``[0, 1]`` on the model's device
  (fp16 when asked for);
* :meth:`~LetterboxTransform.to_original`: xyxy boxes in network-input pixels -> original pixels.

A *shape info* is ``((h0, w0), ((ratio_h, ratio_w), (pad_w, pad_h)))``, the form the dataset
loader also gives for each image, or None for an image that was not letterboxed.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch

from utils.boxes import scale_boxes
from utils.data.augment import letterbox
from utils.data.sources import Frame

ShapeInfo = tuple[tuple[int, int], tuple] | None

__all__ = ["Batch", "LetterboxTransform", "ShapeInfo"]


@dataclass
class Batch:
    """Letterboxed ``(b, 3, H, W)`` ``uint8`` RGB images, their frames and ``(ratio, pad)`` each."""

    imgs: torch.Tensor
    frames: list[Frame]
    ratio_pads: list[tuple]


def _fitted_hw(hw: tuple[int, int], img_size: int) -> tuple[int, int]:
    """(h, w) of an image of size ``hw`` scaled so its long side is ``img_size``."""
    r = img_size / max(hw)
    return max(1, round(hw[0] * r)), max(1, round(hw[1] * r))  # a 1x10000 image keeps 1 row


class LetterboxTransform:
    """Letterbox images into model-ready batches, normalise them, and map boxes back.

    ``img_size``: the long side each image is scaled to; ``stride``: batches are padded to a
    multiple of it; ``shape``: a fixed (h, w) every image is fitted into instead (exports with
    one input size).
    """

    def __init__(self, img_size: int, stride: int = 32, shape: tuple[int, int] | None = None) -> None:
        self.img_size = int(img_size)
        self.stride = int(stride)
        self.shape = None if shape is None else (int(shape[0]), int(shape[1]))

    def __repr__(self) -> str:
        return f"LetterboxTransform(img_size={self.img_size}, stride={self.stride}, shape={self.shape})"

    def letterbox(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple]]:
        """``HxWx3`` uint8 BGR images -> ``(b, 3, H, W)`` uint8 RGB of one shape and each image's
        ``(ratio, pad)``: each scaled to ``img_size`` on its long side and padded to the smallest
        stride multiple holding them all, or fitted into the fixed ``shape``."""
        shape = self.shape
        if shape is None:
            fitted = [_fitted_hw(im.shape[:2], self.img_size) for im in images]
            shape = tuple(math.ceil(max(s[k] for s in fitted) / self.stride) * self.stride for k in (0, 1))
        out, ratio_pads = [], []
        for im in images:
            lb = letterbox(im, shape, auto=False, stride=self.stride)
            out.append(np.ascontiguousarray(lb.img[..., ::-1].transpose(2, 0, 1)))
            ratio_pads.append((lb.ratio, lb.pad))
        return torch.from_numpy(np.stack(out)), ratio_pads

    def batch(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[ShapeInfo]]:
        """:meth:`letterbox`, with each image's shape info (its size and ``(ratio, pad)``)."""
        imgs, ratio_pads = self.letterbox(images)
        return imgs, [(tuple(im.shape[:2]), rp) for im, rp in zip(images, ratio_pads)]

    def batches(self, frames: Iterable[Frame], batch_size: int) -> Iterator[Batch]:
        """``frames`` letterboxed in :class:`Batch` es of up to ``batch_size``."""
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        it = iter(frames)
        while chunk := list(islice(it, batch_size)):
            imgs, ratio_pads = self.letterbox([f.img for f in chunk])
            yield Batch(imgs, chunk, ratio_pads)

    @staticmethod
    def normalize(imgs: torch.Tensor, device: torch.device | str, half: bool = False) -> torch.Tensor:
        """uint8 ``(b, 3, H, W)`` -> float in ``[0, 1]`` on ``device`` (fp16 if ``half``).

        Float inputs are taken as already in ``[0, 1]``: only moved and cast.
        """
        x = imgs.to(device, non_blocking=True)
        x = x.half() if half else x.float()
        return x / 255.0 if imgs.dtype == torch.uint8 else x

    @staticmethod
    def to_original(boxes: torch.Tensor, input_hw: Sequence[int], shape_info: ShapeInfo) -> torch.Tensor:
        """xyxy boxes in network-input pixels (an ``input_hw`` image) -> original-image pixels,
        clipped to the original image; a copy (``boxes`` is left alone), unchanged if no shape info."""
        boxes = boxes.clone()
        if shape_info is None:
            return boxes
        orig_hw, ratio_pad = shape_info
        return scale_boxes(tuple(input_hw), boxes, orig_hw, ratio_pad)
