"""The route rule, defined once: which images of a batch take the expensive route.

An image is hard (detector 2 for Dy models, the high resolution for DualRes) when its difficulty
φ > threshold; a threshold <= 0 sends every image to the hard route, one >= 1 none (so the two
ends of the dial hold whatever φ is, even φ exactly 0 or 1). Every consumer calls
:func:`route_mask`: the models, their traceable export stages, the calibration's hard fractions
and the sweep. The ONNX graph writes the same rule as ops (``utils.export.onnx_graph.route_mask``),
which a test pins to this function on the edge cases.
"""
from __future__ import annotations

import torch


def route_mask(phi: torch.Tensor, threshold: float) -> torch.Tensor:
    """True where an image takes the hard route: φ > threshold; <= 0 sends all, >= 1 none."""
    if threshold <= 0:
        return torch.ones_like(phi, dtype=torch.bool)
    if threshold >= 1:
        return torch.zeros_like(phi, dtype=torch.bool)
    return phi > threshold


def route_groups(hard: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(easy, hard) image indices of a route mask, on its device.

    The mask is read on the host once per batch: on a GPU each ``nonzero`` or ``item`` of a
    device tensor waits for the device, so reading it per image (or per group) would stall the
    GPU that many times. The indices go back without waiting (``non_blocking``).
    """
    host = hard.cpu()
    to = dict(device=hard.device, non_blocking=True)
    return (~host).nonzero().flatten().to(**to), host.nonzero().flatten().to(**to)
