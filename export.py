"""Export a detector to ONNX (the route stays inside the graph) or TorchScript, then check parity.

    python export.py --weights best.pt                                    # routed ONNX, threshold input
    python export.py --weights best.pt --route easy                       # static single-route ONNX
    python export.py --weights best.pt --dynamic-batch --end2end          # per-image routing + NMS in graph
    python export.py --weights dy-yolov7.pt --include onnx torchscript
    python export.py --weights best.pt --include openvino --int8 --data pets.yaml   # OpenVINO fp32 + INT8
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import onnx

from utils.cli import script_main
from utils.defaults import PREDICT
from utils.export.onnx_graph import DEFAULT_OPSET
from utils.export.pipeline import FORMATS, export_model
from utils.export.spec import ExportOptions
from utils.options import make_options, option, parse_options
from utils.routing.policy import choose_threshold
from utils.weights.backends import is_onnx, load_model, settle_img_size


@dataclass
class Options:
    """export.py's options (flags: ``--img-size`` for ``img_size`` ...)."""

    weights: str = option(help="checkpoint (ours, official release or zoo name)")
    cfg: str | None = option(None, "architecture for official checkpoints, e.g. dy-yolov7")
    img_size: list[int] | None = option(None, "input size: one number or h w (default: the size the weights "
                                              "were trained at, else 640)")
    batch_size: int = option(1, "static batch size")
    dynamic_batch: bool = option(False, "any batch size, routed per image")
    dy_thres: float | str | None = option(None, "threshold built into the graph: a number or pK (K%% hard)")
    target_gflops: float | None = option(None, "choose the built-in threshold for this average cost")
    target_latency: float | None = option(None, "choose the built-in threshold for this latency (ms) of the "
                                                "PyTorch model on this machine (measured once, then cached)")
    thres_input: bool = option(False, "keep the threshold a graph input (--dy-thres its default)")
    route: str = option("both", "both: routed in the graph; easy/hard: a static single-route graph",
                        choices=["both", "easy", "hard"])
    end2end: bool = option(False, "NMS inside the ONNX graph (NonMaxSuppression)")
    topk_all: int = option(100, "end2end: detections kept per image")
    iou_thres: float = option(PREDICT.iou_thres, "end2end: NMS IoU threshold")
    conf_thres: float = option(PREDICT.conf_thres, "end2end: score threshold")
    simplify: bool = option(False, "simplify with onnxslim (or onnxsim)")
    include: list[str] = option(["onnx"], f"formats: any of {', '.join(FORMATS)}")
    int8: bool = option(False, "also write an INT8 copy (OpenVINO with NNCF; ONNX Runtime QDQ for a single-route "
                               "ONNX export), calibrated on --data's images through both routes")
    data: str | None = option(None, "--int8: data YAML (its train images) or an image folder to calibrate on")
    int8_images: int = option(300, "--int8: calibration images")
    int8_full_range: bool = option(False, "--int8: 8-bit weights instead of 7-bit ones; their products saturate "
                                          "on CPUs without VNNI (AVX2 only)")
    opset: int = option(DEFAULT_OPSET)
    device: str = option("cpu", "cpu or a CUDA index for tracing")
    output: str | None = option(None, "output path (suffix set per format)")
    atol: float = option(1e-3, "parity tolerance (max abs difference)")


def run(options: Options | None = None, /, **kwargs) -> dict:
    """Export ``weights`` in each ``include`` format, check it, and compare it with PyTorch.

    Returns ``{'onnx': path, 'torchscript': path, 'diff': {format: {route: max abs diff}},
    'threshold': float | None, 'options': ExportOptions}`` (formats not exported are absent).
    """
    opt = make_options(Options, options, **kwargs)
    include = _check_formats(opt.include, opt.end2end, opt.simplify)
    if opt.int8 and not opt.data:
        raise ValueError("--int8 needs --data: a data YAML or image folder to calibrate on")
    if opt.int8_full_range and not opt.int8:
        raise ValueError("--int8-full-range applies to INT8 exports: add --int8")
    if is_onnx(opt.weights):
        raise ValueError(f"{opt.weights} is already an ONNX export; pass the PyTorch weights")
    model, info = load_model(opt.weights, cfg=opt.cfg, device=opt.device)
    model = model.float().fuse().eval()
    hw = _hw(opt.img_size, info, int(model.stride.max()))
    threshold, free = _threshold(model, info, opt, max(hw))
    spec = ExportOptions(img_size=hw, batch_size=opt.batch_size, dynamic_batch=opt.dynamic_batch,
                         route=opt.route, threshold=threshold if threshold is not None else 0.5, thres_input=free,
                         end2end=opt.end2end, topk_all=opt.topk_all, iou_thres=opt.iou_thres,
                         conf_thres=opt.conf_thres, opset=opt.opset)
    spec.check(model)
    out = export_model(model, info, spec, _output_base(opt.output, info, spec), include=tuple(include),
                       simplify_graph=opt.simplify, atol=opt.atol, int8_calibration=opt.data if opt.int8 else None,
                       int8_images=opt.int8_images, int8_saturation_safe=not opt.int8_full_range)
    return {"threshold": threshold, "options": spec, **out}


def _check_formats(include, end2end: bool, simplify_graph: bool) -> list[str]:
    include = [str(f).lower() for f in ([include] if isinstance(include, str) else include)]
    unknown = sorted(set(include) - set(FORMATS))
    if unknown or not include:
        raise ValueError(f"--include takes any of {', '.join(FORMATS)}, got {include}")
    if (end2end or simplify_graph) and not {"onnx", "openvino"} & set(include):
        raise ValueError("--end2end and --simplify apply to ONNX exports; add --include onnx")
    return include


def _threshold(model, info: dict, opt: Options, img_size: int) -> tuple[float | None, bool]:
    """(threshold, whether the graph takes it as an input)."""
    asked = any(v is not None for v in (opt.dy_thres, opt.target_gflops, opt.target_latency))
    if not model.is_dynamic or opt.route != "both":
        if asked or opt.thres_input:
            raise ValueError("--dy-thres, --target-gflops, --target-latency and --thres-input apply to a dynamic "
                             "model exported with --route both")
        return None, False
    threshold, how = choose_threshold(model, info, img_size, dy_thres=opt.dy_thres,
                                      target_latency=opt.target_latency, target_gflops=opt.target_gflops)
    free = not asked or opt.thres_input
    print(f"routing: {how}, {'a graph input' if free else 'built into the graph'}")
    return threshold, free


def _hw(img_size: int | list[int] | None, info: dict, stride: int) -> tuple[int, int]:
    """(h, w) from one or two numbers; none: the weights' own size (one number: as the other scripts
    settle it, see :func:`utils.weights.backends.settle_img_size`)."""
    sizes = [] if img_size is None else [int(s) for s in ([img_size] if isinstance(img_size, int) else img_size)]
    if len(sizes) > 2:
        raise ValueError(f"--img-size takes one or two numbers (h w), got {sizes}")
    if len(sizes) < 2:
        side = settle_img_size(sizes[0] if sizes else None, info, stride)
        return side, side
    return sizes[0], sizes[1]


def _output_base(output, info: dict, spec: ExportOptions) -> Path:
    """Output path without suffix: --output, else beside the weights (-easy/-hard, -end2end tags)."""
    if output:
        return Path(output)
    src = Path(info.get("path") or "model.pt")
    tags = [spec.route] if spec.route != "both" else []
    tags += ["end2end"] if spec.end2end else []
    return src.with_name("-".join([src.stem, *tags]) + ".pt")


def parse_args(argv: list[str] | None = None) -> Options:
    return parse_options(Options, argv, __doc__)


def main(argv: list[str] | None = None) -> int:
    return script_main(Options, run, argv, __doc__, errors=(onnx.checker.ValidationError,))


if __name__ == "__main__":
    sys.exit(main())
