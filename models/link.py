"""CBNet composite link between two backbones (CBLinear projections, CBFuse sums)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.fastpath import conv_act


class CBLinear(nn.Module):
    """1x1 projection of one backbone-1 feature into the channel widths of several backbone-2 stages."""

    def __init__(self, c1: int, c2s: Sequence[int]) -> None:
        super().__init__()
        self.c2s = [int(c) for c in c2s]
        self.conv = nn.Conv2d(c1, sum(self.c2s), 1, 1, 0, bias=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(conv_act(self.conv, None, x).split(self.c2s, dim=1))


class CBFuse(nn.Module):
    """Add the level-``level`` projections of several CBLinear outputs to a backbone-2 feature.

    Inputs are ``[proj_0, ..., proj_k, target]``: each ``proj_j`` is a CBLinear output list, from
    which entry ``level`` is resized (nearest) to the target's size and summed into it.
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def forward(self, xs: list) -> torch.Tensor:
        target, projs = xs[-1], [proj[self.level] for proj in xs[:-1]]
        if not projs:
            return target
        tracing = torch.jit.is_tracing()  # exporters get the plain graph: Resize and Add
        out = add_nearest(target, projs[0], broadcast=not tracing)
        for p in projs[1:]:
            out = add_nearest(out, p, inplace=not tracing, broadcast=not tracing)
        return out


def add_nearest(x: torch.Tensor, p: torch.Tensor, inplace: bool = False, broadcast: bool = True) -> torch.Tensor:
    """``x + p`` with ``p`` resized (nearest) to ``x``'s size; in place on ``x`` if asked.

    With ``broadcast``, when ``x``'s size is a whole multiple of ``p``'s, every ``p`` pixel is
    added to its block of ``x`` by broadcasting instead of building the upsampled tensor (the
    same values as interpolation, without its memory traffic).
    """
    (h, w), (ph, pw) = x.shape[2:], p.shape[2:]
    if (ph, pw) != (h, w) and (not broadcast or h % ph or w % pw):
        p = F.interpolate(p, size=(h, w), mode="nearest")
    if p.shape[2:] == x.shape[2:]:
        return x.add_(p) if inplace else x + p
    b, c, sh, sw = x.shape[0], x.shape[1], h // ph, w // pw
    blocks = x.view(b, c, ph, sh, pw, sw)
    p = p[:, :, :, None, :, None]
    if inplace:
        blocks.add_(p)
        return x
    return (blocks + p).reshape(x.shape)
