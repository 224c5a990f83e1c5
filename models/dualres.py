"""DualRes: one trained detector run at two input resolutions, chosen per image by a router.

A :class:`DualResModel` wraps any detector of this repository (plain, or a Dy model run at a
fixed inner threshold, e.g. 0.0 = always its detector 2) and a
:class:`models.resolution_router.ResolutionRouter`. Both resolutions share the detector's
weights. Per image, φ = router score; φ > threshold runs the detector on the full input
("high", the hard route), otherwise on the input downsampled by ``scale`` ("low", the easy
route). The low size is each side × scale rounded to a multiple of the detector's largest
stride; downsampling is :func:`models.resize.resize` (at scale 0.5 exactly bilinear, i.e. the
2 x 2 average; ONNX-exportable).

Outputs follow the Dy models' conventions (``DyOutput``, ``DyBothOutput``, ``models.route``),
so the Predictor, NMS, the calibration table and the accuracy-speed sweep work unchanged: every
prediction tensor is (b, N_high, 5 + nc) in the *input's* pixels — low-resolution boxes are
scaled back, and the low route's rows are padded up to N_high with all-zero rows (objectness
0, never above any confidence threshold). The output shape therefore depends on the input size
only, whatever the route, and each image's result equals running it alone.

The detector is frozen: its parameters never require gradients and it stays in eval mode
(BatchNorm statistics fixed) even in ``train()``; only the router trains.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.dynamic import DyBothOutput, DyOutput
from models.resize import resize
from models.resolution_router import ResolutionRouter
from models.route import route_groups, route_mask


def low_side(side: int, scale: float, stride: int) -> int:
    """``side * scale`` rounded half up to a multiple of ``stride`` (at least one stride)."""
    return max(stride, int(math.floor(side * scale / stride + 0.5)) * stride)


class DualResModel(nn.Module):
    """Router + frozen detector at two resolutions; see the module docstring."""

    is_dynamic = True
    route_names = ("low", "high")  # the two input resolutions
    end2end = False
    threshold_input = True

    def __init__(self, detector: nn.Module, router: ResolutionRouter, scale: float = 0.5,
                 threshold: float = 0.5, inner_threshold: float | None = None) -> None:
        super().__init__()
        if not 0 < float(scale) < 1:
            raise ValueError(f"DualRes scale must be in (0, 1), got {scale}")
        self.detector, self.router = detector, router
        self.scale, self.threshold = float(scale), float(threshold)
        if detector.is_dynamic:
            self.inner_threshold = 0.0 if inner_threshold is None else float(inner_threshold)
        elif inner_threshold is not None:
            raise ValueError("inner_threshold applies to a dynamic (Dy) detector only")
        else:
            self.inner_threshold = None
        for p in self.detector.parameters():
            p.requires_grad_(False)
        self.train()  # nn.Module's default mode for the router; the detector goes to eval

    # ---- description --------------------------------------------------------------------
    @property
    def cfg(self) -> dict:
        """Plain dict that rebuilds this model (``build_model(cfg)``); ``nc`` and ``name`` at top level."""
        det = dict(self.detector.cfg)
        return {"name": f"dualres-{det.get('name', 'detector')}", "nc": int(det["nc"]),
                "dualres": {"router": self.router.cfg, "scale": self.scale, "threshold": self.threshold,
                            "inner_threshold": self.inner_threshold},
                "detector": det}

    @classmethod
    def from_cfg(cls, cfg: dict, detector: nn.Module) -> "DualResModel":
        """A freshly initialised router from :attr:`cfg` around ``detector`` (built from
        ``cfg['detector']`` by :func:`models.yolo.build_model`); load the checkpoint's state_dict after."""
        spec = dict(cfg["dualres"])
        return cls(detector, ResolutionRouter(**spec["router"]), scale=spec["scale"],
                   threshold=spec.get("threshold", 0.5), inner_threshold=spec.get("inner_threshold"))

    @property
    def names(self) -> list[str]:
        return self.detector.names

    @property
    def nc(self) -> int:
        return self.detector.nc

    @property
    def stride(self) -> torch.Tensor:
        return self.detector.stride

    @property
    def heads(self) -> tuple[nn.Module, ...]:
        return self.detector.heads

    @property
    def fused(self) -> bool:
        return bool(self.detector.fused or self.router.fused)

    # ---- modes and inference preparation -----------------------------------------------
    def train(self, mode: bool = True) -> "DualResModel":
        """Router to ``mode``; the detector always stays in eval mode (frozen)."""
        self.training = bool(mode)
        self.router.train(mode)
        self.detector.eval()
        return self

    def fuse(self) -> "DualResModel":
        """Fuse detector and router for inference (in place)."""
        self.detector.fuse()
        self.router.fuse()
        return self.eval()

    def optimize_for_inference(self, keep_freed_memory: bool = False) -> "DualResModel":
        """Fuse, and the detector's CPU fast path (see ``DetectorBase.optimize_for_inference``)."""
        self.router.fuse()
        self.detector.optimize_for_inference(keep_freed_memory)
        return self.eval()

    # ---- geometry -----------------------------------------------------------------------
    def max_stride(self) -> int:
        return int(self.detector.stride.max())

    def low_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Low-resolution (h, w) of a (h, w) input."""
        s = self.max_stride()
        return low_side(int(hw[0]), self.scale, s), low_side(int(hw[1]), self.scale, s)

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """The low-resolution input the detector sees on the low route."""
        return resize(x, self.low_size(tuple(x.shape[-2:])))

    def n_predictions(self, hw: tuple[int, int]) -> int:
        """Rows N of the detector's decoded output at input size ``hw``."""
        return sum(h.na * (int(hw[0]) // int(s)) * (int(hw[1]) // int(s))
                   for h in self.heads[-1:] for s in h.stride.tolist())

    def _check_input(self, x: torch.Tensor) -> None:
        s = self.max_stride()
        if x.dim() != 4 or x.shape[-2] % s or x.shape[-1] % s:
            raise ValueError(f"DualRes needs (b, 3, h, w) inputs with h, w multiples of the stride {s}, "
                             f"got {tuple(x.shape)}")

    # ---- routes -------------------------------------------------------------------------
    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen detector's decoded predictions on ``x`` (a Dy detector at its inner threshold)."""
        if self.inner_threshold is None:
            return self.detector(x)
        return self.detector(x, threshold=self.inner_threshold).pred

    def high(self, x: torch.Tensor) -> torch.Tensor:
        """High route: the detector on the full input."""
        return self.detect(x)

    def low(self, x: torch.Tensor) -> torch.Tensor:
        """Low route: the detector on the downsampled input, boxes in input pixels, padded to N_high."""
        h, w = x.shape[-2:]
        xl = self.downsample(x)
        pred = self.detect(xl)
        sx, sy = w / xl.shape[-1], h / xl.shape[-2]
        pred = pred * pred.new_tensor([sx, sy, sx, sy] + [1.0] * (pred.shape[-1] - 4))
        out = pred.new_zeros((pred.shape[0], self.n_predictions((h, w)), pred.shape[-1]))
        out[:, :pred.shape[1]] = pred
        return out

    def difficulty(self, x: torch.Tensor) -> torch.Tensor:
        """φ per image (the router only)."""
        return self.router(x)

    def forward(self, x: torch.Tensor, threshold: float | None = None) -> DyOutput:
        """DyOutput(pred, phi, hard): hard = high resolution (φ > threshold; <= 0 all, >= 1 none)."""
        self._check_input(x)
        phi = self.difficulty(x)
        hard = route_mask(phi, self.threshold if threshold is None else float(threshold))
        return DyOutput(self._routed(x, hard), phi, hard)

    def forward_both(self, x: torch.Tensor) -> DyBothOutput:
        """Both routes on every image: pred1 = low, pred2 = high (for sweeps and scoring)."""
        self._check_input(x)
        return DyBothOutput(self.low(x), self.high(x), self.difficulty(x))

    def _routed(self, x: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        """Each image through its route; only the groups present run, results in input order."""
        low_idx, hard_idx = route_groups(hard)
        if low_idx.numel() == 0:
            return self.high(x)
        if hard_idx.numel() == 0:
            return self.low(x)
        pred_high = self.high(x[hard_idx])
        pred_low = self.low(x[low_idx])
        out = pred_high.new_empty((hard.numel(), *pred_high.shape[1:]))
        out.index_copy_(0, hard_idx, pred_high)
        out.index_copy_(0, low_idx, pred_low)
        return out
