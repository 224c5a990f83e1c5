"""Export a detector to ONNX (the route stays inside the graph) or TorchScript, then check parity.

    python export.py --weights best.pt --img-size 640                     # routed ONNX, threshold input
    python export.py --weights best.pt --route easy                       # static single-route ONNX
    python export.py --weights best.pt --dynamic-batch --end2end          # per-image routing + NMS in graph
    python export.py --weights dy-yolov7.pt --include onnx torchscript
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import onnx
import torch

from utils.weights.backends import is_onnx, load_model
from utils.routing.calibration import resolve_threshold
from utils.cli import script_main
from utils.export.parity import ScriptBackend, parity
from utils.export.exporters import (
    ExportOptions,
    onnx_graph,
    onnx_metadata,
    save_onnx,
    simplify,
    torchscript_module,
)
from models.flops import route_gflops
from utils.export.onnx_graph import DEFAULT_OPSET
from utils.export.onnx_model import OnnxModel
from utils.io import atomic_write

LOGGER = logging.getLogger("dydet.export")
FORMATS = ("onnx", "torchscript")


def run(weights: str | Path, cfg: str | None = None, img_size: int | list[int] = 640, batch_size: int = 1,
        dynamic_batch: bool = False, dy_thres: float | str | None = None, thres_input: bool = False,
        route: str = "both", end2end: bool = False, topk_all: int = 100, iou_thres: float = 0.45,
        conf_thres: float = 0.25, simplify: bool = False, include: tuple[str, ...] | list[str] = ("onnx",),
        opset: int = DEFAULT_OPSET, device: str = "cpu", output: str | Path | None = None,
        atol: float = 1e-3) -> dict:
    """Export ``weights`` in each ``include`` format, check it, and compare it with PyTorch.

    Returns ``{'onnx': path, 'torchscript': path, 'diff': {format: {route: max abs diff}},
    'threshold': float | None, 'options': ExportOptions}`` (formats not exported are absent).
    """
    include = _check_formats(include, end2end, simplify)
    if is_onnx(weights):
        raise ValueError(f"{weights} is already an ONNX export; pass the PyTorch weights")
    model, info = load_model(weights, cfg=cfg, device=device)
    model = model.float().fuse().eval()
    threshold, free = _threshold(model, info, dy_thres, thres_input, route)
    opt = ExportOptions(img_size=_hw(img_size), batch_size=batch_size, dynamic_batch=dynamic_batch, route=route,
                        threshold=threshold if threshold is not None else 0.5, thres_input=free, end2end=end2end,
                        topk_all=topk_all, iou_thres=iou_thres, conf_thres=conf_thres, opset=opset)
    opt.check(model)
    base = _output_base(output, info, opt)
    out = {"threshold": threshold, "options": opt, "diff": {}}
    if "onnx" in include:
        out["onnx"], out["diff"]["onnx"] = export_onnx(model, info, opt, base.with_suffix(".onnx"), simplify)
    if "torchscript" in include:
        out["torchscript"], out["diff"]["torchscript"] = export_torchscript(model, info, opt,
                                                                            base.with_suffix(".torchscript"))
    _check_parity(out["diff"], atol)
    return out


def export_onnx(model: torch.nn.Module, info: dict, opt: ExportOptions, path: Path,
                simplify_graph: bool = False) -> tuple[Path, dict[str, float | None]]:
    """Write the ONNX file (checked by onnx.checker) and compare ONNX Runtime with PyTorch."""
    t0 = time.perf_counter()
    proto = onnx_graph(model, opt, onnx_metadata(model, opt, info, _gflops(model, opt)))
    if simplify_graph:
        proto = simplify(proto)
    save_onnx(proto, path)
    print(f"ONNX: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s), onnx.checker passed")
    diffs = parity(OnnxModel(path), model, opt, threshold_free=opt.thres_input, end2end=opt.end2end)
    _report("max |ONNX Runtime - PyTorch|", diffs)
    return path, diffs


def export_torchscript(model: torch.nn.Module, info: dict, opt: ExportOptions,
                       path: Path) -> tuple[Path, dict[str, float | None]]:
    """Write the TorchScript file (metadata in the ``dydet.json`` extra file), reload it, compare."""
    t0 = time.perf_counter()
    module = torchscript_module(model, opt)
    extra = {"dydet.json": _script_metadata(model, opt, info)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        atomic_write(path, lambda p: torch.jit.save(module, str(p), _extra_files=extra))
        loaded = torch.jit.load(str(path), map_location="cpu")
    print(f"TorchScript: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    routed = model.is_dynamic and opt.route == "both"
    backend = ScriptBackend(loaded, routed, model.is_dynamic and not routed)
    diffs = parity(backend, model.cpu(), opt, threshold_free=True)
    _report("max |TorchScript - PyTorch|", diffs)
    return path, diffs


def _script_metadata(model: torch.nn.Module, opt: ExportOptions, info: dict) -> str:
    """The ONNX metadata, adjusted: a routed TorchScript module always takes the threshold."""
    meta = onnx_metadata(model, opt, info)
    meta.update(format="dydet-torchscript-v1", threshold_input=meta["dynamic"], end2end=None)
    return json.dumps(meta)


def _check_formats(include, end2end: bool, simplify_graph: bool) -> list[str]:
    include = [str(f).lower() for f in ([include] if isinstance(include, str) else include)]
    unknown = sorted(set(include) - set(FORMATS))
    if unknown or not include:
        raise ValueError(f"--include takes {' and/or '.join(FORMATS)}, got {include}")
    if (end2end or simplify_graph) and "onnx" not in include:
        raise ValueError("--end2end and --simplify apply to ONNX exports; add --include onnx")
    return include


def _threshold(model, info: dict, dy_thres, thres_input: bool, route: str) -> tuple[float | None, bool]:
    """(threshold, whether the graph takes it as an input)."""
    if not model.is_dynamic or route != "both":
        if dy_thres is not None or thres_input:
            raise ValueError("--dy-thres and --thres-input apply to a dynamic model exported with --route both")
        return None, False
    threshold, how = resolve_threshold(dy_thres, info.get("thresholds"), default=model.threshold)
    free = dy_thres is None or thres_input
    print(f"routing: {how}, {'a graph input' if free else 'built into the graph'}")
    return threshold, free


def _hw(img_size) -> tuple[int, int]:
    sizes = [int(s) for s in ([img_size] if isinstance(img_size, int) else img_size)]
    if len(sizes) not in (1, 2):
        raise ValueError(f"--img-size takes one or two numbers (h w), got {sizes}")
    return (sizes[0], sizes[-1])


def _output_base(output, info: dict, opt: ExportOptions) -> Path:
    """Output path without suffix: --output, else beside the weights (-easy/-hard, -end2end tags)."""
    if output:
        return Path(output)
    src = Path(info.get("path") or "model.pt")
    tags = [opt.route] if opt.route != "both" else []
    tags += ["end2end"] if opt.end2end else []
    return src.with_name("-".join([src.stem, *tags]) + ".pt")


def _gflops(model, opt: ExportOptions) -> dict[str, float]:
    h, w = opt.img_size
    try:
        return route_gflops(model, h) if h == w else {}
    except (RuntimeError, ValueError, TypeError, ImportError) as e:  # informative only
        LOGGER.warning("GFLOPs not stored: %s", e)
        return {}


def _report(title: str, diffs: dict[str, float | None]) -> None:
    parts = [f"{k} {'not reached by the probe images' if v is None else f'{v:.2e}'}" for k, v in diffs.items()]
    print(f"  {title}: {', '.join(parts)}")


def _check_parity(diffs: dict[str, dict], atol: float) -> None:
    for fmt, per_route in diffs.items():
        for route, d in per_route.items():
            if d is not None and not d <= atol:
                raise RuntimeError(f"{fmt} export differs from PyTorch by {d:.3g} > {atol:g} on the {route} route")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint (ours, official release or zoo name)")
    p.add_argument("--cfg", default=None, help="architecture for official checkpoints, e.g. dy-yolov7")
    p.add_argument("--img-size", nargs="+", type=int, default=[640], help="input size: one number or h w")
    p.add_argument("--batch-size", type=int, default=1, help="static batch size")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size, routed per image")
    p.add_argument("--dy-thres", default=None, help="threshold built into the graph: a number or pK (K%% hard)")
    p.add_argument("--thres-input", action="store_true", help="keep the threshold a graph input (--dy-thres default)")
    p.add_argument("--route", default="both", choices=["both", "easy", "hard"],
                   help="both: routed in the graph; easy/hard: a static single-route graph")
    p.add_argument("--end2end", action="store_true", help="NMS inside the ONNX graph (NonMaxSuppression)")
    p.add_argument("--topk-all", type=int, default=100, help="end2end: detections kept per image")
    p.add_argument("--iou-thres", type=float, default=0.45, help="end2end: NMS IoU threshold")
    p.add_argument("--conf-thres", type=float, default=0.25, help="end2end: score threshold")
    p.add_argument("--simplify", action="store_true", help="simplify with onnxslim (or onnxsim)")
    p.add_argument("--include", nargs="+", default=["onnx"], help="onnx and/or torchscript")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--device", default="cpu", help="cpu or a CUDA index for tracing")
    p.add_argument("--output", default=None, help="output path (suffix set per format)")
    p.add_argument("--atol", type=float, default=1e-3, help="parity tolerance (max abs difference)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return script_main(parse_args, run, argv, errors=(onnx.checker.ValidationError,))


if __name__ == "__main__":
    sys.exit(main())
