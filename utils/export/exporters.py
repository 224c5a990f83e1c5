"""Detector -> ONNX graph (route in the graph, or one fixed route) and TorchScript module.

The dynamic ONNX graph runs backbone 1 and the router, then one conditional: detector 1's neck
and head for an easy image, backbone 2 and detector 2 for a hard one. A graph with a static
batch of 1 holds a single ``If``; any other batch routes per image (easy and hard subsets, each
detector run only when its subset is not empty, rows merged back in input order). DualRes
models get the same structure with the router first and the two input resolutions as the routes
(:mod:`utils.export.dualres`).
"""
from __future__ import annotations

import datetime
import warnings
from dataclasses import asdict
from pathlib import Path

import onnx
import torch
from onnx import TensorProto

from models.dualres_export import DualResSingleRoute
from models.export_wrappers import (
    Detector2,
    Head1,
    ListInput,
    Routed,
    SingleRoute,
    Stage1,
    stage_inputs,
)
from utils.export.dualres import (
    dualres_metadata,
    dualres_routed,
    dualres_script,
    is_dualres,
)
from utils.export.onnx_graph import (
    IMAGES,
    THRESHOLD,
    Builder,
    finish,
    nms,
    route_batched,
    route_single,
    tensor_info,
    threshold_mask,
    trace_stage,
)
from utils.runtime.onnx_model import FORMAT
from utils.export.shared_weights import share_duplicates
from utils.export.spec import ExportOptions
from utils.io import atomic_write


def pred_shape(model: torch.nn.Module, hw: tuple[int, int]) -> tuple[int, int]:
    """(N, 5 + nc) of one image's decoded predictions at input size ``hw``."""
    if is_dualres(model):
        return model.n_predictions(hw), int(model.heads[-1].no)
    head = model.heads[0]
    cells = sum((hw[0] // int(s)) * (hw[1] // int(s)) for s in head.stride)
    return head.na * cells, head.no


def example_images(opt: ExportOptions, n: int | None = None, seed: int = 0) -> torch.Tensor:
    """Seeded uniform-noise inputs of the export's size (its batch, or 2 for a dynamic one)."""
    g = torch.Generator().manual_seed(seed)
    n = n or (2 if opt.dynamic_batch else opt.batch_size)
    return torch.rand(n, 3, *opt.img_size, generator=g)


# ---- ONNX -----------------------------------------------------------------------------------------
def onnx_graph(model: torch.nn.Module, opt: ExportOptions, metadata: dict) -> onnx.ModelProto:
    """The ONNX model of a fused, eval-mode ``model`` with ``metadata`` in metadata_props."""
    opt.check(model)
    x = example_images(opt).to(next(model.parameters()).device)
    b = Builder()
    images = tensor_info(IMAGES, TensorProto.FLOAT, [opt.batch_dim, 3, *opt.img_size])
    inputs, outputs = [images], {}
    if model.is_dynamic and opt.route == "both":
        pred, phi, hard, shape = (dualres_routed if is_dualres(model) else _routed)(b, model, x, opt)
        if opt.thres_input:
            inputs.append(tensor_info(THRESHOLD, TensorProto.FLOAT, []))
        outputs.update(phi=(phi, TensorProto.FLOAT, [opt.batch_dim]), hard=(hard, TensorProto.BOOL, [opt.batch_dim]))
    else:
        module = single_route(model, opt.route) if model.is_dynamic else model
        stage = trace_stage(module, (x,), "model", opt.opset, opt.dynamic_batch)
        names = b.inline(stage, [IMAGES], "model")
        pred, shape = names[0], [opt.batch_dim, *pred_shape(model, opt.img_size)]
        if model.is_dynamic:
            outputs["phi"] = (names[1], TensorProto.FLOAT, [opt.batch_dim])
    if opt.end2end:
        dets = nms(b, pred, model.nc, opt.conf_thres, opt.iou_thres, opt.topk_all)
        outputs = {"dets": (dets, TensorProto.FLOAT, [None, 7]), **outputs}
    else:
        outputs = {"pred": (pred, TensorProto.FLOAT, shape), **outputs}
    return share_duplicates(finish(b, inputs, outputs, opt.opset, metadata))


def _routed(b: Builder, model: torch.nn.Module, x: torch.Tensor, opt: ExportOptions) -> tuple:
    """Stage 1 inline, then the route; returns (pred, phi, hard, pred shape) names."""
    index1, index2 = stage_inputs(model)
    stage1_module = Stage1(model)
    with torch.no_grad():
        feats = stage1_module(x)[1:]
    dyn = opt.batched  # subsets of a batch have any size
    stage1 = trace_stage(stage1_module, (x,), "stage1", opt.opset, opt.dynamic_batch)
    head1 = trace_stage(Head1(model), tuple(feats[i] for i in index1), "head1", opt.opset, dyn)
    det2 = trace_stage(Detector2(model), tuple(feats[i] for i in index2), "det2", opt.opset, dyn)
    names = b.inline(stage1, [IMAGES], "stage1")
    phi, feats = names[0], names[1:]
    hard = threshold_mask(b, phi, None if opt.thres_input else opt.threshold)
    shape = [opt.batch_dim, *pred_shape(model, opt.img_size)]
    route = route_batched if opt.batched else route_single
    pred = route(b, hard, head1, det2, [feats[i] for i in index1], [feats[i] for i in index2], shape)
    return pred, phi, hard, shape


def single_route(model: torch.nn.Module, route: str) -> torch.nn.Module:
    """A dynamic model with its route fixed: ``x -> (pred, phi)``."""
    return DualResSingleRoute(model, route) if is_dualres(model) else SingleRoute(model, route)


def onnx_metadata(model: torch.nn.Module, opt: ExportOptions, info: dict, gflops: dict | None = None) -> dict:
    """What :class:`utils.runtime.onnx_model.OnnxModel` needs to behave like the PyTorch model."""
    routed = model.is_dynamic and opt.route == "both"
    nms_opts = {k: getattr(opt, k) for k in ("conf_thres", "iou_thres", "topk_all")} if opt.end2end else None
    kind = {"kind": "dy" if model.is_dynamic else "plain", "route_names": list(model.route_names)}
    if is_dualres(model):
        kind = dualres_metadata(model, opt)
    return {
        "format": FORMAT,
        **kind,
        "names": list(model.names),
        "stride": [float(s) for s in model.stride],
        "img_size": list(opt.img_size),
        "batch": None if opt.dynamic_batch else opt.batch_size,
        "dynamic": routed,
        "route": opt.route if model.is_dynamic else "all",
        "threshold": float(opt.threshold) if routed else None,
        "threshold_input": bool(routed and opt.thres_input),
        "thresholds": info.get("thresholds") or {},
        "end2end": nms_opts,
        "gflops": gflops or {},
        "export": {**asdict(opt), "source": str(info.get("path", "")), "torch": str(torch.__version__),
                   "onnx": onnx.__version__,
                   "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
    }


def simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Run onnxslim (or else onnxsim) on ``proto``, keeping its metadata.

    The result is kept only when it passes onnx.checker with full shape inference; otherwise a
    warning names the problem and the unsimplified graph is returned.
    """
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        import onnxslim
        out = onnxslim.slim(proto)
    except ImportError:
        try:
            import onnxsim
        except ImportError:
            raise RuntimeError("--simplify needs onnxslim or onnxsim: pip install onnxslim") from None
        out, ok = onnxsim.simplify(proto)
        if not ok:
            raise RuntimeError("onnxsim could not validate the simplified model")
    try:
        out = share_duplicates(out)  # onnxslim may copy an outer weight into each branch reading it
        onnx.checker.check_model(out, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        reason = str(e).strip().splitlines()[-1][:300]
        warnings.warn(f"--simplify gave an invalid graph, keeping the unsimplified one: {reason}", stacklevel=2)
        return proto
    del out.metadata_props[:]
    onnx.helper.set_model_props(out, props)
    return out


# ---- TorchScript ----------------------------------------------------------------------------------
def torchscript_module(model: torch.nn.Module, opt: ExportOptions) -> torch.jit.ScriptModule:
    """Traced stages and a scripted per-image router (``route='both'``), else one traced route.

    The routed module is called as ``m(x, threshold=None)`` -> (pred, phi, hard); a fixed route
    returns (pred, phi), a plain model pred.
    """
    opt.check(model)
    x = example_images(opt).to(next(model.parameters()).device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notices
        if not (model.is_dynamic and opt.route == "both"):
            module = single_route(model, opt.route) if model.is_dynamic else model
            return torch.jit.trace(module.eval(), (x,), check_trace=False)
        if is_dualres(model):
            return dualres_script(model, x, opt.threshold)
        index1, index2 = stage_inputs(model)
        stage1 = torch.jit.trace(Stage1(model).eval(), (x,), check_trace=False)
        feats = stage1(x)[1:]
        head1 = torch.jit.trace(ListInput(Head1(model)).eval(), ([feats[i] for i in index1],), check_trace=False)
        det2 = torch.jit.trace(ListInput(Detector2(model)).eval(), ([feats[i] for i in index2],), check_trace=False)
        return torch.jit.script(Routed(stage1, head1, det2, index1, index2, opt.threshold))


# ---- files ----------------------------------------------------------------------------------------
def save_onnx(proto: onnx.ModelProto, path: Path) -> Path:
    """Write ``proto`` atomically after ``onnx.checker`` (full check, shape inference) passes."""
    if proto.ByteSize() >= 2**31:
        raise ValueError("the ONNX model is over 2 GB; export a smaller model or fp16 weights")
    return atomic_write(path, lambda p: onnx.save(proto, str(p)),
                        lambda p: onnx.checker.check_model(str(p), full_check=True))
