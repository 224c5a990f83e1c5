"""What DynamicDet's stage 2 needs of each image, computed once: the router's pooled inputs and L1, L2.

During router training the detectors are frozen (BatchNorm in eval mode) and the images are
not augmented, so everything upstream of the router's first fully connected layer is a fixed
function of the image: its global-average-pooled backbone-1 features (the router's input
vector) and both detectors' per-image losses. :func:`collect_samples` computes them in one pass
without gradients; every later epoch trains the two FC layers on these vectors, which is
exactly what re-running the detectors would give, at a tiny fraction of the cost. Memory:
``d`` floats per image (d = 2880 for dy-yolov7, about 1.4 GB for COCO's 118k training images).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from utils.routing.samples import SampleTable, collect
from utils.train.loss import ComputeLoss


@dataclass
class RouterSamples(SampleTable):
    """Per image: pooled router input (N, d), detector losses L1, L2 (N,) and the file path (``keys``)."""

    pooled: torch.Tensor
    l1: torch.Tensor
    l2: torch.Tensor
    keys: list[str]

    @property
    def names(self) -> list[str]:
        """File names (the per-image keys of the 'random' strategy)."""
        return [Path(k).name for k in self.keys]


@torch.no_grad()
def batch_samples(model: nn.Module, imgs: torch.Tensor, targets: torch.Tensor,
                  compute_loss: ComputeLoss) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pooled router inputs, L1, L2) of one batch of [0, 1] images on a frozen-mode model."""
    with torch.autocast(device_type="cuda", enabled=imgs.is_cuda):
        feats, _ = model.backbone1(imgs)
        outputs = (model.detector1(feats), model.detector2(feats))
    pooled = model.router.pool([f.float() for f in model.router_inputs(feats)])
    l1, l2 = compute_loss(outputs, targets, imgs, reduction="none")
    return pooled.float(), l1.float(), l2.float()


def collect_samples(model: nn.Module, loader, compute_loss: ComputeLoss, device: torch.device,
                    desc: str = "", show: bool = True) -> RouterSamples:
    """The samples of every image ``loader`` yields (this process's share under DDP), on the CPU."""
    return collect(RouterSamples, loader, lambda x, t: batch_samples(model, x, t, compute_loss), device, desc, show)
