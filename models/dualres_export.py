"""Traceable pieces of a :class:`models.dualres.DualResModel` for export (ONNX, TorchScript).

A DualRes model is cut into tensor-only stages, traced one by one; the resolution choice is then
put back around them as a single conditional:

* :class:`DualResStage1` — the router: ``x -> (phi, x)`` (the image is the later stages' input,
  so the stages fit the Dy exporter's ``(phi, *feats)`` convention);
* :class:`DualResRoute` — one resolution end to end: ``x -> pred`` (``low``: downsample, the
  detector, boxes scaled back to input pixels, rows padded to N_high; ``high``: the detector);
* :class:`DualResSingleRoute` — one fixed route and φ: ``x -> (pred, phi)`` (the static baseline).

Route names follow the Dy exports: ``easy`` is the low resolution, ``hard`` the high one.
"""
from __future__ import annotations

import torch
from torch import nn

from models.dualres import DualResModel

RESOLUTIONS = {"easy": "low", "hard": "high"}  # export route -> DualRes resolution


def resolution(route: str) -> str:
    """``'low'`` for the easy route, ``'high'`` for the hard one."""
    if route not in RESOLUTIONS:
        raise ValueError(f"route must be 'easy' or 'hard', not {route!r}")
    return RESOLUTIONS[route]


class DualResStage1(nn.Module):
    """The router of a DualRes model: ``x -> (phi, x)``."""

    def __init__(self, model: DualResModel) -> None:
        super().__init__()
        self.router = model.router

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.router(x), x


class DualResRoute(nn.Module):
    """One resolution of a DualRes model (``'low'`` or ``'high'``): ``x -> pred``, input pixels."""

    def __init__(self, model: DualResModel, which: str) -> None:
        super().__init__()
        if which not in ("low", "high"):
            raise ValueError(f"DualRes resolution must be 'low' or 'high', not {which!r}")
        self.model, self.which = model, which

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.low(x) if self.which == "low" else self.model.high(x)


class DualResSingleRoute(nn.Module):
    """A DualRes model with its route fixed: ``x -> (pred, phi)`` (the router still runs)."""

    def __init__(self, model: DualResModel, route: str) -> None:
        super().__init__()
        self.route = DualResRoute(model, resolution(route))
        self.router = model.router

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.route(x), self.router(x)
