"""Dynamic detector of DynamicDet (paper Sec. 3.1-3.2): two cascaded detectors and a router.

Parameter groups follow the official release: ``model_b`` (backbone 1), ``model_b2`` (the
CBLinear projections, then backbone 2 with CBFuse layers), ``model_h`` / ``model_h2`` (neck and
head of detector 1 / 2) and ``router``. Routing is per image: in one batch, easy images use head 1
only, hard images backbone 2 and head 2 only, and results come back in input order.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from models.base import DetectorBase
from models.graph import inputs_of, release_schedule, run_layers, wire
from models.link import CBFuse, CBLinear
from models.parse import IMAGE, LayerSpec, build_layers, read_specs
from models.route import route_groups, route_mask
from models.router import AdaptiveRouter


class DyOutput(NamedTuple):
    """Inference output: decoded predictions, difficulty φ and route (True = hard) per image."""

    pred: torch.Tensor
    phi: torch.Tensor
    hard: torch.Tensor


class DyTrainOutput(NamedTuple):
    """Training output: raw maps of both detectors and φ for every image."""

    p1: list
    p2: list
    phi: torch.Tensor


class DyBothOutput(NamedTuple):
    """Both detectors' decoded predictions for every image, and φ (for sweeps and scoring)."""

    pred1: torch.Tensor
    pred2: torch.Tensor
    phi: torch.Tensor


class DyModel(DetectorBase):
    """Dy-YOLOv7 family model built from a config with a ``dynamic`` section."""

    is_dynamic = True
    route_names = ("easy", "hard")  # detector 1 only / both detectors

    def __init__(self, cfg: dict, names: list[str] | None = None) -> None:
        super().__init__(cfg, names)
        dyn = cfg["dynamic"]
        specs = read_specs(cfg)
        self.n_backbone = len(cfg["backbone"])
        self.threshold = float(dyn.get("threshold", 0.5))
        layers1, ch, _ = build_layers(specs, cfg)
        layers2, _, _ = build_layers(specs, cfg)
        link = dyn["link"]
        self._check_link(link, dyn["router"])
        self._build_detector1(specs, layers1)
        self._build_detector2(specs, layers2, ch, link)
        router = dyn["router"]
        self.router = AdaptiveRouter([ch[i] for i in router["inputs"]], int(router.get("reduction", 4)))
        self._router_pos = [i + 1 for i in router["inputs"]]
        self._schedule()
        self._init_weights()

    # ---- construction -------------------------------------------------------------------
    def _check_link(self, link: dict, router: dict) -> None:
        n = self.n_backbone
        for key, values in (("link.sources", link["sources"]), ("link.targets", link["targets"]),
                            ("router.inputs", router["inputs"])):
            if any(not 0 <= v < n for v in values):
                raise ValueError(f"dynamic config: {key} {values} must index backbone layers 0..{n - 1}")
        if len(link["sources"]) != len(link["targets"]):
            raise ValueError("dynamic config: link.sources and link.targets differ in length")
        if min(link["targets"]) < link.get("start", 0):
            raise ValueError("dynamic config: a link target precedes link.start")

    def _build_detector1(self, specs: list[LayerSpec], layers: list[nn.Module]) -> None:
        n = self.n_backbone
        for m, s in zip(layers, specs):
            wire(m, [j + 1 for j in s.inputs], s.multi_input)  # 0 = image, 1..n = backbone, then head
        self.model_b = nn.ModuleList(layers[:n])
        self.model_h = nn.ModuleList(layers[n:])

    def _build_detector2(self, specs: list[LayerSpec], layers: list[nn.Module], ch: dict[int, int],
                         link: dict) -> None:
        n, start = self.n_backbone, int(link.get("start", 0))
        sources, targets = list(link["sources"]), list(link["targets"])
        blocks: list[nn.Module] = []
        for k, src in enumerate(sources):
            blocks.append(wire(CBLinear(ch[src], [ch[t] for t in targets[:k + 1]]), [src + 1], False))
        self.b2_index: dict[int, int] = {}
        out_index: dict[int, int] = {}  # backbone layer -> model_b2 index of its (fused) output
        for i in range(start, n):
            self.b2_index[i] = out_index[i] = len(blocks)
            blocks.append(layers[i])
            if i in targets:
                level = targets.index(i)
                proj = [n + 1 + k for k in range(level, len(sources))]
                out_index[i] = len(blocks)
                blocks.append(wire(CBFuse(level), proj + [n + 1 + self.b2_index[i]], True))
        first_head = n + 1 + len(blocks)

        def position(j: int) -> int:
            if j == IMAGE:
                return 0
            if j < start:
                return j + 1  # shared with backbone 1 (e.g. the W6 ReOrg stem)
            if j < n:
                return n + 1 + out_index[j]
            return first_head + j - n

        for i in range(start, len(specs)):
            wire(layers[i], [position(j) for j in specs[i].inputs], specs[i].multi_input)
        self.model_b2 = nn.ModuleList(blocks)
        self.model_h2 = nn.ModuleList(layers[n:])

    def _schedule(self) -> None:
        """Which features each stage must keep for later stages, and release plans."""
        n = self.n_backbone
        later = set(self._router_pos)
        for m in list(self.model_h) + list(self.model_b2) + list(self.model_h2):
            f = m.f if isinstance(m.f, list) else [m.f]
            later.update(p for p in f if p <= n)
        self._rel_b1 = release_schedule(self.model_b, 1, keep=later)
        self._rel_h1 = release_schedule(self.model_h, n + 1)
        self._rel_b2 = release_schedule(self.model_b2, n + 1, keep=self._h2_needs())
        self._rel_h2 = release_schedule(self.model_h2, n + 1 + len(self.model_b2))
        self._reads1 = self._backbone1_reads(self.model_h)
        self._reads2 = self._backbone1_reads(list(self.model_b2) + list(self.model_h2))

    def _backbone1_reads(self, layers) -> set[int]:
        """Feature-list positions of backbone 1 (and the image) that ``layers`` read."""
        return {p for m in layers for p in inputs_of(m) if p <= self.n_backbone}

    def _h2_needs(self) -> set[int]:
        needs = set()
        for m in self.model_h2:
            needs.update(m.f if isinstance(m.f, list) else [m.f])
        return needs

    # ---- stages --------------------------------------------------------------------------
    def backbone1(self, x: torch.Tensor) -> tuple[list, torch.Tensor]:
        """Features of backbone 1 (feature list) and the router's φ for every image."""
        feats = [x]
        run_layers(self.model_b, feats, None if self.training else self._rel_b1)
        phi = self.router(self.router_inputs(feats))
        return feats, phi

    def router_inputs(self, feats: list) -> list[torch.Tensor]:
        """The backbone-1 features the router reads, from :meth:`backbone1`'s feature list."""
        return [feats[p] for p in self._router_pos]

    def detector1(self, feats: list):
        return run_layers(self.model_h, list(feats), None if self.training else self._rel_h1)

    def detector2(self, feats: list):
        feats = list(feats)
        run_layers(self.model_b2, feats, None if self.training else self._rel_b2)
        return run_layers(self.model_h2, feats, None if self.training else self._rel_h2)

    # ---- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, threshold: float | None = None):
        """Training: DyTrainOutput (both detectors on every image). Inference: DyOutput."""
        feats, phi = self.backbone1(x)
        if self.training:
            return DyTrainOutput(self.detector1(feats), self.detector2(feats), phi)
        hard = route_mask(phi, self.threshold if threshold is None else float(threshold))
        return DyOutput(self._routed(feats, hard), phi, hard)

    def forward_both(self, x: torch.Tensor) -> DyBothOutput:
        """Both detectors' decoded predictions for every image (inference mode only)."""
        feats, phi = self.backbone1(x)
        return DyBothOutput(self.detector1(feats), self.detector2(feats), phi)

    def difficulty(self, x: torch.Tensor) -> torch.Tensor:
        """φ only: backbone 1 and the router."""
        return self.backbone1(x)[1]

    def _routed(self, feats: list, hard: torch.Tensor) -> torch.Tensor:
        """Each image through its route; a mixed batch consumes (empties) ``feats``."""
        easy_idx, hard_idx = route_groups(hard)
        if hard_idx.numel() == 0:
            return self.detector1(feats)
        if easy_idx.numel() == 0:
            return self.detector2(feats)
        feats_easy = _subset(feats, easy_idx, self._reads1)
        feats_hard = _subset(feats, hard_idx, self._reads2)
        feats.clear()  # the whole batch's features are not needed any more: free them before the heads run
        pred_easy = self.detector1(feats_easy)
        del feats_easy
        pred_hard = self.detector2(feats_hard)
        out = pred_easy.new_empty((hard.numel(), *pred_easy.shape[1:]))
        out.index_copy_(0, easy_idx, pred_easy)
        out.index_copy_(0, hard_idx, pred_hard)
        return out


def _subset(feats: list, idx: torch.Tensor, reads: set[int]) -> list:
    """The feature list for the images ``idx``: only positions in ``reads``, memory format kept."""
    return [f[idx] if i in reads and isinstance(f, torch.Tensor) else None for i, f in enumerate(feats)]
