"""YOLOR/YOLOv7 detection head with implicit knowledge (IDetect)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from models.fastpath import conv_act
from models.registry import register


class ImplicitA(nn.Module):
    """Learned additive bias applied to the head input."""

    def __init__(self, channels: int, std: float = 0.02) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channels, 1, 1).normal_(0.0, std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.implicit


class ImplicitM(nn.Module):
    """Learned multiplicative scale applied to the head output."""

    def __init__(self, channels: int, std: float = 0.02) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channels, 1, 1).normal_(1.0, std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.implicit


@register()
class IDetect(nn.Module):
    """Anchor-based detection head over ``nl`` feature levels.

    Training mode returns the raw maps, a list of ``(bs, na, ny, nx, no)`` tensors. Inference mode
    returns decoded boxes ``(bs, N, no)``: pixel (cx, cy, w, h), objectness and class scores.
    ``anchors`` is stored in grid units (pixels / stride) and ``anchor_grid`` in pixels, as in
    the official checkpoints.
    """

    def __init__(self, nc: int, anchors: Sequence[Sequence[float]], ch: Sequence[int],
                 strides: Sequence[float]) -> None:
        super().__init__()
        self.nc, self.no = nc, nc + 5
        self.nl, self.na = len(anchors), len(anchors[0]) // 2
        if len(ch) != self.nl or len(strides) != self.nl:
            raise ValueError(f"IDetect: {self.nl} anchor levels but {len(ch)} inputs")
        stride = torch.tensor(strides, dtype=torch.float32)
        pixels = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer("stride", stride, persistent=False)
        self.register_buffer("anchors", pixels / stride.view(-1, 1, 1))
        self.register_buffer("anchor_grid", pixels.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.ia = nn.ModuleList(ImplicitA(c) for c in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)
        self.fused = False
        self.out_channels, self.stride_factor = self.no * self.na, 1.0

    @classmethod
    def from_config(cls, ch: Sequence[int], args: list, act: str, strides: Sequence[float] = ()) -> "IDetect":
        nc, anchors = args[0], args[1]
        return cls(nc, anchors, ch, strides)

    def initialize_biases(self, image_size: int = 640) -> None:
        """Prior biases: ~8 objects per image for objectness, uniform classes (RetinaNet-style)."""
        with torch.no_grad():
            for conv, s in zip(self.m, self.stride.tolist()):
                b = conv.bias.view(self.na, -1)
                b[:, 4] += math.log(8 / (image_size / s) ** 2)
                b[:, 5:] += math.log(0.6 / (self.nc - 0.99)) if self.nc > 1 else 0.0

    def level(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Raw prediction map of level ``i`` shaped (bs, na, ny, nx, no)."""
        if not self.fused:
            x = self.im[i](self.m[i](self.ia[i](x)))
        else:
            x = conv_act(self.m[i], None, x)
        bs, _, ny, nx = x.shape
        return x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()

    def decode(self, i: int, p: torch.Tensor) -> torch.Tensor:
        """Raw map of level ``i`` -> (bs, na*ny*nx, no) boxes in input pixels."""
        bs, _, ny, nx, _ = p.shape
        yv, xv = torch.meshgrid(torch.arange(ny, device=p.device, dtype=p.dtype),
                                torch.arange(nx, device=p.device, dtype=p.dtype), indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)
        y = p.sigmoid()
        xy = (y[..., :2] * 2.0 - 0.5 + grid) * self.stride[i].to(p.dtype)
        wh = (y[..., 2:4] * 2.0) ** 2 * self.anchor_grid[i].to(p.dtype)
        return torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, self.no)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
        raw = [self.level(i, x) for i, x in enumerate(xs)]
        if self.training:
            return raw
        return torch.cat([self.decode(i, p) for i, p in enumerate(raw)], 1)

    def fuse(self) -> None:
        """Fold ImplicitA into the conv bias and ImplicitM into weight and bias."""
        if self.fused:
            return
        with torch.no_grad():
            for conv, ia, im in zip(self.m, self.ia, self.im):
                w = conv.weight.view(conv.out_channels, -1)
                conv.bias += (w @ ia.implicit.view(-1, 1)).view(-1)
                scale = im.implicit.view(-1)
                conv.bias *= scale
                conv.weight *= scale.view(-1, 1, 1, 1)
        self.fused = True
