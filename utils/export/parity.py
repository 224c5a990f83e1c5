"""Parity of an exported detector with the PyTorch model it came from, on inputs taking each route.

Routes are forced with the threshold where the export takes one (1 -> easy, 0 -> hard), or found
among probe images (noise, flat grey levels, gradients) on either side of a built-in threshold.
A batched export is also checked on a mixed batch. The score is max |export - PyTorch| over the
predictions and φ; a route taken differently, or a different number of end-to-end detections,
scores infinity. End-to-end detections are compared as sets (each to its closest counterpart).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from models.dynamic import DyOutput
from utils.export.exporters import example_images
from utils.export.spec import ExportOptions
from utils.inference.nms import non_max_suppression
from utils.torch_utils import full_fp32


class Case(NamedTuple):
    name: str
    images: torch.Tensor | None
    threshold: float | None


def probe_images(opt: ExportOptions, n: int = 8, seed: int = 0) -> torch.Tensor:
    """Varied inputs: uniform noise, flat grey levels and gradients (``n`` >= 4)."""
    g = torch.Generator().manual_seed(seed)
    h, w = opt.img_size
    across, down = torch.linspace(0, 1, w).expand(3, h, w), torch.linspace(1, 0, h)[:, None].expand(3, h, w)
    fixed = [torch.zeros(3, h, w), torch.ones(3, h, w), across, down]
    noise = [torch.rand(3, h, w, generator=g) * s for s in torch.linspace(1.0, 0.3, max(n - len(fixed), 0))]
    return torch.stack(fixed + noise)[:n]


def route_cases(model: torch.nn.Module, opt: ExportOptions, threshold_free: bool) -> list[Case]:
    """Inputs covering each route of the export (and a mixed batch for batched exports)."""
    if not model.is_dynamic or opt.route != "both":
        return [Case(opt.route if model.is_dynamic else "all", example_images(opt), None)]
    n = 2 if opt.dynamic_batch else opt.batch_size
    pool = probe_images(opt)
    with torch.no_grad():
        phi = model.difficulty(pool.to(next(model.parameters()).device)).cpu()
    if threshold_free:
        x = example_images(opt)
        cases, thr = [Case("easy", x, 1.0), Case("hard", x, 0.0)], _widest_gap(phi)
    else:
        thr = opt.threshold
        cases = [Case(name, None if i is None else pool[i].expand(n, -1, -1, -1), None)
                 for name, i in zip(("easy", "hard"), _farthest(phi, thr))]
    if opt.batched:
        easy, hard = _farthest(phi, thr) if thr is not None else (None, None)
        n_mixed = max(n, 3) if opt.dynamic_batch else n
        images = None if easy is None or hard is None else pool[[(hard, easy)[i % 2] for i in range(n_mixed)]]
        cases.append(Case("mixed", images, thr if threshold_free else None))
    return cases


def _farthest(phi: torch.Tensor, thr: float, margin: float = 1e-4) -> tuple[int | None, int | None]:
    """Indices of the easy and the hard image farthest from ``thr`` (None: none beyond ``margin``,
    where the export's φ could round to the other side)."""
    gap = phi - thr
    easy, hard = int(gap.argmin()), int(gap.argmax())
    return (easy if gap[easy] < -margin else None), (hard if gap[hard] > margin else None)


def _widest_gap(phi: torch.Tensor) -> float | None:
    """A threshold in the middle of the widest gap between sorted φ (None if all are equal)."""
    s = phi.sort().values
    if len(s) < 2 or float(s[-1] - s[0]) <= 0:
        return None
    i = int((s[1:] - s[:-1]).argmax())
    return float(s[i] + s[i + 1]) / 2


def reference(model: torch.nn.Module, case: Case, opt: ExportOptions, end2end: bool):
    """What the PyTorch model gives for ``case``, shaped like the export's output."""
    x = case.images.to(next(model.parameters()).device)
    with torch.no_grad():
        if not model.is_dynamic:
            out = model(x)
        elif opt.route != "both":
            out = model(x, threshold=1.0 if opt.route == "easy" else 0.0).pred
        else:
            out = model(x, threshold=opt.threshold if case.threshold is None else case.threshold)
    if not end2end:
        return out
    nms = {"conf_thres": opt.conf_thres, "iou_thres": opt.iou_thres, "max_det": opt.topk_all, "multi_label": True}
    if isinstance(out, DyOutput):
        return out._replace(pred=non_max_suppression(out.pred, **nms))
    return non_max_suppression(out, **nms)


def difference(got, ref) -> float:
    """max |got - ref| / max(1, |ref|) over predictions (or detections) and φ; inf on a structural
    mismatch. Scores and φ (<= 1) are compared absolutely, pixel coordinates relatively: fp32
    kernels that sum in another order (another batch size, another runtime) move a 500 px
    coordinate by a few 1e-3 px, which is no difference in a detection."""
    if isinstance(ref, DyOutput):
        if not torch.equal(got.hard.cpu(), ref.hard.cpu()):
            return math.inf
        return max(difference(got.pred, ref.pred), difference(got.phi, ref.phi))
    if isinstance(ref, list):
        if len(got) != len(ref) or any(a.shape != b.shape for a, b in zip(got, ref)):
            return math.inf
        return max([_matched_difference(a, b) for a, b in zip(got, ref) if b.numel()], default=0.0)
    if got.shape != ref.shape:
        return math.inf
    return float(_scaled(got.float().cpu(), ref.float().cpu()).max()) if ref.numel() else 0.0


def _scaled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| / max(1, |b|), broadcasting."""
    return (a - b).abs() / b.abs().clamp(min=1.0)


def _matched_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest distance from a detection to its closest counterpart, both ways (order-free:
    detections of nearly equal score may come out in either order)."""
    d = _scaled(a.float().cpu()[:, None], b.float().cpu()[None]).amax(-1)
    return float(max(d.min(1).values.max(), d.min(0).values.max()))


def parity(backend: Callable, model: torch.nn.Module, opt: ExportOptions, threshold_free: bool,
           end2end: bool = False) -> dict[str, float | None]:
    """max |backend - PyTorch| per route (None: not reached); ``backend(x, threshold=None)`` calls
    the export, ``threshold_free`` says whether it takes a threshold."""
    diffs = {}
    with full_fp32():  # a CUDA model's reference without TF32 rounding
        for case in route_cases(model, opt, threshold_free):
            diffs[case.name] = _case_difference(backend, model, opt, end2end, case)
    return diffs


def _case_difference(backend: Callable, model: torch.nn.Module, opt: ExportOptions, end2end: bool,
                     case: Case) -> float | None:
    if case.images is None:  # no probe image takes this route
        return None
    got = backend(case.images, threshold=case.threshold) if model.is_dynamic and opt.route == "both" \
        else backend(case.images)
    return difference(got, reference(model, case, opt, end2end))


class ScriptBackend:
    """A loaded TorchScript export called like the PyTorch model (DyOutput for routed ones)."""

    def __init__(self, module: torch.jit.ScriptModule, routed: bool, single_route: bool) -> None:
        self.module, self.routed, self.single_route = module, routed, single_route

    def __call__(self, x: torch.Tensor, threshold: float | None = None):
        with torch.no_grad():
            if self.routed:
                return DyOutput(*self.module(x, threshold))
            out = self.module(x)
        return out[0] if self.single_route else out
