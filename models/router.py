"""Adaptive router of DynamicDet (paper Sec. 3.2): predicts each image's difficulty φ."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


class AdaptiveRouter(nn.Module):
    """Global-average-pool each feature, concatenate, FC (d -> d/r) + ReLU, FC (-> 1), sigmoid.

    The FC layers are 1x1 convolutions on the pooled 1x1 maps (the official parameter layout).
    The output φ in (0, 1) is the difficulty: an image is hard when φ > threshold.
    """

    def __init__(self, channels: Sequence[int], reduction: int = 4) -> None:
        super().__init__()
        d = int(sum(channels))
        self.channels = list(channels)
        self.layer1 = nn.Conv2d(d, d // reduction, kernel_size=1, bias=True)
        self.layer2 = nn.Conv2d(d // reduction, 1, kernel_size=1, bias=True)

    def pool(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """The global-average-pooled features, concatenated: shape (bs, d)."""
        return torch.cat([f.mean(dim=(2, 3)) for f in feats], 1)

    def logits_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores (bs,) from :meth:`pool`'s output."""
        x = pooled.reshape(*pooled.shape, 1, 1)
        return self.layer2(torch.relu(self.layer1(x))).flatten()

    def logits(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Pre-sigmoid scores, shape (bs,)."""
        return self.logits_from_pooled(self.pool(feats))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.logits(feats).sigmoid()
