"""Image resizing shared by DualRes and its router: box prefilter + bilinear, ONNX-exportable.

``F.interpolate(mode="bilinear", antialias=False)`` samples only about two input pixels per
output pixel and direction, so a reduction by more than 2x aliases; ``antialias=True`` fixes that
but does not export to ONNX (``aten::_upsample_bilinear2d_aa`` has no symbolic in the exporter
this repository uses, opsets 13-20). :func:`resize` therefore first averages k x k blocks
(``avg_pool2d``, k the largest whole factor that divides both sides and keeps the result at least
the target size), then interpolates bilinearly (``align_corners=False``) to the exact size. Both
steps keep the pixel grid aligned (an output pixel covers the same part of the image as in a
direct resize), both export, and both act on each image of a batch on its own.

At a factor of exactly 2 (DualRes' default scale 0.5) bilinear interpolation already *is* the
2 x 2 average, so the result equals plain bilinear downsampling there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def prefilter_factor(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """Largest k >= 1 dividing both input sides with in / k >= out on both sides."""
    (h, w), (oh, ow) = in_hw, out_hw
    k = max(1, min(h // max(oh, 1), w // max(ow, 1)))
    while k > 1 and (h % k or w % k):
        k -= 1
    return k


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(b, c, h, w) -> (b, c, *size): k x k average (when shrinking by k >= 2), then bilinear."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    k = prefilter_factor((int(x.shape[-2]), int(x.shape[-1])), size)
    if k > 1:
        x = F.avg_pool2d(x, k)
        if tuple(x.shape[-2:]) == size:
            return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
