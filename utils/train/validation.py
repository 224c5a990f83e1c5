"""Validation losses: the training objective on the validation images, without gradients.

The model runs as in training (heads return raw maps for the loss) but with every BatchNorm in
eval mode, so it computes exactly what inference computes; the per-item losses (box, obj, cls,
total, and for a dynamic model each detector's) are averaged over the images.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from utils.train.loss import ComputeLoss


@torch.no_grad()
def validation_losses(model: nn.Module, loader, compute_loss: ComputeLoss, device: torch.device) -> dict[str, float]:
    """{item name: mean loss per image} of ``model`` on ``loader``'s images ({} without images)."""
    was_training = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
    sums, n = None, 0
    try:
        for imgs, targets, *_ in loader:
            x = imgs.to(device, non_blocking=True).float() / 255.0
            _, items = compute_loss(model(x), targets.to(device), x)
            sums = items.double().cpu() * len(x) if sums is None else sums + items.double().cpu() * len(x)
            n += len(x)
    finally:
        model.train(was_training)
    if not n:
        return {}
    return dict(zip(compute_loss.item_names, (sums / n).tolist()))


def mean_or_nan(values: dict[str, float], names: list[str]) -> dict[str, float]:
    """``values`` for each of ``names``, NaN where missing (a row keeps its columns when not validated)."""
    return {k: float(values.get(k, np.nan)) for k in names}
