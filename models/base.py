"""What plain and dynamic detectors share: config, class names, fusion, initialisation."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn

from models import fastpath
from models.head import IDetect
from models.layers import Conv, RepConv
from models.link import CBLinear


class DetectorBase(nn.Module):
    """Base class of YOLOv7-family detectors built from a config dict."""

    is_dynamic = False
    route_names: tuple[str, ...] = ()  # a plain model has one route
    end2end = False  # returns raw predictions; NMS runs after
    threshold_input = True  # a routed PyTorch model takes the threshold in every call

    def __init__(self, cfg: dict, names: list[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        nc = int(cfg["nc"])
        self.names = list(names) if names is not None else list(cfg.get("names") or [str(i) for i in range(nc)])
        if len(self.names) != nc:
            raise ValueError(f"{len(self.names)} class names for nc={nc}")
        self.fused = False

    @property
    def nc(self) -> int:
        return int(self.cfg["nc"])

    @property
    def heads(self) -> tuple[IDetect, ...]:
        """The detection heads (one for a plain model, two for a dynamic one)."""
        return tuple(m for m in self.modules() if isinstance(m, IDetect))

    @property
    def stride(self) -> torch.Tensor:
        return self.heads[0].stride

    def _init_weights(self) -> None:
        """YOLOv7 defaults: BN eps 1e-3 / momentum 0.03 and prior biases in the heads."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03
        for h in self.heads:
            h.initialize_biases()

    @torch.no_grad()
    def fuse(self) -> "DetectorBase":
        """Fold BatchNorm, RepConv branches and implicit layers for inference (in place)."""
        for m in list(self.modules()):
            if m is not self and hasattr(m, "fuse"):
                m.fuse()
        self.fused = True
        return self.eval()

    def optimize_for_inference(self, keep_freed_memory: bool = False) -> "DetectorBase":
        """Fuse, then run CPU float32 inference on pre-packed oneDNN convolutions (in place).

        Outputs match the fused model to float rounding; ``state_dict`` is unchanged and training
        mode, CUDA or gradients fall back to the plain path. ``keep_freed_memory`` also stops
        glibc from unmapping freed activations after every layer: faster, but it changes the
        whole process's malloc settings (:func:`models.fastpath.keep_freed_memory`), so it is
        off unless the caller owns the process (the scripts). Returns the model in eval mode.
        """
        if not self.fused:
            self.fuse()
        if fastpath.available():
            for conv, act in self._conv_act_pairs():
                fastpath.prepare(conv, act)
        if keep_freed_memory:
            fastpath.keep_freed_memory()
        return self.eval()

    def _conv_act_pairs(self) -> Iterator[tuple[nn.Conv2d, nn.Module | None]]:
        """Every detector convolution with the activation that follows it (the router excluded)."""
        for m in self.modules():
            if isinstance(m, Conv):
                yield m.conv, m.act
            elif isinstance(m, RepConv) and m.rbr_reparam is not None:
                yield m.rbr_reparam, m.act
            elif isinstance(m, IDetect) and m.fused:
                yield from ((conv, None) for conv in m.m)
            elif isinstance(m, CBLinear):
                yield m.conv, None
