"""Test helper: one batch of loader images through the frozen detectors and a router."""
from __future__ import annotations

import torch
import torch.nn as nn

from utils.routing.dynamicdet_cache import batch_samples
from utils.routing.dynamicdet_trainer import RouteBatch
from utils.train.loss import ComputeLoss


def to_batch(imgs: torch.Tensor, targets: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 loader images -> float in [0, 1] on ``device``; targets moved along."""
    return imgs.to(device, non_blocking=True).float() / 255.0, targets.to(device)


def route_batch(model: nn.Module, router: nn.Module, imgs: torch.Tensor, targets: torch.Tensor,
                compute_loss: ComputeLoss) -> RouteBatch:
    """φ (through ``router``, a ``PooledRouter``) with L1, L2 of one batch of images, as the
    trainer's sample pass computes them."""
    pooled, l1, l2 = batch_samples(model, imgs, targets, compute_loss)
    return RouteBatch(router(pooled).sigmoid(), l1, l2)
