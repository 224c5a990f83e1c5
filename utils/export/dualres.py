"""DualRes exports: the router, then one conditional between the two input resolutions.

The ONNX graph runs the resolution router on the images, then one ``If``: the high route runs
the detector on the full input, the low route downsamples it, runs the same detector and scales
its boxes back to input pixels (rows padded to N_high with zero objectness), both exactly as
:class:`models.dualres.DualResModel`. The detector is traced once per input size; its weights,
alike in both traces, end up once in the outer graph and both branches read them
(:func:`utils.export.shared_weights.share_duplicates`, run on every exported model). A batch
other than a static 1 routes per image, as the Dy export does
(:func:`utils.export.onnx_graph.route_batched`). Routes keep the Dy names: easy = low
resolution, hard = high.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from models.dualres import DualResModel
from models.dualres_export import DualResRoute, DualResStage1
from models.export_wrappers import ListInput, Routed
from utils.export.onnx_graph import (
    IMAGES,
    Builder,
    route_batched,
    route_single,
    threshold_mask,
    trace_stage,
)

if TYPE_CHECKING:
    from utils.export.spec import ExportOptions


def is_dualres(model: torch.nn.Module) -> bool:
    return isinstance(model, DualResModel)


def dualres_routed(b: Builder, model: DualResModel, x: torch.Tensor, opt: ExportOptions) -> tuple:
    """The router inline, then the resolution choice; returns (pred, phi, hard, pred shape) names."""
    dyn = opt.batched  # subsets of a batch have any size
    router = trace_stage(model.router, (x,), "router", opt.opset, opt.dynamic_batch)
    low = trace_stage(DualResRoute(model, "low"), (x,), "low", opt.opset, dyn)
    high = trace_stage(DualResRoute(model, "high"), (x,), "high", opt.opset, dyn)
    phi = b.inline(router, [IMAGES], "router")[0]
    hard = threshold_mask(b, phi, None if opt.thres_input else opt.threshold)
    shape = [opt.batch_dim, model.n_predictions(opt.img_size), int(model.heads[-1].no)]
    route = route_batched if opt.batched else route_single
    pred = route(b, hard, low, high, [IMAGES], [IMAGES], shape, tags=("low", "high"))
    return pred, phi, hard, shape


def dualres_script(model: DualResModel, x: torch.Tensor, threshold: float) -> torch.jit.ScriptModule:
    """Traced router and resolutions under the scripted per-image routing of the Dy export:
    ``m(x, threshold=None) -> (pred, phi, hard)``."""
    stage1 = torch.jit.trace(DualResStage1(model).eval(), (x,), check_trace=False)
    low, high = (torch.jit.trace(ListInput(DualResRoute(model, r)).eval(), ([x],), check_trace=False)
                 for r in ("low", "high"))
    return torch.jit.script(Routed(stage1, low, high, [0], [0], threshold))


def dualres_metadata(model: DualResModel, opt: ExportOptions) -> dict:
    """What a backend needs to describe the routes: their names and the low input size."""
    return {"kind": "dualres", "route_names": list(model.route_names),
            "dualres": {"scale": model.scale, "low_size": list(model.low_size(opt.img_size)),
                        "inner_threshold": model.inner_threshold}}
