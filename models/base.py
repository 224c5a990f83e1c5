"""What plain and dynamic detectors share: config, class names, fusion, initialisation."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.head import IDetect


class DetectorBase(nn.Module):
    """Base class of YOLOv7-family detectors built from a config dict."""

    is_dynamic = False

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
