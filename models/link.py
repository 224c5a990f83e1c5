"""CBNet composite link between two backbones (CBLinear projections, CBFuse sums)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class CBLinear(nn.Module):
    """1x1 projection of one backbone-1 feature into the channel widths of several backbone-2 stages."""

    def __init__(self, c1: int, c2s: Sequence[int]) -> None:
        super().__init__()
        self.c2s = [int(c) for c in c2s]
        self.conv = nn.Conv2d(c1, sum(self.c2s), 1, 1, 0, bias=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.conv(x).split(self.c2s, dim=1))


class CBFuse(nn.Module):
    """Add the level-``level`` projections of several CBLinear outputs to a backbone-2 feature.

    Inputs are ``[proj_0, ..., proj_k, target]``: each ``proj_j`` is a CBLinear output list, from
    which entry ``level`` is resized (nearest) to the target's size and summed into it.
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def forward(self, xs: list) -> torch.Tensor:
        target = xs[-1]
        size = target.shape[2:]
        out = target
        for proj in xs[:-1]:
            p = proj[self.level]
            if p.shape[2:] != size:
                p = F.interpolate(p, size=size, mode="nearest")
            out = out + p
        return out
