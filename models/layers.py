"""Building blocks of YOLOv7 backbones and necks.

Every registered layer is built from a config row by ``from_config(ch, args, act)`` where ``ch``
holds the channel counts of its inputs, and reports ``out_channels`` and ``stride_factor`` (how
much it divides the spatial resolution) so the parser can track shapes without a dry run.
Layers with a cheaper inference form implement ``fuse()``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import skip_init

from models.fastpath import conv_act
from models.registry import make_activation, register


def autopad(k: int, p: int | None = None) -> int:
    """'Same' padding for an odd kernel."""
    return k // 2 if p is None else p


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A single biased convolution equal to ``bn(conv(x))`` in eval mode."""
    fused = skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True, device=conv.weight.device,
                      dtype=conv.weight.dtype)  # no random init: every value is written below
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return fused.requires_grad_(False)


def _conv_from_config(cls: type, ch: Sequence[int], args: list, act: str) -> nn.Module:
    """Config row ``[c2, k, s, p, g, act]`` (all but c2 optional) -> convolution layer."""
    c2, *rest = args
    kw = dict(zip(("k", "s", "p", "g", "act"), rest))
    kw.setdefault("act", act)
    return cls(ch[0], c2, **kw)


class Layer(nn.Module):
    """Base class: config construction defaults for single-input, shape-preserving layers."""

    out_channels: int
    stride_factor: float = 1.0

    @classmethod
    def from_config(cls, ch: Sequence[int], args: list, act: str) -> "Layer":
        layer = cls(*args)
        layer.out_channels = ch[0]
        return layer


@register()
class Conv(Layer):
    """Conv2d + BatchNorm2d + activation."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act: str = "silu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = make_activation(act)
        self.out_channels, self.stride_factor = c2, float(s)

    @classmethod
    def from_config(cls, ch: Sequence[int], args: list, act: str) -> "Conv":
        return _conv_from_config(cls, ch, args, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.bn, nn.Identity):  # fused: the packed fast path may apply
            return conv_act(self.conv, self.act, x)
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()


@register()
class RepConv(Layer):
    """RepVGG block: 3x3 + 1x1 (+ identity) branches in training, one 3x3 conv after ``fuse``."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, p: int | None = None, g: int = 1,
                 act: str = "silu") -> None:
        super().__init__()
        if k != 3 or autopad(k, p) != 1:
            raise ValueError("RepConv needs a 3x3 kernel with padding 1")
        self.act = make_activation(act)
        self.rbr_identity = nn.BatchNorm2d(c1) if c1 == c2 and s == 1 else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, 3, s, 1, groups=g, bias=False), nn.BatchNorm2d(c2))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, 0, groups=g, bias=False), nn.BatchNorm2d(c2))
        self.rbr_reparam: nn.Conv2d | None = None
        self.out_channels, self.stride_factor = c2, float(s)

    @classmethod
    def from_config(cls, ch: Sequence[int], args: list, act: str) -> "RepConv":
        return _conv_from_config(cls, ch, args, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rbr_reparam is not None:
            return conv_act(self.rbr_reparam, self.act, x)
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return self.act(y)

    def fuse(self) -> None:
        if self.rbr_reparam is not None:
            return
        dense = fuse_conv_bn(*self.rbr_dense)
        one = fuse_conv_bn(*self.rbr_1x1)
        weight = dense.weight + F.pad(one.weight, [1, 1, 1, 1])
        bias = dense.bias + one.bias
        if self.rbr_identity is not None:
            c, groups = dense.in_channels, dense.groups
            eye = torch.zeros(c, c // groups, 1, 1, device=weight.device)
            eye[torch.arange(c), torch.arange(c) % (c // groups)] = 1.0
            ident = nn.Conv2d(c, c, 1, groups=groups, bias=False).to(weight.device)
            ident.weight.data.copy_(eye)
            idconv = fuse_conv_bn(ident, self.rbr_identity)
            weight = weight + F.pad(idconv.weight, [1, 1, 1, 1])
            bias = bias + idconv.bias
        with torch.no_grad():
            dense.weight.copy_(weight)
            dense.bias.copy_(bias)
        self.rbr_reparam = dense
        self.rbr_dense = self.rbr_1x1 = self.rbr_identity = None


@register()
class MP(Layer):
    """Max-pool downsampling by ``k``."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)
        self.stride_factor = float(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


@register()
class SP(Layer):
    """Stride-1 'same' max-pool (the SPP branches of YOLOv7-tiny)."""

    def __init__(self, k: int = 3, s: int = 1) -> None:
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)
        self.stride_factor = float(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


@register()
class ReOrg(Layer):
    """Space-to-depth: (b, c, h, w) -> (b, 4c, h/2, w/2), the YOLOv7-W6 stem."""

    stride_factor = 2.0

    @classmethod
    def from_config(cls, ch: Sequence[int], args: list, act: str) -> "ReOrg":
        layer = cls()
        layer.out_channels = 4 * ch[0]
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


@register()
class Concat(Layer):
    """Channel concatenation of several inputs."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    @classmethod
    def from_config(cls, ch: Sequence[int], args: list, act: str) -> "Concat":
        layer = cls(*args)
        layer.out_channels = sum(ch)
        return layer

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.dim)


@register("nn.Upsample")
class Upsample(Layer):
    """Nearest (or other mode) upsampling by an integer factor."""

    def __init__(self, size: int | None = None, scale_factor: float = 2.0, mode: str = "nearest") -> None:
        super().__init__()
        if size is not None:
            raise ValueError("Upsample in configs takes a scale factor, not a fixed size")
        self.scale_factor, self.mode = float(scale_factor), mode
        self.stride_factor = 1.0 / self.scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode)


@register()
class SPPCSPC(Layer):
    """CSP spatial pyramid pooling block of YOLOv7."""

    def __init__(self, c1: int, c2: int, e: float = 0.5, k: Sequence[int] = (5, 9, 13), act: str = "silu") -> None:
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, act=act)
        self.cv2 = Conv(c1, c_, 1, act=act)
        self.cv3 = Conv(c_, c_, 3, act=act)
        self.cv4 = Conv(c_, c_, 1, act=act)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.cv5 = Conv(4 * c_, c_, 1, act=act)
        self.cv6 = Conv(c_, c_, 3, act=act)
        self.cv7 = Conv(2 * c_, c2, 1, act=act)
        self.out_channels = c2

    @classmethod
    def from_config(cls, ch: Sequence[int], args: list, act: str) -> "SPPCSPC":
        return cls(ch[0], args[0], act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        return self.cv7(torch.cat((y1, self.cv2(x)), 1))
