"""Traceable pieces of a dynamic detector for export (ONNX, TorchScript).

A dynamic model is cut into three stages with tensor-only signatures, so each can be traced on
its own and the route put back around them as a single conditional:

* :class:`Stage1` — backbone 1 and the router: ``x -> (phi, *feats)``;
* :class:`Head1` — neck and head of detector 1: ``*feats -> pred``;
* :class:`Detector2` — backbone 2 (with the composite link), neck and head of detector 2.

``feats`` are the backbone-1 features the later stages read (:func:`stage_positions`); each
detector takes its own subset (:func:`stage_inputs`). Every stage holds only the layers it runs,
so a trace never visits the rest of the model. :class:`SingleRoute` is one fixed route end to
end (the static baseline export) and :class:`Routed` the per-image routing around traced stages
(TorchScript).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.graph import inputs_of, run_layers
from models.route import route_mask


def _needs(layers: Sequence[nn.Module], n_backbone: int) -> set[int]:
    """Backbone-1 feature-list positions (0 = image, 1..n) read by ``layers``."""
    return {p for m in layers for p in inputs_of(m) if p <= n_backbone}


def stage_positions(model: nn.Module) -> tuple[list[int], list[int], list[int]]:
    """Feature positions: (Stage1 outputs, read by detector 1, read by detector 2), sorted."""
    n = model.n_backbone
    head1 = sorted(_needs(model.model_h, n))
    det2 = sorted(_needs(list(model.model_b2) + list(model.model_h2), n))
    return sorted(set(head1) | set(det2)), head1, det2


def stage_inputs(model: nn.Module) -> tuple[list[int], list[int]]:
    """Indices into Stage1's feature outputs of detector 1's and detector 2's inputs."""
    every, head1, det2 = stage_positions(model)
    return [every.index(p) for p in head1], [every.index(p) for p in det2]


class Stage1(nn.Module):
    """Backbone 1 and the router of a dynamic model: ``x -> (phi, *feats)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model_b, self.router = model.model_b, model.router
        self.router_pos = [i + 1 for i in model.cfg["dynamic"]["router"]["inputs"]]
        self.positions = stage_positions(model)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = [x]
        run_layers(self.model_b, feats)
        phi = self.router([feats[p] for p in self.router_pos])
        return (phi, *(feats[p] for p in self.positions))


class _Detector(nn.Module):
    """Layers run after backbone 1, fed with the backbone-1 features at ``positions``."""

    def __init__(self, stages: Sequence[nn.ModuleList], n_backbone: int, positions: list[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.n_backbone, self.positions = n_backbone, positions

    def forward(self, *feats: torch.Tensor) -> torch.Tensor:
        full: list = [None] * (self.n_backbone + 1)
        for p, f in zip(self.positions, feats):
            full[p] = f
        for layers in self.stages:
            x = run_layers(layers, full)
        return x


class Head1(_Detector):
    """Detector 1 after backbone 1: its neck and head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__([model.model_h], model.n_backbone, stage_positions(model)[1])


class Detector2(_Detector):
    """Detector 2 after backbone 1: backbone 2 with the composite link, neck and head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__([model.model_b2, model.model_h2], model.n_backbone, stage_positions(model)[2])


class SingleRoute(nn.Module):
    """A dynamic model with its route fixed: ``x -> (pred, phi)`` (the router still runs)."""

    def __init__(self, model: nn.Module, route: str) -> None:
        super().__init__()
        if route not in ("easy", "hard"):
            raise ValueError(f"route must be 'easy' or 'hard', not {route!r}")
        self.stage1 = Stage1(model)
        self.detector = Head1(model) if route == "easy" else Detector2(model)
        self.index = stage_inputs(model)[0 if route == "easy" else 1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.stage1(x)
        feats = out[1:]
        return self.detector(*(feats[i] for i in self.index)), out[0]


class Routed(nn.Module):
    """Per-image routing around traced stages (scriptable): ``(x, threshold) -> (pred, phi, hard)``.

    The detectors take one list of tensors (see :class:`ListInput`); ``index1`` / ``index2`` pick
    their inputs from the stage-1 features. Semantics as :meth:`models.dynamic.DyModel.forward`.
    """

    def __init__(self, stage1: nn.Module, head1: nn.Module, det2: nn.Module, index1: list[int],
                 index2: list[int], threshold: float) -> None:
        super().__init__()
        self.stage1, self.head1, self.det2 = stage1, head1, det2
        self.index1, self.index2 = index1, index2
        self.threshold = float(threshold)

    def _pick(self, feats: list[torch.Tensor], index: list[int], rows: torch.Tensor) -> list[torch.Tensor]:
        return [feats[i].index_select(0, rows) for i in index]

    def forward(self, x: torch.Tensor, threshold: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        thr = self.threshold if threshold is None else threshold
        out = self.stage1(x)
        phi, feats = out[0], list(out[1:])
        hard = route_mask(phi, thr)
        hard_idx, easy_idx = hard.nonzero().flatten(), (~hard).nonzero().flatten()
        if easy_idx.numel() == 0:
            return self.det2([feats[i] for i in self.index2]), phi, hard
        if hard_idx.numel() == 0:
            return self.head1([feats[i] for i in self.index1]), phi, hard
        pred_e = self.head1(self._pick(feats, self.index1, easy_idx))
        pred_h = self.det2(self._pick(feats, self.index2, hard_idx))
        order = torch.cat([easy_idx, hard_idx]).argsort()
        return torch.cat([pred_e, pred_h]).index_select(0, order), phi, hard


class ListInput(nn.Module):
    """Adapts a ``*tensors`` stage to one list argument (what a scripted caller can pass)."""

    def __init__(self, stage: nn.Module) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.stage(*feats)
