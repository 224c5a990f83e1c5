"""Putting a DualRes model together for train_router.py: wrap a trained detector, or attach a
router trained around another detector (the paper's plug-and-play claim)."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from models.dualres import DualResModel
from models.resolution_router import ResolutionRouter
from utils.data.config import hyp_for
from utils.train.loss import ComputeLoss, scale_loss_gains
from utils.weights.checkpoints import load_checkpoint


def wrap_detector(detector: nn.Module, *, kind: str = "thumb", router_size: int | None = None,
                  router_weights: str | Path | None = None, scale: float = 0.5,
                  inner_threshold: float | None = None) -> DualResModel:
    """A fresh DualRes router around a trained plain or Dy detector (a Dy one at ``inner_threshold``)."""
    if isinstance(detector, DualResModel):
        raise ValueError("--weights is already a DualRes model; pass its detector's checkpoint "
                         "(or --resume the run that trained it)")
    router = ResolutionRouter(kind, input_size=router_size, backbone_weights=router_weights or None)
    return DualResModel(detector, router, scale=scale, inner_threshold=inner_threshold)


def attach_router(detector: nn.Module, router_ckpt: str | Path, inner_threshold: float | None = None) -> DualResModel:
    """``detector`` with the trained router (and its scale and threshold) of another DualRes checkpoint."""
    source, _ = load_checkpoint(router_ckpt)
    if not isinstance(source, DualResModel):
        raise ValueError(f"--router-from {router_ckpt} is not a DualRes checkpoint")
    if isinstance(detector, DualResModel):
        detector = detector.detector
    return DualResModel(detector, source.router, scale=source.scale, threshold=source.threshold,
                        inner_threshold=inner_threshold)


def detector_loss(model: DualResModel, img_size: int, hyp: str = "") -> ComputeLoss:
    """The frozen detector's training loss (per image with ``reduction='none'``) at ``img_size``."""
    det = model.detector
    gains = scale_loss_gains(hyp_for(det, hyp), det.heads[0].nl, det.nc, img_size)
    return ComputeLoss(det, gains)
