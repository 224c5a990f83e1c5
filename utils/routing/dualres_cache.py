"""What DualRes router training needs of each image, computed once: thumbnail, L_low, L_high.

The detector is frozen (eval-mode BatchNorm) and the images are not augmented, so each image's
detection loss at both resolutions is a fixed number, and the router's input is a fixed
thumbnail. :func:`collect_samples` computes them in one pass without gradients; the epochs then
train the router on the thumbnails alone (router forward and backward only), which is exactly
what re-running the detector would give. The thumbnail is stored as uint8 (what the router
sees up to ±0.5/255 when its input is resized; exact when the image already has the router's
size): 3·s² bytes per image, 49 kB at s = 128, 150 kB at s = 224 (about 5.8 / 17.8 GB for
COCO's 118k training images).

Losses: ``ComputeLoss(detector, hyp)(raw, targets, imgs, reduction="none")`` with the *same* gains
at both resolutions. Targets are normalised (cx, cy, w, h in [0, 1]), so they hold unchanged for
the resized image; ``imgs`` must be the image the detector saw (the low-resolution one for
L_low), because the loss takes the pixel size from it to compare targets with decoded boxes.
A Dy detector gives both its detectors' losses; the route its inner threshold picks is kept.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from models.route import route_mask
from utils.routing.samples import SampleTable, collect
from utils.train.loss import ComputeLoss


@dataclass
class DualResSamples(SampleTable):
    """Per image: router thumbnail (N, 3, s, s) uint8, L_low and L_high (N,), and its key (path)."""

    thumbs: torch.Tensor
    l_low: torch.Tensor
    l_high: torch.Tensor
    keys: list[str]

    def images(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The thumbnails as float in [0, 1] on ``device``."""
        return self.thumbs.to(device, non_blocking=True).float() / 255.0

    @property
    def gain(self) -> torch.Tensor:
        """L_low - L_high: how much each image gains from high resolution."""
        return self.l_low - self.l_high


def to_uint8(t: torch.Tensor) -> torch.Tensor:
    """[0, 1] float images -> uint8 (rounded)."""
    return t.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)


@contextlib.contextmanager
def raw_outputs(detector: nn.Module) -> Iterator[nn.Module]:
    """The detector in training mode (raw maps for the loss) with every BatchNorm in eval mode."""
    was_training = detector.training
    detector.train()
    for m in detector.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield detector
    finally:
        detector.train(was_training)


def route_losses(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, compute_loss: ComputeLoss) -> torch.Tensor:
    """Per-image loss (b,) of the detector's route on ``x`` (a Dy detector at its inner threshold)."""
    with raw_outputs(model.detector) as det:
        out = det(x)
    losses = compute_loss(out, targets, x, reduction="none")
    if model.inner_threshold is None:
        return losses[0]
    return torch.where(route_mask(out.phi, model.inner_threshold), losses[1], losses[0])


@torch.no_grad()
def batch_samples(model: nn.Module, imgs: torch.Tensor, targets: torch.Tensor,
                  compute_loss: ComputeLoss) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(uint8 thumbnails, L_low, L_high) of one batch of [0, 1] images for a DualResModel."""
    with torch.autocast(device_type="cuda", enabled=imgs.is_cuda):
        l_high = route_losses(model, imgs, targets, compute_loss)
        l_low = route_losses(model, model.downsample(imgs), targets, compute_loss)
    return to_uint8(model.router.thumbnail(imgs.float())), l_low.float(), l_high.float()


def collect_samples(model: nn.Module, loader, compute_loss: ComputeLoss, device: torch.device,
                    desc: str = "", show: bool = True) -> DualResSamples:
    """The samples of every image ``loader`` yields (this process's share under DDP), on the CPU."""
    return collect(DualResSamples, loader, lambda x, t: batch_samples(model, x, t, compute_loss), device, desc, show)
